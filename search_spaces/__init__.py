"""Optuna define-by-run search spaces, one per regularizer, registered by name.

``resolve(name, overrides, optimizer)`` gives the ranges a sweep searches and
``define_by_run(name, ranges)`` the function Ray Tune's ``OptunaSearch`` calls per trial.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # trial workers import this package; optuna is only needed by the driver
    import optuna

from search_spaces import spaces as _spaces  # noqa: F401  (registers the spaces)
from search_spaces._core import SPACES, Range, Ranges, Space, merge
from search_spaces.spaces import OPTIMIZER_RANGES
from trainers._registry import unknown_message

__all__ = ["SPACES", "Range", "Ranges", "Space", "define_by_run", "merge", "resolve", "sample"]


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
        ranges[key] = ranges[key].with_bounds(float(bounds[0]), float(bounds[1]))
    return ranges


def define_by_run(name: str, ranges: Ranges) -> Callable[[optuna.Trial], dict[str, Any]]:
    """The function OptunaSearch(space=...) calls with each new Optuna trial."""
    return functools.partial(SPACES.get(name).fn, ranges=ranges)


def sample(name: str, trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """Run space ``name`` on ``trial``: the suggested params merged with its constants."""
    fixed = SPACES.get(name).fn(trial, ranges)
    return {**trial.params, **fixed}
