"""Registries of Optuna samplers and Ray Tune schedulers, each entry with its capabilities.

A new searcher or scheduler is one entry here: the spec validates names against these
registries (an unknown name lists the known ones), refuses a single-objective sampler for a
multi-objective sweep from the entry's ``multi_objective`` flag, and the runner builds the
object with the entry's ``build``. As timm's ``OptimInfo`` carries metadata per optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainers._registry import Registry

if TYPE_CHECKING:  # the driver imports optuna and ray.tune; spec validation needs neither
    import optuna

    from sweeps.spec import SearcherSpec, SweepSpec


@dataclass(frozen=True)
class SamplerInfo:
    """An Optuna sampler: how to build it and what it can do."""

    name: str
    build: Callable[[SweepSpec], optuna.samplers.BaseSampler]
    multi_objective: bool
    doc: str


@dataclass(frozen=True)
class SchedulerInfo:
    """A Tune trial scheduler: how to build it and whether it stops trials early."""

    name: str
    build: Callable[[SweepSpec, int], Any]  # (spec, max_t in epochs) -> scheduler
    early_stopping: bool
    doc: str


SAMPLERS: Registry[SamplerInfo] = Registry("searcher.sampler")
SCHEDULERS: Registry[SchedulerInfo] = Registry("scheduler.name")


def _sampler(name: str, multi_objective: bool, doc: str):  # noqa: ANN202
    def deco(fn: Callable[[SweepSpec], Any]) -> Callable[[SweepSpec], Any]:
        SAMPLERS.register(name)(SamplerInfo(name, fn, multi_objective, doc))
        return fn

    return deco


def _scheduler(name: str, early_stopping: bool, doc: str):  # noqa: ANN202
    def deco(fn: Callable[[SweepSpec, int], Any]) -> Callable[[SweepSpec, int], Any]:
        SCHEDULERS.register(name)(SchedulerInfo(name, fn, early_stopping, doc))
        return fn

    return deco


@_sampler(
    "tpe",
    True,
    "Tree-structured Parzen Estimator, multivariate, constant liar; searcher.max_history "
    "bounds its history",
)
def _tpe(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    return tpe_sampler(spec.searcher)


def tpe_sampler(s: SearcherSpec) -> optuna.samplers.BaseSampler:
    """The service's TPE for searcher settings ``s`` (also what ``benchmarks/tpe_history.py``
    measures): Optuna's own, or bounded by ``s.max_history`` (``sweeps/bounded_tpe.py``)."""
    import optuna

    # constant_liar: concurrent TPE trials don't all sample the same promising point
    kwargs = {
        "seed": s.seed,
        "n_startup_trials": s.n_startup_trials,
        "multivariate": True,
        "constant_liar": True,
    }
    if s.max_history is None:
        return optuna.samplers.TPESampler(**kwargs)
    from sweeps.bounded_tpe import BoundedTPESampler

    return BoundedTPESampler(max_history=s.max_history, **kwargs)


@_sampler("random", True, "uniform random search")
def _random(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=spec.searcher.seed)


@_sampler("cmaes", False, "CMA-ES (single objective)")
def _cmaes(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    import optuna

    s = spec.searcher
    return optuna.samplers.CmaEsSampler(seed=s.seed, n_startup_trials=s.n_startup_trials)


@_sampler("nsga2", True, "NSGA-II genetic algorithm (multi-objective)")
def _nsga2(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=spec.searcher.seed)


@_sampler("gp", False, "Gaussian-process Bayesian optimisation (single objective)")
def _gp(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    import optuna

    s = spec.searcher
    return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=s.n_startup_trials)


@_scheduler("asha", True, "asynchronous successive halving, rungs in epochs")
def _asha(spec: SweepSpec, max_t: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    metric, mode = spec.primary
    c = spec.scheduler
    return ASHAScheduler(
        time_attr="epoch",
        metric=metric,
        mode=mode,
        max_t=max_t,
        grace_period=min(spec.grace_period, max_t),
        reduction_factor=c.reduction_factor,
        brackets=c.brackets,
    )


@_scheduler("hyperband", True, "synchronous HyperBand, rungs in epochs")
def _hyperband(spec: SweepSpec, max_t: int) -> Any:
    from ray.tune.schedulers import HyperBandScheduler

    metric, mode = spec.primary
    return HyperBandScheduler(
        time_attr="epoch",
        metric=metric,
        mode=mode,
        max_t=max_t,
        reduction_factor=spec.scheduler.reduction_factor,
    )


@_scheduler("fifo", False, "every trial runs its full epoch budget")
def _fifo(spec: SweepSpec, max_t: int) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()
