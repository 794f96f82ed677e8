"""Run and resume sweeps: Ray Tune trials, chosen by Optuna, scheduled by ASHA, tracked in MLflow.

The driver owns everything stateful: the Optuna study (inside Ray's ``OptunaSearch``, saved
with the Tune experiment so ``resume`` continues the same study), the scheduler, and the only
MLflow writer. Trials run ``sweeps.trainable.train_trial``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune.search.optuna import OptunaSearch

from sweeps.spec import SpecError, SweepSpec
from sweeps.tracking import (
    TAG_GIT,
    TAG_ROLE,
    TAG_SPEC,
    TAG_SWEEP,
    TAG_TRIAL,
    MLflowTracker,
    find_children,
    find_parent,
    git_revision,
    rank_children,
)

log = logging.getLogger(__name__)


# Driver settings (a user's own environment wins):
_DRIVER_ENV = {
    # An OOM trial reports no objective, so Optuna does not learn it as a bad point.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Snapshot the experiment (trials + Optuna study) every 2 s instead of Tune's adaptive
    # >= 10 s: a killed driver then re-runs at most the trials that ended in those 2 s.
    "TUNE_GLOBAL_CHECKPOINT_S": "2",
    # Fail MLflow HTTP calls fast: the tracker buffers and retries them itself, and MLflow's own
    # backoff (minutes) would stall Tune's event loop during a tracking outage.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # MLflow is the sweep's record: of Tune's per-result loggers keep only result.json (added
    # below); its CSV and TensorBoard writers cost driver CPU on every result, which on a
    # small machine the trials pay for.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


class _OptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, except that a result without the objective is not reported.

    An out-of-memory trial reports ``oom=1`` and no metric (it says nothing about the point),
    which the stock ``on_trial_result`` would turn into a KeyError in the driver and the stock
    ``on_trial_complete`` of a multi-objective study into a trial left RUNNING.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, str) and self.metric not in result:
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        # With several objectives the stock code tells Optuna [None, ...] for a result without
        # them, which Optuna refuses, leaving the trial RUNNING; no result means PRUNED (FAIL
        # on error), as with one objective.
        if (isinstance(self.metric, list) and result
                and any(m not in result for m in self.metric)):
            result = None
        super().on_trial_complete(trial_id, result, error)


@dataclass
class SweepResult:
    """What a finished sweep left behind."""

    name: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    num_trials: int
    best: dict[str, Any] | None

    def ui_url(self, base: str = "http://127.0.0.1:5000") -> str:
        # MLflow 3.17's UI opens experiments on the GenAI traces overview; link the runs table.
        return f"{base}/#/experiments/{self.experiment_id}/runs"


def _sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    s = spec.searcher
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=s.seed, n_startup_trials=s.n_startup_trials)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed)
    if s.sampler == "gp":
        return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=s.n_startup_trials)
    # constant_liar: concurrent TPE trials don't all sample the same promising point
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials,
                                      multivariate=True, constant_liar=True)


def _scheduler(spec: SweepSpec) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

    metric, mode = spec.primary
    c = spec.scheduler
    max_t = c.max_t or spec.train.epochs
    if c.name == "fifo":
        return FIFOScheduler()
    if c.name == "hyperband":
        return HyperBandScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=max_t,
                                  reduction_factor=c.reduction_factor)
    return ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=max_t,
                         grace_period=min(c.grace_period, max_t),
                         reduction_factor=c.reduction_factor, brackets=c.brackets)


def _slots(spec: SweepSpec) -> int:
    """Concurrent trials: the spec's limit, else as many as the cluster's resources hold."""
    import ray

    if spec.max_concurrent is not None:
        return spec.max_concurrent
    total = ray.cluster_resources()
    fits = [math.floor(total.get("CPU", 1) / spec.resources.cpu + 1e-9)]
    if spec.resources.gpu > 0:
        fits.append(math.floor(total.get("GPU", 0) / spec.resources.gpu + 1e-9))
    return max(1, min(min(fits), spec.num_samples))


def _init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS", "")
    if address.startswith("http"):
        # That is a Jobs API address (for ``sweeps submit``), not a driver address.
        os.environ.pop("RAY_ADDRESS")
        address = ""
    # "local": start our own Ray rather than joining whatever cluster this machine last ran
    # (ray.init(address=None) does that); inside a Ray job RAY_ADDRESS names its cluster.
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
             configure_logging=False)


def experiment_for(client: MlflowClient, spec: SweepSpec) -> str:
    """The MLflow experiment named after the sweep (created, with local artifacts if SQLite)."""
    exp = client.get_experiment_by_name(spec.name)
    if exp is not None:
        return exp.experiment_id
    uri = spec.resolved_tracking_uri()
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
                    / spec.name).resolve().as_uri()
    return client.create_experiment(spec.name, artifact_location=location)


def _open_parent(client: MlflowClient, spec: SweepSpec, spec_text: str, resume: bool
                 ) -> tuple[str, str]:
    exp_id = experiment_for(client, spec)
    parent = find_parent(client, exp_id, spec.name)
    if parent is not None and not resume:
        raise SpecError(f"name: sweep {spec.name!r} already exists in MLflow; "
                        f"run 'sweeps resume {spec.name}' or choose another name")
    if parent is None and resume:
        raise SpecError(f"name: no sweep {spec.name!r} to resume in {client.tracking_uri}")
    if parent is not None:
        client.update_run(parent.info.run_id, status="RUNNING")
        return exp_id, parent.info.run_id
    run = client.create_run(exp_id, run_name=spec.name, tags={
        TAG_SWEEP: spec.name, TAG_ROLE: "parent", TAG_GIT: git_revision(),
        "mlflow.note.content": f"Sweep {spec.name}: {spec.num_samples} trials of "
                               f"{spec.space.name}, optimising {spec.metric} ({spec.mode}).",
    })
    run_id = run.info.run_id
    params = {
        "space": spec.space.name, "searcher.sampler": spec.searcher.sampler,
        "searcher.seed": spec.searcher.seed, "scheduler": spec.scheduler.name,
        "num_samples": spec.num_samples, "metric": spec.metric, "mode": spec.mode,
        "resources.cpu": spec.resources.cpu, "resources.gpu": spec.resources.gpu,
        "train.model.name": spec.train.model.name, "train.data.name": spec.train.data.name,
        "train.epochs": spec.train.epochs,
    }
    for key, r in spec.ranges().items():
        params[f"space.{key}"] = f"[{r.low:g}, {r.high:g}]{' log' if r.log else ''}" + (
            " int" if r.integer else "")
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_text(run_id, spec_text, "sweep.yaml")
    space = {k: {"low": r.low, "high": r.high, "log": r.log, "integer": r.integer}
             for k, r in spec.ranges().items()}
    client.log_dict(run_id, {"name": spec.space.name, "ranges": space}, "search_space.json")
    return exp_id, run_id


def _close_parent(client: MlflowClient, spec: SweepSpec, exp_id: str, parent_id: str,
                  status: str) -> dict[str, Any] | None:
    metric, mode = spec.primary
    children = find_children(client, exp_id, parent_id)
    for child in children:
        # Every trial has ended when the parent closes: a RUNNING child is a leftover of an
        # interrupted driver or a lost trial, never a live run.
        if child.info.status == "RUNNING":
            client.set_terminated(child.info.run_id, "KILLED")
    ranked = rank_children(children, metric, mode)
    best = None
    if ranked:
        top = ranked[0]
        best = {"trial_id": top.data.tags.get(TAG_TRIAL), "run_id": top.info.run_id,
                metric: top.data.metrics[metric],
                "train_spec": json.loads(top.data.tags[TAG_SPEC])}
        client.log_batch(parent_id, metrics=[], tags=[
            RunTag("flatsweep.best_trial", str(best["trial_id"])),
            RunTag("flatsweep.best_run_id", top.info.run_id)])
        client.log_metric(parent_id, f"best_{metric}", best[metric])
        client.log_dict(parent_id, best, "best_config.json")
    client.set_terminated(parent_id, status)
    return best


def _retry(fn: Any, what: str, timeout_s: float = 300.0) -> Any:
    """Call ``fn`` until it succeeds or ``timeout_s`` passes (a tracking server restarting)."""
    import time

    deadline, delay = time.monotonic() + timeout_s, 1.0
    while True:
        try:
            return fn()
        except Exception as e:
            if time.monotonic() > deadline:
                raise
            log.warning("MLflow unreachable while %s (%s); retrying in %.0f s", what,
                        str(e).splitlines()[0][:200], delay)
            time.sleep(delay)
            delay = min(2 * delay, 15.0)


def run_sweep(spec: SweepSpec, spec_text: str, *, resume: bool = False,
              progress: bool = True) -> SweepResult:
    """Run (or resume) a validated sweep to completion on the current Ray cluster."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search import ConcurrencyLimiter

    import search_spaces
    from sweeps.checkpoints import RepairCheckpoints
    from sweeps.progress import Progress
    from sweeps.trainable import train_trial

    for key, value in _DRIVER_ENV.items():
        os.environ.setdefault(key, value)
    tracking_uri = spec.resolved_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp_id, parent_id = _open_parent(client, spec, spec_text, resume)
    status = "FAILED"
    tracker: MLflowTracker | None = None
    try:
        _init_ray()
        slots = _slots(spec)
        base = spec.train.model_dump(mode="json")
        # Trials get as many torch threads as CPUs they reserved; recorded in the spec so an
        # exported config reproduces the same CPU arithmetic.
        base["num_threads"] = max(1, int(spec.resources.cpu))
        worst = {m: spec.diverged_value if mode == spec.primary[1] else
                 (0.0 if mode == "max" else 1e9) for m, mode in zip(spec.metrics, spec.modes,
                                                                       strict=True)}
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, base=base, worst=worst,
                                 checkpoint_every_s=spec.checkpoint_every_s),
            {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
        tracker = MLflowTracker(tracking_uri, exp_id, parent_id, spec.name, base,
                                spec.train.epochs)
        callbacks = [RepairCheckpoints(), tracker, Progress(spec, slots, enabled=progress),
                     JsonLoggerCallback()]
        storage = spec.resolved_storage()
        exp_dir = f"{storage.rstrip('/')}/{spec.name}"
        if resume and tune.Tuner.can_restore(exp_dir):
            tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
            # Callbacks come back pickled from the first run; hand over this driver's own.
            tuner._local_tuner.get_run_config().callbacks = callbacks
        else:
            metrics = spec.metric if len(spec.metrics) > 1 else spec.primary[0]
            modes = spec.mode if len(spec.metrics) > 1 else spec.primary[1]
            searcher = _OptunaSearch(
                space=search_spaces.define_by_run(spec.space.name, spec.ranges()),
                metric=metrics, mode=modes, sampler=_sampler(spec))
            # With a ConcurrencyLimiter Tune keeps `slots` trials pending instead of 1, which
            # is what lets a model-based searcher fill every slot.
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=ConcurrencyLimiter(searcher, max_concurrent=slots),
                    scheduler=_scheduler(spec), num_samples=spec.num_samples,
                    reuse_actors=True),
                run_config=tune.RunConfig(
                    name=spec.name, storage_path=storage, callbacks=callbacks, verbose=0,
                    failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures,
                                                      fail_fast=spec.failure.fail_fast),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
            )
        grid = tuner.fit()
        status = "FINISHED"
        num_trials = len(grid)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if tracker is not None:
            tracker.drain()
        best = _retry(lambda: _close_parent(client, spec, exp_id, parent_id, status),
                      what="closing the parent run")
    return SweepResult(spec.name, exp_id, parent_id, tracking_uri, num_trials, best)
