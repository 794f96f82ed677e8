"""Optuna define-by-run search spaces, one per regularizer, registered by name.

``resolve(name, overrides, optimizer)`` gives the ranges a sweep searches and
``define_by_run(name, ranges)`` the function Ray Tune's ``OptunaSearch`` calls per trial.
``SPACES.get(name).kind`` is the perturbation kind a space searches and ``space_for_kind``
the default space of a kind. A searched point goes into a spec with
``trainers.TrainSpec.with_overrides``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # trial workers import this package; optuna is only needed by the driver
    import optuna

from search_spaces import spaces as _spaces  # noqa: F401  (registers the spaces)
from search_spaces._core import SPACES, Range, Ranges, Space, run
from search_spaces.spaces import OPTIMIZER_RANGES
from trainers.registry import unknown_message

__all__ = [
    "SPACES",
    "Range",
    "Ranges",
    "Space",
    "define_by_run",
    "resolve",
    "sample",
    "space_for_kind",
]


def space_for_kind(kind: str, *, adaptive: bool = False) -> str:
    """The name of the default space for perturbation ``kind``: the space named after it, or
    ``asam`` for ``kind="sam"`` with ``adaptive=True`` (ASAM's radius scale is its own).

    Raises:
        ValueError: a kind no space searches, or ``adaptive`` for a kind other than ``sam``.

    Example:
        >>> space_for_kind("amp"), space_for_kind("sam", adaptive=True)
        ('amp', 'asam')
    """
    if adaptive and kind != "sam":
        raise ValueError(f"adaptive applies to perturbation kind 'sam' only, but got {kind!r}")
    name = "asam" if adaptive else kind
    kinds = sorted({SPACES.get(n).kind for n in SPACES})
    if name not in SPACES or SPACES.get(name).kind != kind:
        raise ValueError(unknown_message("perturbation kind", kind, kinds))
    return name


def resolve(
    name: str, overrides: Mapping[str, Sequence[float]] | None = None, optimizer: bool = False
) -> Ranges:
    """The ranges of space ``name``, with optimizer knobs if asked and ``[low, high]`` overrides."""
    space = SPACES.get(name)
    ranges: Ranges = dict(space.ranges)
    if optimizer:
        ranges.update(OPTIMIZER_RANGES)
    for key, bounds in (overrides or {}).items():
        if key not in ranges:
            raise ValueError(
                unknown_message(f"parameter of search space {name!r}", key, list(ranges))
            )
        if len(bounds) != 2:
            raise ValueError(f"range for {key!r} must be [low, high], but got {list(bounds)}")
        low, high = float(bounds[0]), float(bounds[1])
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"range for {key!r} must be finite, but got [{low}, {high}]")
        try:
            ranges[key] = ranges[key].with_bounds(low, high)
        except ValueError as e:
            raise ValueError(f"range for {key!r}: {e}") from None
    return ranges


def define_by_run(name: str, ranges: Ranges) -> Callable[[optuna.Trial], dict[str, Any]]:
    """The function OptunaSearch(space=...) calls with each new Optuna trial; it returns the
    constants of the point (``perturbation.kind`` among them)."""
    return functools.partial(run, SPACES.get(name), ranges)


def sample(name: str, trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """Run space ``name`` on ``trial``: the suggested params merged with its constants."""
    fixed = run(SPACES.get(name), ranges, trial)
    return {**trial.params, **fixed}
