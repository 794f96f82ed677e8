"""Every use of Ray Tune's private state or implementation details, in one place.

A Ray upgrade is this file and ``tests/sweeps/test_ray_internals.py`` to look at. Each
access was checked against Ray 2.60 and is still needed:

* :func:`restore_tuner`: ``Tuner.restore`` takes no ``RunConfig``, and the callbacks it
  brings back are the first driver's, unpickled; this driver's own are handed over through
  ``Tuner._local_tuner``'s run config (no public way in 2.60).
* :class:`InterruptWatch`: Tune installs its own SIGINT handler inside ``Tuner.fit`` and, on
  Ctrl-C, ends the run *normally* (``fit()`` returns; running trials are set TERMINATED in
  memory after the final snapshot). Nothing public says the run was interrupted, so the
  watch wraps Tune's handler (installed before callbacks' ``setup``) to record it, and
  routes SIGTERM (``ray job stop``, schedulers) to the same graceful stop.
* :class:`RepairCheckpoints`: see below; private state of Ray's ``_CheckpointManager``.
* :func:`bounded_snapshots`: Tune's adaptive experiment-snapshot period (``auto``) keeps the
  snapshot's cost at 5% of the driver's time but never snapshots more often than every 10 s;
  a fixed period (the only other choice) costs more and more as the snapshot grows (about
  27 KB per trial: 0.48 s every 2 s at 3000 trials was a quarter of the driver). Nothing
  public sets the floor, so the period of ``_ExperimentCheckpointManager`` is set directly.
* :class:`ForgetEndedTrialStats`: Tune keeps, for every numeric key a trial ever reported,
  running statistics (``_TrainingRunMetadata.metric_analysis``) and the last-5 and last-10
  value windows behind two of them (``metric_n_steps``) for as long as the driver lives, and
  writes them into every experiment snapshot. With the ~30 keys of a flatsweep result that
  was about 55 KB of the driver's memory per trial (traced with tracemalloc over 250 trials
  of ``benchmarks/sweep_scale.py``; plain Tune pays the same). Once a trial is TERMINATED
  nothing reads them but Tune's ``ExperimentAnalysis`` (best trial by ``metric_analysis``),
  and only for the metric it is asked about, so the objectives' entries are kept.

* :func:`buffered_results`: Tune hands a function trainable's results to the driver one at
  a time: ``tune.report`` blocks the trial until the driver has run its callbacks and sent
  the next ``train`` call, 3-4 ms per result on 2 cores, 2.5% of the training time with
  0.16-s epochs (``benchmarks/sweep_overhead.py``). Tune can collect several results in the
  worker per call (``Trainable.train_buffered``), but the only switch is the environment
  (``TUNE_RESULT_BUFFER_LENGTH``), and Ray 2.60's ``TuneController._schedule_trial_train``
  passes the two numbers to ``train_buffered`` in the wrong order (length as the seconds,
  seconds as the length). The patched method calls it with keywords. Tune's buffered path
  also mishandles a function trainable's checkpoint at the end of a buffer: the earlier
  results' CONTINUE runs at once and the checkpoint's own decision again after the save, so
  two ``train`` calls race and the second fails ("Should not have reached here"). The
  patched ``_on_training_result`` leaves a saving trial's queued decision to the save, where
  Tune merges the two (STOP wins).
* :func:`no_trial_dataframes`: ``Tuner.fit`` ends by reading every trial's ``result.json``
  into a pandas ``DataFrame`` (``ExperimentAnalysis._fetch_trial_dataframes``), which a
  sweep never reads; nothing public skips it.
* :class:`PruneSyncedTrials`: Tune's driver writes each trial's ``result.json`` and
  ``params`` files into a staging directory and, after every experiment snapshot, copies
  the whole staging directory to the storage path in a background thread
  (``_ExperimentCheckpointManager.sync_up_experiment_state``), every finished trial's files
  again each time: 0.5 s of CPU per copy at 3000 trials, growing with the sweep, and outside
  the snapshot's 5% budget (Tune times only the save). Nothing public skips finished trials.
  The callback deletes a TERMINATED trial's staging directory once its files are in storage,
  byte for byte, just before a snapshot while no copy runs (the snapshot manager's syncer
  and its private ``_sync_process``; a trial's own storage context has another syncer).
* :class:`LiveTrialChoice`: Tune asks the scheduler for a trial to start at every step of
  its loop, and ``FIFOScheduler.choose_trial_to_run`` (ASHA's too) answers by walking the
  whole trial list, finished trials included, twice when nothing is waiting: a driver
  cost of Tune's own that grows with the number of finished trials (profiled at 320 and
  1350 finished trials of a 1600-trial sweep: 1.0 and 3.3 ms of the driver per trial).
  The mixin makes the same choice from ``get_live_trials()`` (public, the trials not
  TERMINATED), relying on Tune's list order only through positions it checks.

Repair restored trials whose latest checkpoint a killed driver had already deleted.

With ``CheckpointConfig(num_to_keep)`` Tune's driver deletes a trial's oldest checkpoint as
soon as a newer one registers, but writes the experiment snapshot that ``Tuner.restore``
reads only afterwards (every ``TUNE_GLOBAL_CHECKPOINT_S``, or forced after ``num_to_keep``
checkpoints). A driver killed in between leaves a snapshot naming deleted checkpoints:
``Trainable.restore`` then refuses ("does not exist on storage anymore") on every retry and
the trial ends in ERROR, although newer checkpoints of it sit beside the deleted one.

:class:`RepairCheckpoints` runs before the resumed experiment's first trial starts. For each
unfinished trial it drops deleted checkpoints from Tune's bookkeeping (else Tune later logs a
traceback deleting them again) and, when the latest one is gone, points the trial at the
newest checkpoint left in its directory. Deletion goes oldest first, so that one is the same
trial's latest progress. It touches private state of Ray 2.60's checkpoint manager
(``_checkpoint_results``, ``_latest_checkpoint_result``); the driver-loss test in
``tests/sweeps/test_reliability.py`` fails if that changes.
"""

from __future__ import annotations

import contextlib
import filecmp
import logging
import os
import posixpath
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from pyarrow.fs import FileSelector, FileType, LocalFileSystem
from ray.train._internal.storage import _exists_at_fs_path
from ray.tune import Callback, Checkpoint
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

log = logging.getLogger(__name__)

_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")


def _exists(checkpoint: Checkpoint) -> bool:
    # The very test with which Trainable.restore refuses a checkpoint.
    return _exists_at_fs_path(checkpoint.filesystem, checkpoint.path)


def _loads(checkpoint: Checkpoint) -> bool:
    """Whether the directory holds a whole checkpoint (a killed copy may have left half)."""
    from trainers.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory() as d:
        try:
            load_checkpoint(checkpoint.to_directory(d))
        except Exception:
            return False
    return True


def checkpoints_beside(missing: Checkpoint) -> list[tuple[int, Checkpoint]]:
    """The ``checkpoint_N`` directories in ``missing``'s trial directory, with their N,
    oldest first."""
    fs, path = missing.filesystem, missing.path.rstrip("/")
    found = []
    for info in fs.get_file_info(FileSelector(posixpath.dirname(path), allow_not_found=True)):
        m = _CHECKPOINT_DIR.match(info.base_name)
        if m and info.type == FileType.Directory:
            found.append((int(m.group(1)), info.path))
    return [(index, Checkpoint(p, filesystem=fs)) for index, p in sorted(found)]


def repair_trial(trial: Any) -> bool:
    """Fix one restored trial's checkpoint bookkeeping; True if its restore point changed."""
    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result
    if latest is None or latest.checkpoint is None:
        return False
    manager._checkpoint_results = [
        r for r in manager._checkpoint_results if r.checkpoint is not None and _exists(r.checkpoint)
    ]
    if _exists(latest.checkpoint):
        return False
    left = checkpoints_beside(latest.checkpoint)
    chosen = next((c for _, c in reversed(left) if _loads(c)), None)
    # Every other directory left goes into Tune's list as an older checkpoint, so Tune's
    # own retention deletes it as the trial goes on instead of leaving it behind for good.
    listed = {r.checkpoint.path for r in manager._checkpoint_results}
    manager._checkpoint_results += [
        type(latest)(checkpoint=c, metrics={})
        for _, c in left
        if c is not chosen and c.path not in listed
    ]
    if left:
        # New checkpoints go to fresh directories: the snapshot's index would overwrite the
        # ones the killed driver left, and Tune would later delete a live one by its path.
        trial.storage.current_checkpoint_index = max(
            trial.storage.current_checkpoint_index, left[-1][0] + 1
        )
    gone = posixpath.basename(latest.checkpoint.path)
    if chosen is None:
        log.warning(
            "trial %s: %s is gone and no whole checkpoint is left beside it; "
            "it restarts from scratch",
            trial.trial_id,
            gone,
        )
        manager._latest_checkpoint_result = None
        return True
    replacement = type(latest)(checkpoint=chosen, metrics=dict(latest.metrics))
    manager._checkpoint_results.append(replacement)
    manager._latest_checkpoint_result = replacement
    log.warning(
        "trial %s: %s was deleted before the killed driver's last snapshot; resuming from %s",
        trial.trial_id,
        gone,
        posixpath.basename(chosen.path),
    )
    return True


class RepairCheckpoints(Callback):
    """Runs :func:`repair_trial` on every unfinished trial before the first step starts one."""

    def __init__(self) -> None:
        self._done = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self._done:
            return
        self._done = True
        for trial in trials:
            if trial.status != "TERMINATED":
                repair_trial(trial)


def restore_tuner(exp_dir: str, trainable: Any, callbacks: Sequence[Callback]) -> Any:
    """``Tuner.restore`` of ``exp_dir`` that runs this driver's ``callbacks``.

    Unfinished and errored trials are resumed. The restored run config carries the first
    driver's callbacks, unpickled (their clients and buffers gone); replace them.
    """
    from ray import tune

    tuner = tune.Tuner.restore(
        exp_dir, trainable=trainable, resume_unfinished=True, resume_errored=True
    )
    tuner._local_tuner.get_run_config().callbacks = list(callbacks)
    return tuner


class InterruptWatch(Callback):
    """Records that Tune's run was stopped by SIGINT (Ctrl-C) or SIGTERM.

    ``setup`` runs in ``Tuner.fit`` after Tune installed its SIGINT handler; the watch wraps
    that handler (Tune still takes its graceful path: stop trials, write a final snapshot)
    and sends SIGTERM the same way. ``interrupted`` tells the runner afterwards, since
    ``fit()`` returns normally either way.

    Between Tune installing its handler and the callbacks' ``setup``, ``fit`` builds its
    controller (on a restore: reads the snapshot, every trial's files and the searcher, for
    seconds at thousands of trials). A Ctrl-C there reaches Tune's handler alone: its run
    ends at once and ``fit()`` returns normally with nothing run, which read as a finished
    stage. Inside :meth:`active`, the watch keeps the event Tune's handler sets
    (``ray.tune.tune._setup_signal_catching``, which also takes SIGUSR1) and counts it.
    """

    def __init__(self) -> None:
        self.interrupted: int | None = None  # the signal number, once one arrived
        self._saved: dict[int, Any] = {}
        self._tune_stop: Any = None  # the threading.Event Tune's own handler sets
        # The SIGINT handler to put back after fit is the one from before it: Tune leaves its
        # own behind unless a signal arrived, and that stale one only logs "Stop signal
        # received" for a run that is over, so the first Ctrl-C while the stage's records
        # drain (or between stages, or while the report is written) would be swallowed.
        self._before_fit = signal.getsignal(signal.SIGINT)

    def __getstate__(self) -> dict[str, Any]:  # pickled with the experiment: keep nothing
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def setup(self, **info: Any) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        tune_handler = signal.getsignal(signal.SIGINT)

        def on_signal(signum: int, frame: Any) -> None:
            first = self.interrupted is None
            self.interrupted = signum
            if first and callable(tune_handler):
                tune_handler(signal.SIGINT, frame)  # Tune's graceful stop
            elif signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for cleanup
            # A second SIGTERM: Tune is already stopping; nothing more to do.

        self._saved[signal.SIGINT] = self._before_fit
        self._saved[signal.SIGTERM] = signal.getsignal(signal.SIGTERM)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Around ``Tuner.fit``: keep the stop event of Tune's signal handler, and after
        ``fit`` count it as an interrupt (class doc)."""
        import ray.tune.tune as tune_module

        original = tune_module._setup_signal_catching

        def setup_signal_catching() -> Any:
            self._tune_stop = original()
            return self._tune_stop

        tune_module._setup_signal_catching = setup_signal_catching
        try:
            yield
        finally:
            tune_module._setup_signal_catching = original
            if self.interrupted is None and self._tune_stop is not None:
                if self._tune_stop.is_set():
                    self.interrupted = signal.SIGINT

    def restore_handlers(self) -> None:
        """Put back the handlers that were there before ``setup``; SIGINT's from before
        ``fit`` even when ``setup`` never ran (a signal came first, or an error): Tune's own
        would otherwise stay, swallowing the next Ctrl-C."""
        import threading

        if not self._saved and threading.current_thread() is threading.main_thread():
            self._saved[signal.SIGINT] = self._before_fit
        for sig, handler in self._saved.items():
            if handler is not None:  # None: not installed from Python; nothing to put back
                signal.signal(sig, handler)
        self._saved.clear()


def _copied(staging: str, stored: str) -> bool | None:
    """Whether every file under ``staging`` is in ``stored`` with the same bytes; None when
    ``staging`` is gone."""
    if not os.path.isdir(staging):
        return None
    for root, _, files in os.walk(staging):
        for name in files:
            source = os.path.join(root, name)
            target = os.path.join(stored, os.path.relpath(source, staging))
            if not os.path.isfile(target) or not filecmp.cmp(source, target, shallow=False):
                return False
    return True


class PruneSyncedTrials(Callback):
    """Deletes a finished trial's files from the driver's staging directory once they are in
    storage (module doc), so that Tune's copy after each snapshot carries the live trials
    and the experiment's own files, not every trial the sweep ever ran.

    The callback collects TERMINATED trials (``on_trial_complete``; an errored one may be
    retried, and Tune writes its error files there) on a local storage path, where the check
    is a byte comparison on this machine. Inside :meth:`active`, each snapshot of the
    experiment first deletes those whose files storage holds, when Tune's previous copy has
    ended: the snapshot is the one place that starts a copy, in Tune's loop, so none runs
    while a directory is deleted. At most every ``every_s`` seconds. A trial whose files are
    not all in storage yet (the copy after its end has not run, or failed) stays in staging
    until a later copy has brought them, as in Tune.
    """

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self._ended: list[tuple[str, str]] = []  # (staging, storage) directories
        self._next = 0.0
        self.pruned = 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        storage = trial.storage
        if isinstance(storage.storage_filesystem, LocalFileSystem):
            self._ended.append((storage.trial_driver_staging_path, storage.trial_fs_path))

    def prune(self, syncer: Any) -> None:
        """Delete the staging directories of ended trials that storage holds, unless
        ``syncer`` (the experiment's) is still copying."""
        if not self._ended or time.monotonic() < self._next:
            return
        running = getattr(syncer, "_sync_process", None)
        if running is not None and running.is_running:
            return
        self._next = time.monotonic() + self.every_s
        kept = []
        for staging, stored in self._ended:
            copied = _copied(staging, stored)
            if copied:
                shutil.rmtree(staging, ignore_errors=True)
                self.pruned += 1
            elif copied is False:
                kept.append((staging, stored))
        self._ended = kept

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within the block, every experiment snapshot Tune takes prunes first."""
        from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as Manager

        sync = Manager.sync_up_experiment_state
        prune = self.prune

        def pruned(manager: Any, *args: Any, **kwargs: Any) -> None:
            prune(manager._storage.syncer)
            sync(manager, *args, **kwargs)

        Manager.sync_up_experiment_state = pruned
        try:
            yield
        finally:
            Manager.sync_up_experiment_state = sync


class ForgetEndedTrialStats(Callback):
    """Drops a finished trial's running statistics except those of ``keep`` (module doc).

    Only on ``on_trial_complete`` (TERMINATED: it reports no more). An errored trial may be
    retried and report again, so its statistics stay. Both dicts lose the same keys, so a
    metric reported again later starts afresh in ``update_metric`` instead of failing.

    The trial's registered checkpoints (at most ``num_to_keep``) keep their paths but only
    the same keys of the result they were saved with: a finished trial is never restored
    from them, and nothing but ``Result.best_checkpoints`` reads their metrics. Its last
    result is left whole: a resumed driver closes a run from it when the run's last writes
    died with the driver before they landed (``tracking.MLflowTracker._reconcile``).
    """

    def __init__(self, keep: Sequence[str]) -> None:
        self._keep = frozenset(keep) | {"training_iteration"}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        meta = trial.run_metadata
        # Assignment (not in-place deletion) also drops the metadata's cached snapshot JSON
        # (_TrainingRunMetadata.__setattr__).
        meta.metric_analysis = {k: v for k, v in meta.metric_analysis.items() if k in self._keep}
        meta.metric_n_steps = {k: v for k, v in meta.metric_n_steps.items() if k in self._keep}
        manager = meta.checkpoint_manager
        if manager is not None:
            kept = [*manager._checkpoint_results, manager._latest_checkpoint_result]
            for result in {id(r): r for r in kept if r is not None}.values():
                result.metrics = {k: v for k, v in result.metrics.items() if k in self._keep}
            meta.invalidate_cache()  # its snapshot JSON holds the checkpoints' metrics too


@contextlib.contextmanager
def bounded_snapshots(floor_s: float = 2.0) -> Iterator[None]:
    """Within the block, Tune's ``auto`` snapshot period starts at ``floor_s`` (not 10 s) and
    is ``max(floor_s, 19 x the last snapshot's seconds)``: snapshots cost at most about 5% of
    the driver's time, and a killed driver re-runs at most the trials that ended in the last
    ``floor_s`` seconds while the snapshot is small. A ``TUNE_GLOBAL_CHECKPOINT_S`` set to a
    number is honoured as it is."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as Manager

    if os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "auto") != "auto":
        yield
        return
    init, update = Manager.__init__, Manager._update_auto_checkpoint_time

    def bounded_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if self._auto_checkpoint_enabled:
            self._checkpoint_period = floor_s

    def bounded_update(self: Any, time_taken: float) -> None:
        if self._auto_checkpoint_enabled:
            self._checkpoint_period = max(floor_s, time_taken * 19)

    Manager.__init__, Manager._update_auto_checkpoint_time = bounded_init, bounded_update
    try:
        yield
    finally:
        Manager.__init__, Manager._update_auto_checkpoint_time = init, update


@contextlib.contextmanager
def buffered_results(max_wait_s: float = 1.0, max_results: int = 1000) -> Iterator[None]:
    """Within the block, each ``train`` call Tune sends a trial collects results for up to
    ``max_wait_s`` seconds (module doc): one driver round trip per second instead of one
    per epoch when epochs are short, unchanged (one result per call) when an epoch takes
    longer than ``max_wait_s``.

    A result that carries a checkpoint, and a trial's last result, still end a call at once
    (``train_buffered`` returns on them), so a checkpoint is registered as soon as it is
    written. The cost: the scheduler sees a result up to ``max_wait_s`` later, so a trial
    that ASHA stops trains on for at most that long; results after a STOP decision are
    dropped by Tune. Only FIFO and ASHA trials are buffered: a scheduler that pauses trials
    (synchronous HyperBand, PBT) would see the results after its PAUSE too, and the paused
    trial would resume past the rung it was paused at. Trials that Tune checkpoints itself
    (``checkpoint_at_end``, ``checkpoint_frequency``) are not buffered either, as in Tune. A
    ``TUNE_RESULT_BUFFER_LENGTH`` set in the environment leaves Tune's own behaviour in place.
    """
    from ray.tune.execution.tune_controller import TuneController

    # Exact types: HyperBandScheduler, which pauses, is a FIFOScheduler subclass.
    never_pause = {FIFOScheduler, ASHAScheduler, LiveFIFOScheduler, LiveASHAScheduler}

    if "TUNE_RESULT_BUFFER_LENGTH" in os.environ:
        yield
        return
    schedule = TuneController._schedule_trial_train

    def buffered(self: Any, trial: Any) -> None:
        if (
            trial.checkpoint_at_end
            or trial.checkpoint_freq > 0
            or type(self._scheduler_alg) not in never_pause
        ):
            schedule(self, trial)
            return
        self._schedule_trial_task(
            trial=trial,
            method_name="train_buffered",
            kwargs={"buffer_time_s": max_wait_s, "max_buffer_length": max_results},
            on_result=self._on_training_result,
            on_error=self._trial_task_failure,
        )

    def on_result(self: Any, trial: Any, result: Any) -> None:
        self._process_trial_results(trial, result if isinstance(result, list) else [result])
        if not trial.is_saving:  # else _on_saving_result executes the merged decision
            self._maybe_execute_queued_decision(trial, after_save=False)

    patched = {"_schedule_trial_train": buffered, "_on_training_result": on_result}
    saved = {name: getattr(TuneController, name) for name in patched}
    for name, fn in patched.items():
        setattr(TuneController, name, fn)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(TuneController, name, fn)


def results_before_an_error(trainable: Any) -> type:
    """``trainable`` (a Tune Trainable class, or a function trainable, made the class Tune
    would make of it) whose ``train_buffered`` hands over the results it collected before
    ``train`` raised, and raises that error at the next call.

    Tune's ``Trainable.train_buffered`` (Ray 2.60) collects in a local list that the error
    takes with it: with :func:`buffered_results`, a trial that reports epochs and then fails
    lost up to a second of epochs that ran, which Tune's one-result-per-call path delivers
    (each ``tune.report`` reaches the driver before the failure). Here the driver gets them
    first; the next call raises the error, which Tune handles as a failure of that call
    (retried per ``failure.max_failures``), as it would have handled the call that raised.
    A scheduler that stops the trial on those results never makes that call, as it would
    not have made it unbuffered. Otherwise the loop is Tune's, line for line. The class
    keeps ``trainable``'s name, which Tune records with the experiment and a restore checks.
    """
    from ray.tune.result import DONE, RESULT_DUPLICATE, SHOULD_CHECKPOINT
    from ray.tune.trainable import wrap_function

    if not isinstance(trainable, type):
        trainable = wrap_function(trainable)  # what Tune's registry does with a function

    class Trainable(trainable):  # type: ignore[misc, valid-type]
        _error_after_results: BaseException | None = None

        def reset(self, *args: Any, **kwargs: Any) -> bool:
            # Reused for another trial (reuse_actors) after a scheduler stopped this one on
            # the results before its error: that error is not the next trial's.
            self._error_after_results = None
            return super().reset(*args, **kwargs)

        def train_buffered(
            self, buffer_time_s: float, max_buffer_length: int = 1000
        ) -> list[dict[str, Any]]:
            if (error := self._error_after_results) is not None:
                self._error_after_results = None
                raise error
            results: list[dict[str, Any]] = []
            now = time.time()
            send_buffer_at = now + buffer_time_s
            while now < send_buffer_at or not results:  # at least one result
                try:
                    result = self.train()
                except Exception as e:
                    if not results:
                        raise
                    self._error_after_results = e
                    break
                results.append(result)
                if result.get(DONE, False) or result.get(SHOULD_CHECKPOINT, False):
                    break
                if result.get(RESULT_DUPLICATE) or len(results) >= max_buffer_length:
                    break
                now = time.time()
            return results

    Trainable.__name__ = trainable.__name__
    Trainable.__qualname__ = trainable.__qualname__
    return Trainable


@contextlib.contextmanager
def no_trial_dataframes() -> Iterator[None]:
    """Within the block, the ``ResultGrid`` that ``Tuner.fit`` returns holds no per-trial
    metrics ``DataFrame``: each trial's ``metrics_dataframe`` is empty.

    At its end ``Tuner.fit`` builds an ``ExperimentAnalysis``, which reads every trial's
    ``result.json`` back from storage into a pandas ``DataFrame``
    (``ExperimentAnalysis._fetch_trial_dataframes``): one file read and one
    ``pd.json_normalize`` per trial after the last trial has ended, 2.4 s and 55 MB of the
    driver's memory for 3000 trials of two results each (measured on 2 cores), growing with
    the sweep. A sweep reads only the grid's length and its errors (trial states) and keeps
    every result in MLflow, so nothing it uses comes from those frames. Each trial's
    ``metrics`` (its last result), ``error`` and checkpoint are Tune's as before.
    """
    from pandas import DataFrame
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    fetch = ExperimentAnalysis._fetch_trial_dataframes

    def empty(self: Any) -> dict[str, Any]:
        return {trial.trial_id: DataFrame() for trial in self.trials}

    ExperimentAnalysis._fetch_trial_dataframes = empty
    try:
        yield
    finally:
        ExperimentAnalysis._fetch_trial_dataframes = fetch


#: Above this many live trials :class:`LiveTrialChoice` leaves the choice to Tune's own walk,
#: which stops at the first PENDING trial: a pass over every live one could then cost more.
#: Tune keeps at most ``max_concurrent`` trials pending behind a searcher, and a variant
#: generator's ``max(200, 1.1 x the cluster's CPUs)`` (``TUNE_MAX_PENDING_TRIALS_PG``).
LIVE_SCAN_MAX = 1024


class _Positions:
    """Trials' indices in the controller's trial list, kept between steps: extended as trials
    are appended, rebuilt when the list was reordered (Tune moves a recovered trial to its
    end) or replaced (a new controller)."""

    def __init__(self) -> None:
        self._trials: list[Any] | None = None
        self._index: dict[Any, int] = {}

    def of(self, trials: list[Any], wanted: Sequence[Any]) -> dict[Any, int] | None:
        """An index holding each of ``wanted``'s true position in ``trials``, or None when
        one of them is not in ``trials`` at all."""
        index = self._index
        if trials is not self._trials:
            self._trials = trials
            index.clear()
        for i in range(len(index), len(trials)):
            index[trials[i]] = i

        def stale(trial: Any) -> bool:
            i = index.get(trial)
            return i is None or i >= len(trials) or trials[i] is not trial

        if any(stale(t) for t in wanted):
            index.clear()
            index.update((t, i) for i, t in enumerate(trials))
            if any(stale(t) for t in wanted):
                return None
        return index


class LiveTrialChoice:
    """Mixin before ``FIFOScheduler`` or a subclass (ASHA): Tune's FIFO choice, the first
    PENDING trial in the experiment's trial order, else the first PAUSED one, found among
    the live trials instead of all of them (module doc).

    Every PENDING or PAUSED trial is live: Tune adds a trial to its live set when it adds it
    to the list (and again when it requeues one after a failure), and takes it out only
    once stopped. The order among the waiting ones is their position in ``get_trials()``,
    from an index checked against the list for every trial compared. With more than
    ``LIVE_SCAN_MAX`` live trials, or a waiting trial missing from the list, Tune's own
    walk decides.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._positions = _Positions()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its scheduler with the Tuner; the index holds trial objects.
        state = self.__dict__.copy()
        del state["_positions"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._positions = _Positions()

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        live = tune_controller.get_live_trials()
        if len(live) <= LIVE_SCAN_MAX:
            for status in (Trial.PENDING, Trial.PAUSED):
                waiting = [t for t in live if t.status == status]
                if len(waiting) == 1:
                    return waiting[0]
                if waiting:
                    index = self._positions.of(tune_controller.get_trials(), waiting)
                    if index is not None:
                        return min(waiting, key=index.__getitem__)
                    break
            else:
                return None
        return super().choose_trial_to_run(tune_controller)  # type: ignore[misc]


class LiveFIFOScheduler(LiveTrialChoice, FIFOScheduler):
    """Tune's ``FIFOScheduler`` choosing among live trials (:class:`LiveTrialChoice`)."""


class LiveASHAScheduler(LiveTrialChoice, ASHAScheduler):
    """Tune's ``ASHAScheduler`` choosing among live trials (:class:`LiveTrialChoice`)."""
