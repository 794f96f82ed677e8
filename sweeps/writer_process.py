"""The MLflow writer of a sweep's driver as a separate process.

Why a process: the tracker's writes go through MLflow's client and, for SQLite, its SQLAlchemy
store, pure-Python work of about 30 ms per trial that holds the GIL. On threads of the driver
it competes with Ray Tune's event loop for that GIL, so at thousands of short trials every
scheduling step, every TPE suggestion and every result waited behind it
(``benchmarks/sweep_scale.py``, profiled with py-spy). Here the driver's Tune callback only
pickles each write onto a pipe; a child process, with a thread-mode
:class:`~sweeps.tracking.MLflowTracker` of the same settings, delivers it and acknowledges it.

The contract is the thread writer's (``tracking._Outbox``): ``put`` never blocks the event
loop, each run's writes keep their order, ``drain`` waits for every acknowledgement within one
deadline, and a write that cannot land stays counted as outstanding (the sweep then ends
FAILED and a resume delivers it from Tune's results). The child:

- starts with ``start`` (or at the first write) as ``python -c`` (not ``multiprocessing``: a
  spawned child re-imports the driver's ``__main__``, which may be a user's unguarded script);
- imports MLflow and Ray Tune's callback base only: each trial's spec is resolved in the
  driver, so the child needs neither ``trainers`` nor torch (about 250 MB, not 850);
- runs in its own session and ignores SIGINT and SIGTERM, so a Ctrl-C or ``ray job stop``
  that the driver handles gracefully cannot kill the writes it is about to drain;
- exits when its stdin closes: after ``close``, or when the driver died. What it had not yet
  delivered is in Tune's experiment state and results, which ``sweeps resume`` reconciles.

The pipe carries pickles between two processes of the same user and code, never data from
elsewhere.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections import deque
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweeps.tracking import MLflowTracker, _Item

log = logging.getLogger(__name__)

# The child's program: the driver's import path first (a Ray job's working directory, a test's
# rootdir), then the writer loop.
_BOOT = (
    "import pickle, sys; sys.path[:0] = pickle.load(sys.stdin.buffer); "
    "from sweeps.writer_process import main; main()"
)


class WriterProcess:
    """``tracking._Outbox``'s interface, delivered by a child process (see the module doc).

    Args:
        tracker: the driver's tracker. Its settings (``__getstate__``) configure the child's;
            its ``run_ids`` map is filled from the child's acknowledgements; ``trial_info``
            gives what the child needs to create a trial's run, sent with its first write.
    """

    def __init__(self, tracker: MLflowTracker) -> None:
        self._tracker = tracker
        self._cv = threading.Condition()
        self._pending: dict[int, _Item] = {}  # sequence number -> written, not acknowledged
        self._outgoing: deque[Any] = deque()  # messages the sender thread has yet to write
        self._known: set[str] = set()  # trials whose info the child has been sent
        self._seq = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._closing = False
        self._broken: str | None = None  # why the child can no longer deliver
        self.rounds = 0  # acknowledgements received (each one delivery)

    # -- the _Outbox interface -------------------------------------------------------------------

    @property
    def pending(self) -> list[_Item]:
        """A snapshot of every write not yet acknowledged."""
        with self._cv:
            return list(self._pending.values())

    @property
    def outstanding(self) -> int:
        """Writes not yet acknowledged."""
        return len(self._pending)

    @property
    def broken(self) -> bool:
        """The child stopped (crashed, or on an error retrying cannot fix) with writes owed."""
        return self._broken is not None

    def start(self) -> None:
        """Start the child now (else at the first write): its imports, about 2 s, then overlap
        Tune's own start-up instead of delaying the first trial's record."""
        with self._cv:
            if self._proc is None:
                self._start()

    def put(self, item: _Item) -> None:
        """Queue ``item`` for the child; the pickling and the pipe write happen on a thread."""
        with self._cv:
            if self._proc is None:
                self._start()
            self._seq += 1
            item.seq = self._seq
            self._pending[item.seq] = item
            if self._broken is not None:
                return  # no one reads the pipe: it stays owed (and in Tune's results)
            if item.trial and item.trial not in self._known:
                self._known.add(item.trial)
                self._outgoing.append(("trial", item.trial, *self._tracker.trial_info(item.trial)))
            self._outgoing.append(("item", item))
            self._cv.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait until the child acknowledged every write, within ``timeout_s``; False if some
        are outstanding then, or the child stopped with writes owed."""
        with self._cv:
            if not self._pending:
                return True
            # The child delivers at once instead of waiting out its round.
            self._outgoing.append(("drain", timeout_s))
            self._cv.notify_all()
            self._cv.wait_for(lambda: not self._pending or self.broken, timeout=timeout_s)
            if self._pending and self._broken is not None:
                log.error("MLflow writer process: %s", self._broken)
            return not self._pending

    def close(self) -> None:
        """End the child once it has read what was sent (call ``drain`` first), and wait for it
        (10 s, then it is killed: its owed writes are in Tune's results)."""
        with self._cv:
            if self._proc is None or self._closing:
                return
            self._closing = True
            self._outgoing.append(None)  # the sender closes the pipe: the child's stdin ends
            self._cv.notify_all()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    # -- driver side -----------------------------------------------------------------------------

    def _start(self) -> None:
        """Start the child (called with ``_cv`` held) and the threads that talk to it."""
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,  # acknowledgements; the child's prints go to stderr
            start_new_session=True,  # a Ctrl-C to the driver's group is the driver's to handle
        )
        state = {**self._tracker.__getstate__(), "process": False}
        self._outgoing.append(list(sys.path))
        self._outgoing.append((state, self._tracker.fresh))
        for target, name in ((self._send, "sender"), (self._receive, "acks")):
            threading.Thread(target=target, name=f"mlflow-writer-{name}", daemon=True).start()

    def _send(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        pipe = self._proc.stdin
        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(self._outgoing))
                batch = list(self._outgoing)
                self._outgoing.clear()
            try:
                for msg in batch:
                    if msg is None:
                        pipe.close()
                        return
                    pickle.dump(msg, pipe, protocol=pickle.HIGHEST_PROTOCOL)
                pipe.flush()
            except (BrokenPipeError, OSError) as e:
                self._fail(f"it stopped reading its pipe ({e})")
                return

    def _receive(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        pipe = self._proc.stdout
        while True:
            try:
                msg = pickle.load(pipe)  # noqa: S301 (our own child's, see the module doc)
            except (EOFError, OSError, pickle.UnpicklingError):
                code = self._proc.wait()
                if not self._closing:
                    self._fail(f"it exited with code {code}")
                return
            if msg[0] == "done":
                _, seqs, run_ids = msg
                with self._cv:
                    for seq in seqs:
                        self._pending.pop(seq, None)
                    for tid, run_id in run_ids.items():
                        self._tracker.run_ids.setdefault(tid, run_id)
                    self.rounds += 1
                    self._cv.notify_all()
            elif msg[0] == "broken":
                self._fail(f"a write failed on an error retrying cannot fix: {msg[1]}")

    def _fail(self, why: str) -> None:
        with self._cv:
            if self._broken is None:
                self._broken = why
                if self._pending:
                    log.error(
                        "MLflow writer process stopped (%s) with %d writes owed",
                        why,
                        len(self._pending),
                    )
            self._cv.notify_all()


# -- child side ----------------------------------------------------------------------------------


def _ignore_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def main() -> None:
    """The child: read the tracker's settings, then writes, deliver them with a thread-mode
    tracker and acknowledge each delivery; exit when stdin closes."""
    _ignore_signals()
    # Acknowledgements own the real stdout; anything a library prints goes to stderr.
    acks: IO[bytes] = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from sweeps.tracking import _NOT_TRANSIENT, MLflowTracker, tune_sqlite

    tune_sqlite()  # the driver's SQLite settings (WAL, no fsync per commit) for our connections
    commands = sys.stdin.buffer
    state, fresh = pickle.load(commands)  # noqa: S301 (from our own driver)
    tracker = MLflowTracker.__new__(MLflowTracker)
    tracker.__setstate__(state)
    tracker.fresh = fresh
    lock = threading.Lock()  # several writer threads acknowledge on one pipe
    told: set[str] = set()  # trials whose run id the driver has been sent

    def send(msg: tuple) -> None:
        with lock:
            pickle.dump(msg, acks, protocol=pickle.HIGHEST_PROTOCOL)
            acks.flush()

    deliver = tracker._deliver

    def deliver_and_ack(writer: int, batch: list[_Item]) -> None:
        try:
            deliver(writer, batch)
        except _NOT_TRANSIENT as e:
            send(("broken", f"{type(e).__name__}: {e}"))
            raise
        # The run ids this delivery created or found. A trial's writes touch its own run only;
        # a one-off call (a reconciliation) may find several, so only then is the whole map
        # scanned: per delivery that scan would grow with the number of trials.
        # list() of a dict's items is one step under the GIL: the other writers may add.
        tid = batch[0].trial
        if batch[0].call is None and tid:
            found = [(tid, tracker.run_ids[tid])] if tid in tracker.run_ids else []
        else:
            found = list(tracker.run_ids.items())
        with lock:
            new = {t: r for t, r in found if t not in told}
            told.update(new)
        send(("done", [item.seq for item in batch], new))

    tracker._outbox._deliver = deliver_and_ack
    while True:
        try:
            msg = pickle.load(commands)  # noqa: S301 (from our own driver)
        except EOFError:
            # Closed after a drain, or the driver died: what is still queued here is in
            # Tune's results, and a resume delivers it. Nothing waits for these threads.
            acks.close()
            os._exit(0)
        if msg[0] == "item":
            tracker._outbox.put(msg[1])
        elif msg[0] == "trial":
            _, tid, config, spec, start_ms = msg
            tracker._configs[tid], tracker._specs[tid] = config, spec
            if start_ms is not None:
                tracker._start_ms[tid] = start_ms
        elif msg[0] == "drain":
            threading.Thread(target=tracker._outbox.drain, args=(msg[1],), daemon=True).start()
