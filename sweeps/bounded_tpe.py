"""TPE whose per-suggestion cost stops growing with the number of finished trials.

Optuna's ``TPESampler`` (Bergstra et al., "Algorithms for Hyper-Parameter Optimization",
NeurIPS 2011; Watanabe, "Tree-Structured Parzen Estimator: Understanding Its Algorithm
Components", 2023) splits every finished trial of the study into the best ``gamma(n)`` (its
"below" density l(x)) and the rest (its "above" density g(x)), and builds both densities from
scratch at each suggestion: several passes of Python over all ``n`` trials. Measured in
``benchmarks/sweep_scale.py`` (2 cores), a suggestion took about 4 ms at 200 trials, 14 at
1000 and 30-40 at 3000, in the service and in plain Ray Tune alike: the one per-trial cost of a
sweep's driver that grows with the number of finished trials.

:class:`BoundedTPESampler` hands TPE a view of the study that holds the last ``max_history``
trials (by number, any state) and the ``BEST`` best finished trials before them, and otherwise
is Optuna's TPE with the same arguments. What changes, and what does not:

- Up to ``max_history + BEST`` trials in the study the view is the whole study: the
  suggestions are exactly Optuna's (tested, seed for seed).
- Beyond that, the below density is unchanged: Optuna's default ``gamma(n)`` is
  ``min(ceil(0.1 n), 25)``, so for the ``n >= 250`` finished trials a view of at least 250
  holds it is 25 either way, and the 25 best of the whole study are in the view (the best
  ``BEST`` before the window plus the window itself).
- The above density is built from the window (and those of the older best that are not among
  the 25 best overall) instead of every other trial. Optuna's default weights ramp the above
  trials linearly from ``1/n`` (the oldest) to 1 (the latest 25), so what is left out is the
  part of the history TPE weighs least, but the latest trials, which cluster where TPE has
  been exploiting, then weigh more in the above density, and TPE explores more. Measured by
  ``benchmarks/tpe_history.py`` (3000 trials, 3 seeds, ``max_history`` 1000): about 11 ms per
  trial at 2000 and 3000 trials against 21 and 28, but a lower best in each seed and a lower
  mean over the last 500 trials (-4.33 against -2.83). This is a deviation from Optuna's TPE
  that costs search quality, hence opt-in (``searcher.max_history``; the default, None,
  makes Optuna's TPE's suggestions: ``sweeps/incremental_tpe.py``). Rescaling the weights to
  stand for the left-out trials would need TPE's ``weights`` argument, deprecated since
  Optuna 4.9. A view that spans the
  whole history instead of its tail (every s-th trial, s the power of two that keeps at most
  ``max_history``, plus the 25 best and the running ones: an even sample of the above set,
  which Optuna's ramp weights alike) was tried and not kept: on the same objective (2 seeds
  of 3000 trials, the true value of the last 500 suggestions) it spread TPE further still,
  median -0.86 against -0.69 for the window and -0.34 for Optuna's. TPE concentrates as its
  above set grows (Optuna's own, over trials 500-999 of those seeds: -0.71 and -1.00), so a
  bound holds it near the concentration it had at that many trials, however they are chosen.
  Nor does a thinned above density that stands for the whole set (tried 2026-12-05: Optuna's
  estimator built from every trial, then its 250 latest components kept and the older ones
  replaced by every k-th, each with its own kernel width and the summed weight of the k it
  stands for, 1000 components in all): the same two seeds' last 500 suggestions had a true
  median of -0.85 and -0.67 against Optuna's -0.37 and -0.33. Its kernels are as narrow as
  the full set's, so between the kept ones g(x) dips and the acquisition l(x) / g(x) favours
  those gaps: fewer kernels spread TPE whatever their weights.
- A multi-objective study is never bounded (its below set is chosen by Pareto rank, not by a
  count of best values).

The best trials before the window are kept incrementally (a heap of at most ``BEST`` values
and a cursor over trial numbers), so a suggestion does Python work in proportion to the
window, not to the study. The state pickles with the sampler into Tune's searcher snapshot.
"""

from __future__ import annotations

import bisect
import copy
import heapq
from collections.abc import Container
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

#: Best finished trials kept from before the window: Optuna's default gamma caps the below
#: set at 25 (``optuna.samplers._tpe.sampler.default_gamma``, checked by the tests).
BEST = 25
#: The smallest window for which the default gamma is already at its cap (ceil(0.1 n) = 25).
MIN_HISTORY = 250


def _find(trials: list[FrozenTrial], number: int) -> FrozenTrial | None:
    """Trial ``number`` of ``trials`` (sorted by number), in O(log n)."""
    i = bisect.bisect_left(trials, number, key=lambda t: t.number)
    return trials[i] if i < len(trials) and trials[i].number == number else None


class _History:
    """The best finished trials before the window, by number, built up as the window moves."""

    def __init__(self) -> None:
        self.folded_below = 0  # every trial numbered below this has been looked at
        self.best: list[tuple[float, int]] = []  # min-heap of (signed value, number)
        self.unfinished: list[int] = []  # numbers that left the window before finishing

    def fold(self, trials: list[FrozenTrial], boundary: int, sign: float) -> None:
        """Look at the trials numbered from ``folded_below`` up to ``boundary`` (and those
        that left the window unfinished), keeping the ``BEST`` best complete ones."""
        start = bisect.bisect_left(trials, self.folded_below, key=lambda t: t.number)
        stop = bisect.bisect_left(trials, boundary, key=lambda t: t.number)
        candidates = trials[start:stop]
        candidates += [t for n in self.unfinished if (t := _find(trials, n)) is not None]
        self.unfinished = []
        for t in candidates:
            if t.state == TrialState.COMPLETE:
                item = (sign * t.value, t.number)
                if len(self.best) < BEST:
                    heapq.heappush(self.best, item)
                else:
                    heapq.heappushpop(self.best, item)
            elif not t.state.is_finished():
                self.unfinished.append(t.number)
        self.folded_below = max(self.folded_below, boundary)


class _View:
    """The study as TPE sees it: every attribute is the study's, but its trials are the last
    ``max_history`` ones and the best before them (module doc)."""

    def __init__(self, study: Study, sampler: BoundedTPESampler) -> None:
        self._study = study
        self._sampler = sampler

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = self._sampler.bounded(
            self._study, self._study._get_trials(deepcopy=False, use_cache=use_cache)
        )
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self._get_trials()


class BoundedTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE over the last ``max_history`` trials and the best before them (module doc).

    Args:
        max_history: trials of the window, at least ``MIN_HISTORY`` (250).
        **kwargs: ``optuna.samplers.TPESampler``'s arguments; ``gamma`` must stay the default.
    """

    def __init__(self, *, max_history: int, **kwargs: Any) -> None:
        if max_history < MIN_HISTORY:
            raise ValueError(f"max_history must be at least {MIN_HISTORY}, but got {max_history}")
        if kwargs.get("gamma") is not None:
            raise ValueError("BoundedTPESampler keeps Optuna's default gamma")
        super().__init__(**kwargs)
        self.max_history = max_history
        self._history = _History()

    def bounded(self, study: Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """``trials`` (all of the study's, by number) as the window and the best before it."""
        if len(trials) <= self.max_history + BEST or len(study.directions) > 1:
            return trials
        window = trials[-self.max_history :]
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        self._history.fold(trials, window[0].number, sign)
        old = sorted({n for _, n in self._history.best} | set(self._history.unfinished))
        before = [t for n in old if (t := _find(trials, n)) is not None]
        return before + window

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return super().sample_relative(_View(study, self), trial, search_space)  # type: ignore[arg-type]

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return super().sample_independent(
            _View(study, self),  # type: ignore[arg-type]
            trial,
            param_name,
            param_distribution,
        )


__all__ = ["BEST", "MIN_HISTORY", "BoundedTPESampler"]
