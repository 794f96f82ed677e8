"""Run and resume sweeps: Ray Tune trials, chosen by Optuna, scheduled by ASHA, tracked in MLflow.

A sweep is up to four stages, each a Ray Tune experiment under the one MLflow parent run:

1. ``search``: Optuna proposes points, the scheduler stops weak trials, selection is on the
   validation metric (the test set is evaluated once, after a trial's last epoch, and never
   reaches a searcher or scheduler).
2. ``baseline_search`` (only when the space also searches optimizer knobs): the baseline
   (perturbation off) gets its own search over the same knobs with the same budget, so both
   sides are equally tuned.
3. ``confirm``: the ``finalists.top_k`` best distinct search configs and the baseline are
   re-trained for the full budget with the same ``finalists.seeds`` fresh training seeds
   (FIFO: no early stopping). Their child runs are tagged ``finalist`` / ``baseline``.
4. the verdict: the winner is the finalist with the best mean validation metric; its test
   metric against the baseline's, paired by seed, with a 95% t-interval, goes on the parent.

The driver owns everything stateful: the Optuna study (inside Ray's ``OptunaSearch``, saved
with the Tune experiment so ``resume`` continues the same study), the scheduler, and the only
MLflow writer. A stage that finished is recorded on the parent run; ``resume`` restores the
stage that was running and skips finished ones, so no finished seed runs again.
Trials run ``sweeps.trainable.train_trial``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from sweeps import optunabulk, sqlbulk, studies, tracking
from sweeps.preflight import check_fits_local_ray, trials_held
from sweeps.searchers import SAMPLERS, SCHEDULERS
from sweeps.spec import SpecError, SweepSpec
from sweeps.tracking import META_CONFIG, META_STAGE, MLflowTracker, Sweep
from sweeps.uris import redact

log = logging.getLogger(__name__)


# Driver settings (a user's own environment wins):
_DRIVER_ENV = {
    # An OOM trial reports no objective, so Optuna does not learn it as a bad point.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Fail MLflow HTTP calls fast: the tracker buffers and retries them itself, and MLflow's own
    # backoff (minutes) would stall Tune's event loop during a tracking outage.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # On an HTTP store set_terminated reads the whole run back (a fourth request per trial)
    # only to print "View run ..." lines; the driver prints its own links.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # MLflow is the sweep's record: of Tune's per-result loggers keep only result.json (added
    # below); its CSV and TensorBoard writers cost driver CPU on every result, which on a
    # small machine the trials pay for.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Tune's newer console output prints an experiment box even at verbose=0; the legacy
    # reporter honours verbose=0 (sweeps has its own progress display).
    "RAY_AIR_NEW_OUTPUT": "0",
}


class _OptunaSearch(OptunaSearch):
    """Ray's OptunaSearch on an in-memory study, mirrored into a stored one.

    Sampling runs on Tune's event loop, so the study it reads and writes is in memory, as with
    plain Ray Tune; each finished trial is copied into the stored study by a
    :class:`~sweeps.studies.StudyMirror` thread (``mirror``: its storage URL and study name,
    pickled with the searcher so that a restored one finds it again). ``warm_start``: finished
    trials of earlier sweeps the new study starts from.

    Also, a result without the objective is not reported: an out-of-memory trial reports
    ``oom=1`` and no metric (it says nothing about the point), which the stock
    ``on_trial_result`` would turn into a KeyError in the driver and the stock
    ``on_trial_complete`` of a multi-objective study into a trial left RUNNING.

    And a trial the scheduler stopped before ``max_epochs`` (ASHA) ends PRUNED, as Optuna's
    own pruning records it, with its per-epoch values as intermediate values; the stock code
    tells it COMPLETE with the value of the epoch it was stopped at, which TPE, the stored
    study and a later ``warm_start`` would then rank beside full-length trials (an early
    epoch's ``val_loss`` can beat every finished trial's). The sweep's own ranking leaves
    such trials out for the same reason (``tracking.rank_children``). A diverged trial stays
    COMPLETE with its worst value: the point is bad, and TPE should learn that.
    """

    def __init__(
        self,
        *args: Any,
        mirror: tuple[str, str] | None = None,
        warm_start: list[Any] | None = None,
        max_epochs: int | None = None,
        **kwargs: Any,
    ) -> None:
        self._mirror_to = mirror
        self._max_epochs = max_epochs
        super().__init__(*args, **kwargs)
        if warm_start:
            self._ot_study.add_trials(warm_start)

    def _stopped_early(self, result: dict) -> bool:
        """Whether a trial's last result is from before its last epoch, and not a failure:
        the run's ``stopped_early`` tag says the same (``tracking.final_flags``)."""
        max_epochs = getattr(self, "_max_epochs", None)  # a searcher pickled before it existed
        return max_epochs is not None and tracking.final_flags(result, max_epochs)["stopped_early"]

    def _mirror(self) -> studies.StudyMirror | None:
        if getattr(self, "_mirror_to", None) is None:
            return None
        url, name = self._mirror_to
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        modes = self.mode if isinstance(self.mode, list) else [self.mode]
        return studies.StudyMirror.get(url, name, modes, metrics)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        mirror = self._mirror()
        if mirror is not None:
            # Trials that ended after the last mirrored write of the killed driver.
            mirror.put_all(self._ot_study)

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if config is not None and ot_trial is not None:
            # So a stored study's trial can be matched to its Tune trial and MLflow run.
            ot_trial.set_user_attr(studies.ATTR_TRIAL, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, str) and self.metric not in result:
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        # With several objectives the stock code tells Optuna [None, ...] for a result without
        # them, which Optuna refuses, leaving the trial RUNNING; no result means PRUNED (FAIL
        # on error), as with one objective.
        if isinstance(self.metric, list) and result and any(m not in result for m in self.metric):
            result = None
        if result and self._stopped_early(result):
            result = None  # PRUNED: the stock code tells Optuna no value as pruned
        super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials.get(trial_id)
        mirror = self._mirror()
        if mirror is not None and ot_trial is not None:
            mirror.put(self._ot_study.get_trials(deepcopy=False)[ot_trial.number])


class _GpuOnCpuWarning(Callback):
    """Warns once per sweep when a trial that Ray reserved a GPU for trained on CPU.

    ``train.device: auto`` falls back to CPU on a node without CUDA (logical GPUs, a missing
    driver), and then ``resources.gpu`` only limits how many trials run at once. Each trial's
    run says what it used (tag ``flatsweep.device``, ``flatsweep.gpu_reserved_on_cpu``); this
    says it once, at the first such result, instead of once per trial or not at all.
    """

    def __init__(self, sweep: str, gpu: float, device: str) -> None:
        self.sweep, self.gpu, self.device = sweep, gpu, device
        self.warned = False

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if self.warned or not result.get("gpu_reserved_on_cpu"):
            return
        self.warned = True
        log.warning(
            "sweep %s: trial %s was reserved resources.gpu=%s but trains on CPU (train.device "
            "%r, no CUDA on its node), as other trials may: there the GPU reservation only "
            "limits concurrency. Use resources.gpu: 0 for CPU nodes, or nodes with CUDA GPUs "
            "(each run's tag flatsweep.device says what it used)",
            self.sweep,
            trial.trial_id,
            self.gpu,
            self.device,
        )


class _WarmReport(Callback):
    """Imports the report's libraries on a background thread once every trial has started.

    The end-of-sweep report needs about 1.3 s of imports (``sweeps.report.
    import_dependencies``). Run after the last trial, they keep every slot idle that long; run
    once the stage's last trial has started, they take at most that CPU time from the trials
    still training, and nothing when the driver has a core of its own. (Waiting instead for
    the first trial to end after that left the imports to the end when the last trials end
    together: the 8-trial benchmark's report then waited 1.8 s for them.) Whether every trial
    has started is read from Tune's own trial list, so a restored stage counts its trials
    too. Holds only a flag, so it pickles into Tune's experiment state.
    """

    def __init__(self, num_trials: int) -> None:
        self.num_trials = num_trials
        self.warmed = False

    def _check(self, trials: list, starting: Any = None) -> None:
        # len() first: the scan runs only for the stage's last few trials, never per trial.
        if (
            self.warmed
            or len(trials) < self.num_trials
            or any(t.status == "PENDING" and t is not starting for t in trials)
        ):
            return
        self.warmed = True
        from sweeps.report import import_dependencies

        threading.Thread(
            target=import_dependencies, name="flatsweep-warm-report", daemon=True
        ).start()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune calls this hook before it sets the trial RUNNING.
        self._check(trials, starting=trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The last PENDING trial may leave without starting (stopped while it waited).
        self._check(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check(trials)


class Interrupted(Exception):
    """The sweep was stopped by Ctrl-C or SIGTERM; its state is saved for ``sweeps resume``."""


class NotStarted(Interrupted):
    """Ctrl-C or SIGTERM came while the parent run was being opened: nothing ran, and the
    parent this run had begun to write was removed, so the sweep can simply be run again."""


class SweepFailed(Exception):
    """Every trial of a stage failed, or records could not be delivered: the sweep ends FAILED
    instead of reporting success."""


def _drain_timeout_s() -> float:
    """How long the end of a stage waits for MLflow writes ($FLATSWEEP_DRAIN_TIMEOUT_S)."""
    return float(os.environ.get("FLATSWEEP_DRAIN_TIMEOUT_S", "300"))


# A writer process costs about 3.5 s of CPU to start (it imports MLflow and Tune's callback
# base) and about 250 MB; threads of the driver cost about 30 ms of the driver's GIL per trial.
# Below about a hundred trials the process costs more than it saves: on a 2-core machine its
# start-up delays the first trials' workers by about 1 s each (benchmarks/sweep_overhead.py).
PROCESS_WRITER_MIN_TRIALS = 100
# Each writer process holds about 250 MB: a typo must not start thousands.
MAX_WRITER_PROCESSES = 32


def _writer_process(num_trials: int | None = None) -> int:
    """How many writer processes a stage of ``num_trials`` trials writes to MLflow through,
    0 for threads of the driver ($FLATSWEEP_MLFLOW_PROCESS: ``0`` never, ``auto``, the
    default, one from ``PROCESS_WRITER_MIN_TRIALS`` trials on, ``N`` always N, at most
    ``MAX_WRITER_PROCESSES``). Without ``num_trials`` it only checks the value.

    Several processes share the trials (``sweeps.writer_process``): for a SQLite store, whose
    work is the writer's own CPU, on a head with cores to spare; an HTTP store's work is the
    server's, and one process's ``FLATSWEEP_MLFLOW_WRITERS`` threads wait on it in parallel.
    """
    raw = os.environ.get("FLATSWEEP_MLFLOW_PROCESS", "auto").strip()
    if raw == "auto":
        return int(num_trials is not None and num_trials >= PROCESS_WRITER_MIN_TRIALS)
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_WRITER_PROCESSES:
        raise ValueError(
            "FLATSWEEP_MLFLOW_PROCESS must be auto, 0 (threads of the driver) or a number of "
            f"writer processes from 1 to {MAX_WRITER_PROCESSES}, but got {raw!r}"
        )
    return int(raw)


@dataclass
class SweepResult:
    """What a finished sweep left behind."""

    name: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    num_trials: int
    best: dict[str, Any] | None
    verdict: Any = None  # sweeps.report.Verdict, when the confirmation stage ran
    no_verdict: str = ""  # why there is none, when the confirmation stage was on
    report_dir: str | None = None

    def ui_url(self, base: str | None = None) -> str:
        """The runs table of the sweep's experiment (MLflow 3.17's UI otherwise opens on the
        GenAI overview). ``base``: the UI's address; an HTTP tracking server is its own UI."""
        if base is None:
            base = (
                self.tracking_uri.rstrip("/")
                if self.tracking_uri.startswith("http")
                else "http://127.0.0.1:5000"
            )
        return f"{base}/#/experiments/{self.experiment_id}/runs"

    def browse_hint(self) -> str:
        """How to look at the sweep: the server's own URL, or the ``mlflow ui`` to start."""
        if self.tracking_uri.startswith("http"):
            return f"browse: {self.ui_url()}"
        return (
            f"browse: mlflow ui --backend-store-uri {redact(self.tracking_uri)} --host 127.0.0.1 "
            f"--port 5000  ->  {self.ui_url()}"
        )


def _slots(spec: SweepSpec, num_trials: int) -> int:
    """Concurrent trials: the spec's limit, else as many as the cluster's nodes hold."""
    import ray

    if spec.max_concurrent is not None:
        return min(spec.max_concurrent, num_trials)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return max(1, min(trials_held(nodes, spec.resources.cpu, spec.resources.gpu), num_trials))


def local_ray_init() -> dict[str, Any]:
    """``ray.init`` arguments of the Ray a sweep starts for itself when no cluster is named.

    ``address="local"`` starts our own Ray rather than joining whatever cluster this machine
    last ran (``ray.init(address=None)`` does that). ``prestart_worker_first_driver`` off: Ray
    2.60 starts one idle Python worker per CPU as the first driver connects, but Tune creates
    its trial actors with a runtime environment of their own (``env_vars``, in Tune's
    ``execution/class_cache.py``), which those workers do not have, so no trial ever runs on
    them: Ray starts new workers for the trials and stops the idle ones later. Without them
    ``ray.init`` took a median 3.4-3.8 s instead of 4.5-4.6 on 2 cores, and the trials started
    as soon (``benchmarks/ray_start.py``).

    A new dict each call: Ray writes its session's object-spilling settings into the
    ``_system_config`` it is given, which a second ``ray.init`` would then reuse.
    """
    return {
        "address": "local",
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
        "_system_config": {"prestart_worker_first_driver": False},
    }


def _init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS", "")
    if address.startswith("http"):
        # That is a Jobs API address (for ``sweeps submit``), not a driver address.
        os.environ.pop("RAY_ADDRESS")
        address = ""
    kwargs = local_ray_init()
    if address:
        # Inside a Ray job (or with RAY_ADDRESS set) join that cluster: its settings are its
        # own (Ray refuses a _system_config when joining).
        del kwargs["_system_config"]
        kwargs["address"] = address
    ray.init(**kwargs)


@dataclass
class _Stage:
    """One Tune experiment of a sweep: its name, base spec and what it runs."""

    name: str  # search | baseline_search | confirm
    experiment: str  # Tune experiment directory name
    base: dict[str, Any]  # the TrainSpec every trial starts from, as JSON
    space: str | None = None  # searched stages: the search space
    ranges: Any = None
    rows: list[dict[str, Any]] | None = None  # confirm: the exact trial configs
    stage_tag: str = "search"
    warm_start: list[Any] | None = None  # finished Optuna trials of earlier sweeps


def _baseline_perturbation(spec: SweepSpec) -> dict[str, Any]:
    """The perturbation off: ERM (with PGD-AT kept for AWP sweeps, as the base sets it)."""
    return {"kind": "erm", "warmup_epochs": 0}


def _base(spec: SweepSpec) -> dict[str, Any]:
    base = spec.train.model_dump(mode="json")
    # Trials get as many torch threads as CPUs they reserved; recorded in the spec so an
    # exported config reproduces the same CPU arithmetic.
    base["num_threads"] = max(1, int(spec.resources.cpu))
    return base


def _run_stage(
    spec: SweepSpec,
    sweep: Sweep,
    stage: _Stage,
    tracking_uri: str,
    *,
    resume: bool,
    progress: bool,
    gpu_warning: _GpuOnCpuWarning | None = None,
) -> int:
    """Run (or restore) one stage's Tune experiment; return its number of trials.

    ``gpu_warning``: the sweep's one warning about GPU reservations that ran on CPU, shared
    by its stages so that it is said once per sweep.

    Raises ``Interrupted`` when Ctrl-C or SIGTERM stopped it.
    """
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search import ConcurrencyLimiter

    import search_spaces
    from sweeps.progress import Progress
    from sweeps.ray_internals import (
        ForgetEndedTrialStats,
        InterruptWatch,
        PruneSyncedTrials,
        RepairCheckpoints,
        bounded_snapshots,
        buffered_results,
        no_trial_dataframes,
        restore_tuner,
        results_before_an_error,
    )
    from sweeps.trainable import ROW, train_trial
    from sweeps.trim import ReleaseFreedMemory

    confirm = stage.rows is not None
    num_trials = len(stage.rows) if confirm else spec.num_samples
    slots = _slots(spec, num_trials)
    worst = {
        m: spec.diverged_value if mode == spec.primary[1] else (0.0 if mode == "max" else 1e9)
        for m, mode in zip(spec.metrics, spec.modes, strict=True)
    }
    trainable = tune.with_resources(
        # The epochs a failing trial reported before its error reach the driver with
        # buffered results as without them (ray_internals).
        results_before_an_error(
            tune.with_parameters(
                train_trial,
                base=stage.base,
                worst=worst,
                checkpoint_every_s=spec.checkpoint_every_s,
            )
        ),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    storage = spec.resolved_storage()
    exp_dir = f"{storage.rstrip('/')}/{stage.experiment}"
    restoring = resume and tune.Tuner.can_restore(exp_dir)
    processes = _writer_process(num_trials)
    tracker = MLflowTracker(
        tracking_uri,
        sweep.experiment_id,
        sweep.parent_id,
        spec.name,
        stage.base,
        spec.train.epochs,
        drain_timeout_s=_drain_timeout_s(),
        stage=stage.stage_tag,
        fresh=not restoring,
        process=processes > 0,
        processes=max(1, processes),
    )
    tracker.start()
    mirror = None
    if not confirm and spec.optuna_storage_url() is not None:
        url, name = spec.optuna_storage_url(), studies.study_name(spec.name, stage.name)
        if stage.warm_start and not restoring:
            studies.seed_study(url, name, spec.modes, stage.warm_start)
        mirror = studies.StudyMirror.get(url, name, spec.modes, spec.metrics)
        mirror.run_ids = tracker.run_ids  # each stored trial links its MLflow run
        tracker.mirror_through(mirror)
    watch = InterruptWatch()
    pruner = PruneSyncedTrials()
    callbacks = [
        watch,
        RepairCheckpoints(),
        tracker,
        Progress(spec, slots, enabled=progress, stage=stage.name, total=num_trials),
        JsonLoggerCallback(),
        pruner,
        ForgetEndedTrialStats(spec.metrics),
        ReleaseFreedMemory(),
        _WarmReport(num_trials),
    ]
    if gpu_warning is not None:
        callbacks.append(gpu_warning)
    try:
        if restoring:
            tuner = restore_tuner(exp_dir, trainable, callbacks)
        else:
            param_space: dict[str, Any] = {}
            if confirm:
                # Exactly these configs, each once, in this order; no early stopping.
                param_space = {ROW: tune.grid_search(stage.rows)}
                search_alg: Any = None
                scheduler: Any = SCHEDULERS.get("fifo").build(spec, spec.train.epochs)
            else:
                metrics = spec.metric if len(spec.metrics) > 1 else spec.primary[0]
                modes = spec.mode if len(spec.metrics) > 1 else spec.primary[1]
                searcher = _OptunaSearch(
                    study_name=studies.study_name(spec.name, stage.name),
                    space=search_spaces.define_by_run(stage.space, stage.ranges),
                    metric=metrics,
                    mode=modes,
                    sampler=SAMPLERS.get(spec.searcher.sampler).build(spec),
                    mirror=(mirror.url, mirror.name) if mirror is not None else None,
                    warm_start=stage.warm_start,
                    max_epochs=spec.train.epochs,
                )
                # With a ConcurrencyLimiter Tune keeps `slots` trials pending instead of 1,
                # which is what lets a model-based searcher fill every slot.
                search_alg = ConcurrencyLimiter(searcher, max_concurrent=slots)
                scheduler = SCHEDULERS.get(spec.scheduler.name).build(
                    spec, spec.scheduler.max_t or spec.train.epochs
                )
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    search_alg=search_alg,
                    scheduler=scheduler,
                    num_samples=1 if confirm else num_trials,
                    reuse_actors=True,
                    max_concurrent_trials=slots if confirm else None,
                ),
                run_config=tune.RunConfig(
                    name=stage.experiment,
                    storage_path=storage,
                    callbacks=callbacks,
                    verbose=0,
                    failure_config=tune.FailureConfig(
                        max_failures=spec.failure.max_failures, fail_fast=spec.failure.fail_fast
                    ),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                ),
            )
        # Snapshot the experiment (trials + searcher) every 2 s while that is cheap, instead of
        # Tune's adaptive >= 10 s: a killed driver then re-runs at most the trials that ended
        # in those 2 s. As the snapshot grows, its period grows to keep it at 5% of the time.
        # One driver round trip per second of short epochs, not per epoch, and no read-back
        # of every trial's results into pandas when Tune ends; finished trials' files copied
        # to storage once, not after every snapshot (ray_internals). A Ctrl-C before Tune
        # calls the callbacks' setup still counts as one (watch.active).
        with (
            bounded_snapshots(2.0),
            buffered_results(1.0),
            no_trial_dataframes(),
            pruner.active(),
            watch.active(),
        ):
            grid = tuner.fit()
    finally:
        watch.restore_handlers()
        try:
            delivered = tracker.drain()
        finally:
            # Even when a second Ctrl-C ends the drain: no writer may go on writing while
            # the sweep's end is recorded (a run closed KILLED there from a stale read, then
            # written to by a writer that caught up).
            tracker.close()
        if mirror is not None and not mirror.flush(tracker.drain_timeout_s):
            # The searcher's own study, in Tune's snapshot, still holds them.
            log.warning(
                "%d trials not yet copied to the Optuna study %s", mirror.outstanding, mirror.name
            )
    if not delivered:
        # Never report success with records missing. They are not lost: Tune's experiment
        # state and each trial's result.json hold them, and a resume delivers them.
        raise SweepFailed(
            f"{tracker.outstanding} MLflow writes of the {stage.name} stage were not delivered "
            f"within {tracker.drain_timeout_s:.0f} s (tracking server unreachable, trial results "
            f"unreadable on storage, or the writer stopped: see the log above); they are "
            f"kept in the Tune results under {exp_dir}: run `sweeps resume {spec.name}` once "
            f"MLflow is reachable to deliver them"
        )
    if watch.interrupted is not None or tracker.killed:
        raise Interrupted(stage.name)
    if len(grid) and grid.num_errors == len(grid):
        raise SweepFailed(
            f"every one of the {len(grid)} {stage.name} trials failed; the error of each is "
            f"in its Tune trial directory under {exp_dir}"
        )
    if not confirm and mirror is not None:
        if tracker.fresh:
            # Every trial of a stage this driver started made its run here: no read of
            # thousands of runs back from MLflow (seconds, and 100+ MB, at 3000 trials).
            links = dict(tracker.run_ids)
        else:
            runs = tracking.children(MlflowClient(tracking_uri), sweep, stage.stage_tag)
            links = {r.data.tags[tracking.TAG_TRIAL]: r.info.run_id for r in runs}
        studies.reconcile(mirror.url, mirror.name, links, spec.metrics)
    return len(grid)


def _search_stage(spec: SweepSpec, warm_start: list[Any] | None = None) -> _Stage:
    return _Stage(
        "search",
        spec.name,
        _base(spec),
        space=spec.space_name,
        ranges=spec.ranges(),
        warm_start=warm_start,
    )


def _baseline_ranges(spec: SweepSpec) -> Any:
    """The baseline search's space: the method's optimizer ranges, over ERM's space."""
    import search_spaces

    return search_spaces.resolve(
        "erm", {k: v for k, v in spec.space.ranges.items() if k.startswith("optim.")}, True
    )


def _baseline_search_stage(spec: SweepSpec, warm_start: list[Any] | None = None) -> _Stage:
    base = {**_base(spec), "perturbation": _baseline_perturbation(spec)}
    return _Stage(
        "baseline_search",
        f"{spec.name}-baseline-search",
        base,
        space="erm",
        ranges=_baseline_ranges(spec),
        stage_tag="baseline_search",
        warm_start=warm_start,
    )


def _baseline_warm_start(spec: SweepSpec) -> list[Any]:
    """The finished trials of the earlier sweeps' baseline searches, for this sweep's.

    A warm-started method search gets the earlier sweeps' trials on top of its budget; the
    baseline's search over the same optimizer knobs must get theirs, or the verdict would
    compare a method tuned with more trials than its baseline. Raises a one-line ValueError
    when an earlier sweep has no such search (it ran without finalists, or searched no
    optimizer knob) or searched other ranges.
    """
    out: list[Any] = []
    for name in spec.searcher.warm_start:
        try:
            out += studies.check_warm_start(
                spec.optuna_storage_url(),
                [studies.study_name(name, "baseline_search")],
                "erm",
                _baseline_ranges(spec),
                spec.modes,
                spec.metrics,
            )
        except ValueError as e:
            raise ValueError(
                f"{e}: this sweep also searches the baseline's optimizer, and that search "
                f"must start from the earlier sweeps' as the method's does (the same budget); "
                f"warm-start from sweeps that ran one over the same optim ranges, or set "
                f"finalists.top_k: 0"
            ) from None
    return out


def _seeds(spec: SweepSpec) -> list[int]:
    """Fresh training seeds for the confirmation stage: never the search's own seed."""
    return [spec.train.seed + 1 + i for i in range(spec.finalists.seeds)]


def _choose(
    client: MlflowClient, sweep: Sweep, spec: SweepSpec, stage: str, top_k: int
) -> list[dict[str, Any]]:
    """The ``top_k`` best distinct configs of ``stage`` by the search metric, best first."""
    metric, mode = spec.primary
    ranked = tracking.rank_children(tracking.children(client, sweep, stage), metric, mode)
    chosen: list[dict[str, Any]] = []
    for run in ranked:
        point = tracking.searched_values(run)
        if point not in [c["point"] for c in chosen]:
            chosen.append(
                {"point": point, "run_id": run.info.run_id, metric: run.data.metrics[metric]}
            )
        if len(chosen) == top_k:
            break
    return chosen


def _confirm_stage(
    client: MlflowClient, sweep: Sweep, spec: SweepSpec, *, search: bool = True
) -> _Stage | None:
    """The finalist and baseline seeds; the choice is stored on the parent run first, so a
    resumed sweep confirms exactly the same configs. Without a search the base spec itself
    is the one finalist (``sweeps reproduce``)."""
    stored = sweep.parent.data.tags.get(tracking.TAG_FINALISTS)
    if stored is not None:
        plan = json.loads(stored)
    else:
        finalists = (
            _choose(client, sweep, spec, "search", spec.finalists.top_k)
            if search
            else [{"point": {}, "run_id": None}]
        )
        if not finalists:
            return None
        baseline: dict[str, Any] | None = None
        if spec.finalists.baseline:
            baseline = {"point": {}}
            # Without a search (``sweeps reproduce``) the finalist runs the spec's own
            # optimizer values, and so does the baseline: there is no baseline search.
            if spec.space.optimizer and search:
                picked = _choose(client, sweep, spec, "baseline_search", 1)
                baseline = picked[0] if picked else None
                if baseline is None:
                    log.warning(
                        "the baseline's own search finished no full-length trial: the "
                        "finalists run without a baseline, so there is no verdict"
                    )
        plan = {"finalists": finalists, "baseline": baseline}
        client.set_tag(sweep.parent_id, tracking.TAG_FINALISTS, json.dumps(plan))
    rows = []
    for seed in _seeds(spec):
        for i, f in enumerate(plan["finalists"], start=1):
            rows.append(
                {
                    **f["point"],
                    "seed": seed,
                    "hessian_lmax": True,
                    META_STAGE: "finalist",
                    META_CONFIG: f"f{i}",
                }
            )
        if plan["baseline"] is not None:
            rows.append(
                {
                    **plan["baseline"]["point"],
                    "perturbation": _baseline_perturbation(spec),
                    "seed": seed,
                    "hessian_lmax": True,
                    META_STAGE: "baseline",
                    META_CONFIG: "baseline",
                }
            )
    return _Stage("confirm", f"{spec.name}-confirm", _base(spec), rows=rows, stage_tag="finalist")


def _open_parent(
    client: MlflowClient, spec: SweepSpec, spec_text: str, *, resume: bool, search: bool
) -> Sweep:
    """The parent run with its whole opening record, retried as one idempotent step (a
    retry completes the parent an earlier try created: ``tracking.open_parent``).

    If MLflow stays unreachable, or Ctrl-C/SIGTERM comes meanwhile (the retries wait up to
    minutes), a parent this run created is closed (FAILED, or KILLED) and deleted where it
    can be: no trial ran, and a half-written record (no ``sweep.yaml`` to resume from) would
    only block the name. Interrupted, this raises :class:`NotStarted`. A resumed parent goes
    back from RUNNING to FAILED or KILLED: never left RUNNING by a driver that is gone."""
    import uuid

    attempt = uuid.uuid4().hex

    def open_() -> Sweep:
        sweep = tracking.open_parent(client, spec, spec_text, resume, attempt)
        if not search:  # a reproduction: `sweeps resume` must not add a search stage
            client.set_tag(sweep.parent_id, "flatsweep.search", "false")
        url = spec.optuna_storage_url()
        if url is not None and search:
            client.set_tag(sweep.parent_id, tracking.TAG_OPTUNA_STORAGE, redact(url))
            client.set_tag(
                sweep.parent_id,
                tracking.TAG_OPTUNA_STUDY,
                studies.study_name(spec.name, "search"),
            )
        return sweep

    try:
        return tracking.retrying(open_)
    except SpecError:
        raise
    except BaseException as e:  # KeyboardInterrupt too: SIGTERM is raised as one (cli)
        interrupted = not isinstance(e, Exception)
        status = "KILLED" if interrupted else "FAILED"
        created = False
        with contextlib.suppress(Exception):  # best effort: the store may be what failed
            exp = client.get_experiment_by_name(spec.name)
            parent = exp and tracking.find_parent(client, exp.experiment_id, spec.name)
            if parent and parent.data.tags.get(tracking.TAG_ATTEMPT) == attempt:
                client.set_terminated(parent.info.run_id, status)
                client.delete_run(parent.info.run_id)
                created = True
            elif parent and resume and parent.info.status == "RUNNING":
                client.set_terminated(parent.info.run_id, status)
        if interrupted and not resume:
            what = "removed the parent run it had begun" if created else "started nothing"
            raise NotStarted(
                f"interrupted while opening sweep {spec.name!r}: no trial ran, and this run "
                f"{what}; run it again"
            ) from None
        raise


def run_sweep(
    spec: SweepSpec,
    spec_text: str,
    *,
    resume: bool = False,
    progress: bool = True,
    search: bool = True,
) -> SweepResult:
    """Run (or resume) a validated sweep through all its stages on the current Ray cluster.

    Args:
        spec: a validated spec (``sweeps.spec.load_spec``).
        spec_text: the YAML the user wrote, stored on the parent run.
        resume: continue the sweep of this name: finished stages are skipped, the running
            one is restored from its Tune snapshot, finished trials are not re-run.
        progress: a live table on a terminal (one line per finished trial otherwise).
        search: False skips the search: the spec's own config is the one finalist, trained
            with ``finalists.seeds`` seeds against the baseline (``sweeps reproduce``).

    Raises ``Interrupted`` after Ctrl-C/SIGTERM (the parent and unfinished runs end KILLED)
    and ``SpecError`` when the name is taken (or, to resume, unknown).
    """
    for key, value in _DRIVER_ENV.items():
        os.environ.setdefault(key, value)
    tracking_uri = spec.resolved_tracking_uri()
    try:  # before anything is written, the tracking database included
        _writer_process()
        tracking._writers(tracking_uri, None)
        tracking._metrics_every_s()
        sqlbulk.enabled()
        optunabulk.enabled()
    except ValueError as e:
        raise SpecError(str(e)) from None
    # Checked before anything is written: a refused warm start leaves no stray run, and not
    # even a tracking database (opening the client creates a SQLite one).
    baseline_search = bool(
        search and spec.finalists.top_k > 0 and spec.finalists.baseline and spec.space.optimizer
    )
    check_fits_local_ray(spec)
    try:
        warm = studies.check_warm_start(
            spec.optuna_storage_url(),
            spec.searcher.warm_start,
            spec.space_name,
            spec.ranges(),
            spec.modes,
            spec.metrics,
        )
        warm_baseline = _baseline_warm_start(spec) if baseline_search else []
    except ValueError as e:
        raise SpecError(str(e)) from None
    tracking.tune_sqlite()
    mlflow.set_tracking_uri(tracking_uri)
    client = tracking.open_client(tracking_uri)
    try:
        if not resume and search and tracking.find_sweep(client, spec.name) is None:
            studies.check_new(spec.optuna_storage_url(), studies.study_name(spec.name, "search"))
    except ValueError as e:
        raise SpecError(str(e)) from None
    sweep = _open_parent(client, spec, spec_text, resume=resume, search=search)
    status, num_trials = "FAILED", 0
    result = SweepResult(spec.name, sweep.experiment_id, sweep.parent_id, tracking_uri, 0, None)
    gpu_warning = _GpuOnCpuWarning(spec.name, spec.resources.gpu, spec.train.device)
    try:
        _init_ray()
        stages = [_search_stage(spec, warm)] if search else []
        confirm = spec.finalists.top_k > 0 or not search
        if baseline_search:
            stages.append(_baseline_search_stage(spec, warm_baseline))

        def run_once(stage: _Stage) -> int:
            """Run a stage unless an earlier driver finished it; record it finished."""
            if stage.name in sweep.stages_done:
                return 0
            n = _run_stage(
                spec,
                sweep,
                stage,
                tracking_uri,
                resume=resume,
                progress=progress,
                gpu_warning=gpu_warning,
            )
            # Retried as every MLflow write of the driver is: a blip between stages must not
            # fail a sweep whose stage has finished (idempotent: a tag set again).
            tracking.retrying(lambda: tracking.mark_stage_done(client, sweep, stage.name))
            return n

        for stage in stages:
            num_trials += run_once(stage)
        if confirm:
            # Reads the search's runs and records the plan (idempotent): retried likewise.
            stage = tracking.retrying(lambda: _confirm_stage(client, sweep, spec, search=search))
            if stage is None:
                result.no_verdict = "no search trial finished its full epoch budget"
            else:
                num_trials += run_once(stage)
                result.verdict, result.no_verdict = tracking.retrying(
                    lambda: tracking.log_verdict(client, sweep, spec)
                )
            if result.no_verdict:
                log.warning("no verdict: %s", result.no_verdict)
        status = "FINISHED"
    except (Interrupted, KeyboardInterrupt):
        status = "KILLED"
        raise
    except SweepFailed:
        status = "FAILED"
        raise
    finally:
        result.num_trials = num_trials
        closed = _close(client, sweep, spec, status, result)
    if not closed:
        raise SweepFailed(
            f"the sweep finished but MLflow did not take its parent run's record; run "
            f"`sweeps resume {spec.name}` once MLflow is reachable"
        )
    return result


def _close(
    client: MlflowClient, sweep: Sweep, spec: SweepSpec, status: str, result: SweepResult
) -> bool:
    """Record the best trial, the report and the parent's end; False when MLflow stayed
    unreachable (bounded by the drain timeout: a resume closes it later).

    A Ctrl-C or SIGTERM meanwhile (the report alone takes seconds at scale, and `ray job
    stop` or a scheduler's time limit can land there) still closes the parent, as KILLED
    when the sweep had finished (its end was not recorded: `sweeps resume` records it), and
    is raised again: the CLI then says KILLED, and so does MLflow.
    """
    try:
        return _close_once(client, sweep, spec, status, result)
    except KeyboardInterrupt:
        status = "KILLED" if status == "FINISHED" else status
        try:
            note = tracking.parent_note(sweep, status, None, None)
            name = tracking.parent_name(sweep, status, None)
            tracking.close_parent(client, sweep, status, None, note, name)
        except Exception as e:  # noqa: BLE001 - the interrupt is what the user must see
            log.error("could not record sweep %s as %s in MLflow (%s)", sweep.name, status, e)
        raise


def _close_once(
    client: MlflowClient, sweep: Sweep, spec: SweepSpec, status: str, result: SweepResult
) -> bool:
    """``_close`` without the interrupt handling."""
    timeout = min(300.0, _drain_timeout_s())
    try:
        # Every child, read once for the best trial, the report and the leftover check.
        runs = tracking.retrying(lambda: tracking.children(client, sweep), timeout_s=timeout)
        best = tracking.best_run(client, sweep, runs)
        if best is not None:
            metric = sweep.objectives[0][0]
            result.best = {
                "trial_id": best.data.tags.get(tracking.TAG_TRIAL),
                "run_id": best.info.run_id,
                "run_name": best.info.run_name,
                metric: best.data.metrics[metric],
                "stage": tracking.stage_of(best),
            }
        if status == "FINISHED":
            result.report_dir = _report(client, sweep, spec.resolved_storage(), runs)
        note = tracking.parent_note(sweep, status, best, result.verdict, result.no_verdict)
        name = tracking.parent_name(sweep, status, result.verdict)
        tracking.retrying(
            lambda: tracking.close_parent(client, sweep, status, best, note, name, runs),
            timeout_s=timeout,
        )
        return True
    except Exception as e:  # noqa: BLE001 - an unreachable store, whatever the client raised
        log.error(
            "could not record the end of sweep %s in MLflow (%s); `sweeps resume %s` does",
            sweep.name,
            tracking.first_line(e),
            sweep.name,
        )
        return False


def _report(
    client: MlflowClient, sweep: Sweep, storage: str, runs: list[Any] | None = None
) -> str | None:
    """Write the sweep's report beside its Tune results (``<storage>/<name>-report``, a temp
    dir for remote storage) and log it as the parent run's ``report/`` artifacts."""
    import tempfile

    from sweeps.report import write_report

    try:
        record = tracking.sweep_record(client, sweep, runs)
        if "://" in storage:
            out = Path(tempfile.mkdtemp(prefix=f"flatsweep-report-{sweep.name}-"))
        else:
            out = Path(storage) / f"{sweep.name}-report"
        write_report(record, out)
        client.log_artifacts(sweep.parent_id, str(out), "report")
        return str(out)
    except Exception:  # noqa: BLE001 - a failed picture must not fail a finished sweep
        log.exception("writing the sweep report failed; `sweeps report %s` retries it", sweep.name)
        return None
