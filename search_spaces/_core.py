"""The search-space contract: define-by-run functions over a table of ranges.

A space is ``fn(trial, ranges) -> dict`` in Optuna's define-by-run style: it calls
``trial.suggest_*`` with the parameter's dotted spec name (``perturbation.radius``), which is
also its Tune config key and its MLflow param name, and returns the constants it fixes.
No computation happens inside; a conditional parameter is a plain ``if``. The perturbation
kind a space searches is registered with it (``Space.kind``) and added to every point by
``define_by_run``/``sample``, so a space function never repeats it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # trial workers import this package; optuna is only needed by the driver
    import optuna

from trainers.registry import Registry, unknown_message
from trainers.spec import PERTURBATION_SPECS


@dataclass(frozen=True)
class Range:
    """A numeric search range: ``low``..``high``, log-uniform or uniform, float or int."""

    low: float
    high: float
    log: bool = True
    integer: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"range low must be <= high, but got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, but got low={self.low}")

    def suggest(self, trial: optuna.Trial, name: str) -> float | int:
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def with_bounds(self, low: float, high: float) -> Range:
        return Range(low, high, self.log, self.integer)


Ranges = dict[str, Range]
SpaceFn = Callable[["optuna.Trial", Ranges], dict[str, Any]]


@dataclass(frozen=True)
class Space:
    """A registered space: its function, default ranges, and the perturbation kind it searches
    (``perturbation.kind`` of every point it gives; ``asam`` searches kind ``sam``).
    """

    name: str
    fn: SpaceFn
    ranges: Ranges
    doc: str
    kind: str


SPACES: Registry[Space] = Registry("search space")


def register(name: str, ranges: Ranges, *, kind: str) -> Callable[[SpaceFn], SpaceFn]:
    """Register ``fn`` under ``name`` with its default ``ranges``, searching perturbation
    ``kind``; an unknown kind fails at import, like a duplicate name.
    """
    if kind not in PERTURBATION_SPECS:
        raise ValueError(unknown_message("perturbation kind", kind, list(PERTURBATION_SPECS)))

    def deco(fn: SpaceFn) -> SpaceFn:
        doc = (fn.__doc__ or "").strip()
        SPACES.register(name)(Space(name, fn, dict(ranges), doc, kind))
        return fn

    return deco


def run(space: Space, ranges: Ranges, trial: optuna.Trial) -> dict[str, Any]:
    """Call ``space`` on ``trial``: the constants it fixes, its kind among them."""
    return {"perturbation.kind": space.kind, **space.fn(trial, ranges)}
