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


def tpe_settings(s: SearcherSpec) -> dict[str, Any]:
    """The arguments the service gives TPE for searcher settings ``s``."""
    # constant_liar: concurrent TPE trials don't all sample the same promising point
    return {
        "seed": s.seed,
        "n_startup_trials": s.n_startup_trials,
        "multivariate": True,
        "constant_liar": True,
    }


def tpe_sampler(s: SearcherSpec) -> optuna.samplers.BaseSampler:
    """The service's TPE for searcher settings ``s`` (also what ``benchmarks/tpe_history.py``
    measures): Optuna's own, suggestion for suggestion, with its history kept between
    suggestions (``sweeps/incremental_tpe.py``), or bounded by ``s.max_history``
    (``sweeps/bounded_tpe.py``)."""
    if s.max_history is None:
        from sweeps.incremental_tpe import IncrementalTPESampler

        return IncrementalTPESampler(**tpe_settings(s))
    from sweeps.bounded_tpe import BoundedTPESampler

    return BoundedTPESampler(max_history=s.max_history, **tpe_settings(s))


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


#: Upper bound on ``scheduler.brackets`` (``sweeps.spec.SchedulerSpec``).
MAX_BRACKETS = 8


def hyperband_brackets(grace_period: int, max_t: int, reduction_factor: float) -> int:
    """HyperBand's number of brackets, ``s_max + 1`` with ``s_max = floor(log_eta(R))``,
    ``R = max_t / grace_period``: every bracket whose first rung (``grace_period * eta**s``)
    is within ``max_t``, at most ``MAX_BRACKETS``."""
    n = 1
    # Multiplied out rather than a float log: log(9) / log(3) need not be exactly 2.
    while n < MAX_BRACKETS and grace_period * reduction_factor**n <= max_t:
        n += 1
    return n


def scheduler_brackets(spec: SweepSpec, max_t: int | None = None) -> int | None:
    """The brackets the spec's scheduler runs over ``max_t`` epochs (by default the spec's;
    recorded on the sweep's parent run): ASHA's ``scheduler.brackets`` or 1, HyperBand's or
    ``hyperband_brackets``; None for FIFO."""
    c = spec.scheduler
    if c.name == "asha":
        return c.brackets or 1
    if c.name == "hyperband":
        max_t = max_t or c.max_t or spec.train.epochs
        return c.brackets or hyperband_brackets(
            min(spec.grace_period, max_t), max_t, c.reduction_factor
        )
    return None


def _successive_halving(spec: SweepSpec, max_t: int, brackets: int) -> Any:
    """Ray's ASHA with ``brackets`` brackets: bracket ``s`` has its first rung at
    ``grace_period * reduction_factor**s`` epochs, so no bracket judges a trial before the
    grace period. Time is the trial's ``epoch``; a result without one (an out-of-memory
    report) is passed over, not an error. It picks the next trial to start among the live
    trials only (``ray_internals.LiveTrialChoice``: Ray's own choice, without walking every
    finished trial at each step of Tune's loop)."""
    from sweeps.ray_internals import LiveASHAScheduler

    metric, mode = spec.primary
    return LiveASHAScheduler(
        time_attr="epoch",
        metric=metric,
        mode=mode,
        max_t=max_t,
        grace_period=min(spec.grace_period, max_t),
        reduction_factor=spec.scheduler.reduction_factor,
        brackets=brackets,
    )


@_scheduler("asha", True, "asynchronous successive halving, rungs in epochs")
def _asha(spec: SweepSpec, max_t: int) -> Any:
    return _successive_halving(spec, max_t, scheduler_brackets(spec, max_t) or 1)


@_scheduler(
    "hyperband",
    True,
    "asynchronous HyperBand (ASHA over HyperBand's brackets), rungs in epochs",
)
def _hyperband(spec: SweepSpec, max_t: int) -> Any:
    """HyperBand run asynchronously, as Li et al. propose ("A System for Massively Parallel
    Hyperparameter Tuning", MLSys 2020): ASHA over brackets ``s = 0 .. N-1``, by default
    HyperBand's ``s_max + 1`` (``hyperband_brackets``); Ray puts each new trial in one at
    random (a softmax over the brackets' rung counts, which favours the most aggressive).
    ``grace_period`` is the first rung of bracket 0, later ones start ``reduction_factor``
    times later each, so no trial is judged before the grace period.

    A deviation from synchronous HyperBand (Ray's ``HyperBandScheduler``), chosen because
    that one needs ``n0`` concurrent trials per bracket (3 at 9 epochs, 6 at 200): it opens
    the next bracket only once the current one holds ``n0`` live trials, so behind the
    runner's ``ConcurrencyLimiter`` with fewer slots every trial joined the first bracket,
    whose only rung is ``max_t``, and nothing stopped early.
    """
    return _successive_halving(spec, max_t, scheduler_brackets(spec, max_t) or 1)


@_scheduler("fifo", False, "every trial runs its full epoch budget")
def _fifo(spec: SweepSpec, max_t: int) -> Any:
    """Ray's ``FIFOScheduler``, choosing among live trials only (as ASHA above)."""
    from sweeps.ray_internals import LiveFIFOScheduler

    return LiveFIFOScheduler()
