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

Several children (``processes``, ``FLATSWEEP_MLFLOW_PROCESS=N``) split the trials between
them, each trial's writes (and its Optuna copy) on one child, so that recording to SQLite,
whose store work is the writer's own CPU, can use more than one core: one child holds the
GIL for the whole of it. SQLite still commits one writer at a time; the children's ORM work
around the commits is what runs in parallel (two on two idle cores recorded 1.44x as many
trials per minute, ``benchmarks/mlflow_throughput.py --processes``). Each child costs its
imports, about 3-4 s of CPU and 250 MB, and the split some CPU per trial: on cores that are
all training it slows the sweep. One-off writes that are no trial's go to the first child.

The pipe carries pickles between two processes of the same user and code, never data from
elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
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


@dataclass(eq=False)
class _Child:
    """One writer process and what the driver keeps for it."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    outgoing: deque[Any] = field(default_factory=deque)  # for its sender thread to write
    known: set[str] = field(default_factory=set)  # trials whose info it has been sent
    owed: int = 0  # its writes not yet acknowledged
    ready: bool = False  # it imported and opened the store (or failed to, and will retry)
    broken: bool = False  # it can no longer deliver: its writes stay owed


class WriterProcess:
    """``tracking._Outbox``'s interface, delivered by child processes (see the module doc).

    Args:
        tracker: the driver's tracker. Its settings (``__getstate__``) configure the
            children's; its ``run_ids`` map is filled from their acknowledgements;
            ``trial_info`` gives what a child needs to create a trial's run, sent with the
            trial's first write.
        processes: writer processes; each trial is given to one at first sight (round-robin).
    """

    def __init__(self, tracker: MLflowTracker, processes: int = 1) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, but got {processes=}")
        self._tracker = tracker
        self._cv = threading.Condition()
        self._pending: dict[int, _Item] = {}  # sequence number -> written, not acknowledged
        self._children = [_Child(i) for i in range(processes)]
        self._child_of: dict[str, _Child] = {}  # trial id -> its child, fixed at first sight
        self._seq = 0
        self._closing = False
        self._broken: str | None = None  # why a child can no longer deliver
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
        """A child stopped (crashed, or on an error retrying cannot fix) with writes owed."""
        return self._broken is not None

    @property
    def pids(self) -> list[int]:
        """The process ids of the children started so far."""
        return [c.proc.pid for c in self._children if c.proc is not None]

    def start(self) -> None:
        """Start the children now (else at their first writes): their imports, about 2 s,
        then overlap Tune's own start-up instead of delaying the first trial's record."""
        with self._cv:
            for child in self._children:
                if child.proc is None:
                    self._start(child)

    def ready(self, timeout_s: float) -> bool:
        """Wait until every started child has imported MLflow and opened the store, within
        ``timeout_s`` (a benchmark times deliveries, not start-ups); False if one has not."""
        with self._cv:
            return self._cv.wait_for(
                lambda: all(c.ready or c.broken for c in self._children if c.proc is not None),
                timeout=timeout_s,
            )

    def _child_for(self, item: _Item) -> _Child:
        """The child that delivers ``item``: its trial's, else (a one-off write) the first."""
        if not item.trial:
            return self._children[0]
        child = self._child_of.get(item.trial)
        if child is None:
            child = self._children[len(self._child_of) % len(self._children)]
            self._child_of[item.trial] = child
        return child

    def put(self, item: _Item) -> None:
        """Queue ``item`` for its child; the pickling and the pipe write happen on a thread."""
        with self._cv:
            child = self._child_for(item)
            if child.proc is None:
                self._start(child)
            self._seq += 1
            item.seq = self._seq
            self._pending[item.seq] = item
            child.owed += 1
            if child.broken:
                return  # no one reads its pipe: it stays owed (and in Tune's results)
            # A trial's one-off write (its Optuna copy) may come from an earlier driver's trial,
            # whose info this driver never had; the child then links what it knows.
            if item.trial and item.call is None and item.trial not in child.known:
                child.known.add(item.trial)
                child.outgoing.append(("trial", item.trial, *self._tracker.trial_info(item.trial)))
            child.outgoing.append(("item", item))
            self._cv.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait until the children acknowledged every write, within ``timeout_s``; False if
        some are outstanding then, or a child stopped with writes owed."""
        with self._cv:
            if not self._pending:
                return True
            # The children deliver at once instead of waiting out their rounds.
            for child in self._children:
                if child.proc is not None:
                    child.outgoing.append(("drain", timeout_s))
            self._cv.notify_all()
            # Until every child that can still deliver has: the records that can land, land.
            self._cv.wait_for(
                lambda: all(c.owed == 0 or c.broken for c in self._children), timeout=timeout_s
            )
            if self._pending and self._broken is not None:
                log.error("MLflow writer process: %s", self._broken)
            return not self._pending

    def close(self) -> None:
        """End the children once they have read what was sent (call ``drain`` first), and wait
        for them (10 s, then they are killed: their owed writes are in Tune's results)."""
        with self._cv:
            started = [c for c in self._children if c.proc is not None]
            if not started or self._closing:
                return
            self._closing = True
            for child in started:
                child.outgoing.append(None)  # the sender closes the pipe: the child's stdin ends
            self._cv.notify_all()
        deadline = time.monotonic() + 10
        for child in started:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()

    # -- driver side -----------------------------------------------------------------------------

    def _start(self, child: _Child) -> None:
        """Start ``child`` (called with ``_cv`` held) and the threads that talk to it."""
        child.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,  # acknowledgements; the child's prints go to stderr
            start_new_session=True,  # a Ctrl-C to the driver's group is the driver's to handle
        )
        state = {**self._tracker.__getstate__(), "process": False}
        child.outgoing.append(list(sys.path))
        child.outgoing.append((state, self._tracker.fresh))
        for target, name in ((self._send, "sender"), (self._receive, "acks")):
            threading.Thread(
                target=target,
                args=(child,),
                name=f"mlflow-writer-{name}-{child.index}",
                daemon=True,
            ).start()

    def _send(self, child: _Child) -> None:
        assert child.proc is not None and child.proc.stdin is not None
        pipe = child.proc.stdin
        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(child.outgoing))
                batch = list(child.outgoing)
                child.outgoing.clear()
            try:
                for msg in batch:
                    if msg is None:
                        pipe.close()
                        return
                    pickle.dump(msg, pipe, protocol=pickle.HIGHEST_PROTOCOL)
                pipe.flush()
            except OSError as e:  # BrokenPipeError among them
                self._fail(child, f"it stopped reading its pipe ({e})")
                return
            except Exception as e:  # noqa: BLE001 - a write that does not pickle: a bug
                # Said at once (the drain then ends, the sweep FAILED), instead of a sender
                # thread dying in silence and the drain waiting out its whole timeout.
                self._fail(child, f"a write could not be sent to it ({type(e).__name__}: {e})")
                with contextlib.suppress(OSError):
                    pipe.close()  # the child's stdin ends: it exits, nothing waits on it
                return

    def _receive(self, child: _Child) -> None:
        assert child.proc is not None and child.proc.stdout is not None
        pipe = child.proc.stdout
        while True:
            try:
                msg = pickle.load(pipe)  # noqa: S301 (our own child's, see the module doc)
            except (EOFError, OSError, pickle.UnpicklingError):
                code = child.proc.wait()
                if not self._closing:
                    self._fail(child, f"it exited with code {code}")
                return
            if msg[0] == "done":
                _, seqs, run_ids = msg
                with self._cv:
                    for seq in seqs:
                        if self._pending.pop(seq, None) is not None:
                            child.owed -= 1
                    for tid, run_id in run_ids.items():
                        self._tracker.run_ids.setdefault(tid, run_id)
                    self.rounds += 1
                    self._cv.notify_all()
            elif msg[0] == "ready":
                with self._cv:
                    child.ready = True
                    self._cv.notify_all()
            elif msg[0] == "broken":
                self._fail(child, f"a write failed on an error retrying cannot fix: {msg[1]}")

    def _fail(self, child: _Child, why: str) -> None:
        if len(self._children) > 1:
            why = f"child {child.index + 1} of {len(self._children)}: {why}"
        with self._cv:
            child.broken = True
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

    def open_store() -> None:
        # The store's first use (an SQLAlchemy engine, the schema check: about 0.5 s) while
        # Tune starts, not in the first trial's delivery. On a thread of its own: an
        # unreachable server must not hold up the commands; the deliveries retry on their own.
        from mlflow import MlflowClient

        try:
            MlflowClient(tracker.tracking_uri).get_experiment(tracker.experiment_id)
        except Exception as e:  # noqa: BLE001 - only a warm-up; a delivery reports real errors
            log.warning("MLflow writer process: the store did not open yet (%s)", e)
        send(("ready",))

    def acknowledged(deliver: Any, many: bool) -> Any:
        """``deliver`` (one delivery's items, or a bulk round's deliveries), then its
        acknowledgement: the items' numbers and the run ids it created or found."""

        def run(writer: int, arg: list[Any]) -> None:
            try:
                deliver(writer, arg)
            except _NOT_TRANSIENT as e:
                send(("broken", f"{type(e).__name__}: {e}"))
                raise
            batches: list[list[_Item]] = arg if many else [arg]
            # A trial's writes (and its Optuna copy) touch its own run only; a one-off call
            # that is no trial's (a reconciliation) may find several, so only then is the
            # whole map scanned: per delivery that scan would grow with the number of trials.
            # list() of a dict's items is one step under the GIL: the other writers may add.
            found = []
            for batch in batches:
                tid = batch[0].trial
                if not tid:
                    found = list(tracker.run_ids.items())
                    break
                if tid in tracker.run_ids:
                    found.append((tid, tracker.run_ids[tid]))
            with lock:
                new = {t: r for t, r in found if t not in told}
                told.update(new)
            send(("done", [item.seq for batch in batches for item in batch], new))

        return run

    outbox = tracker._outbox
    outbox._deliver = acknowledged(tracker._deliver, many=False)
    if outbox._bulk is not None:
        bulkable, deliver_bulk = outbox._bulk
        outbox._bulk = (bulkable, acknowledged(deliver_bulk, many=True))
    if outbox._calls is not None:
        group_of, deliver_calls = outbox._calls
        outbox._calls = (group_of, acknowledged(deliver_calls, many=True))
    threading.Thread(target=open_store, name="mlflow-open", daemon=True).start()
    while True:
        try:
            msg = pickle.load(commands)  # noqa: S301 (from our own driver)
        except EOFError:
            # Closed after a drain, or the driver died: what is still queued here is in
            # Tune's results, and a resume delivers it. Nothing waits for these threads.
            acks.close()
            os._exit(0)
        if msg[0] == "item":
            outbox.put(msg[1])
        elif msg[0] == "trial":
            _, tid, config, spec, start_ms = msg
            tracker._configs[tid], tracker._specs[tid] = config, spec
            if start_ms is not None:
                tracker._start_ms[tid] = start_ms
        elif msg[0] == "drain":
            threading.Thread(target=outbox.drain, args=(msg[1],), daemon=True).start()
