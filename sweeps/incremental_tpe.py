"""Optuna's TPE, suggestion for suggestion, without re-reading the whole history each time.

Optuna's ``TPESampler`` (Bergstra et al., "Algorithms for Hyper-Parameter Optimization",
NeurIPS 2011; Watanabe, "Tree-Structured Parzen Estimator: Understanding Its Algorithm
Components", 2023) builds its two densities from scratch at every suggestion: it ranks every
finished trial to split them into the best ``gamma(n)`` ("below") and the rest ("above"), then
reads each trial's parameters into arrays, several passes of Python over all ``n`` trials.
Most of a suggestion's time, as the study grows, is those passes (``_split_trials`` and
``_get_internal_repr``); the rest is NumPy over the ``n`` mixture components.

:class:`IncrementalTPESampler` keeps what those passes compute for the trials that have
finished, which never change again (Optuna refuses to alter a finished trial): each finished
trial's rank key, in sorted lists kept by insertion, and its parameters in internal
representation, in arrays that grow by doubling, one per search space the sampler has been
asked about. A suggestion then does Python work only for the trials that finished since the
last one and for the running ones (constant liar), and picks the two sets out of the arrays
with NumPy. Everything after the split (the Parzen estimators, the candidates drawn from
``l(x)``, the acquisition ``l(x) / g(x)``) is Optuna's own code, fed the same arrays in the same
order, so the suggestions are Optuna's, draw for draw: tested against ``TPESampler`` with the
same seed over complete, pruned, failed, running and infeasible trials, ties, a conditional
parameter, both directions and a pickled restart (``tests/sweeps/test_incremental_tpe.py``),
which also pins this module to the Optuna version it was read from (5.0.0). Measured by
``benchmarks/tpe_history.py`` (2 cores, 3 seeds, the same values found): 4.0, 7.3 and 10.6 ms
per trial at 1000, 2000 and 3000 trials against Optuna's 7.8, 15.0 and 22.3. What still grows
is Optuna's NumPy, about 3 microseconds per finished trial per suggestion (Optuna's whole
suggestion: 7); making it flat would change the estimator (``sweeps/bounded_tpe.py``).

Where the ranking is not a sort of single values (a multi-objective study, whose below set is
chosen by Pareto rank and hypervolume), this defers to Optuna's code unchanged.

The kept state is not pickled (Tune's searcher snapshots stay their size, and a restored
sampler can never hold a state of some other study): it is rebuilt on the first suggestion
after a restore, in one pass. It belongs to the trial objects it took, not to a study's name
or id, so a sampler used for another study starts over (``_ledger_for``); threads asking at
once (``Study.optimize(n_jobs=...)``) update it one at a time.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers._tpe.sampler import (
    _get_infeasible_trial_score,
    _get_pruned_trial_score,
    default_gamma,
)
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

#: Search spaces whose arrays are kept at once (the least recently used goes first): the
#: multivariate space and, for each parameter outside it (a conditional one), that parameter's
#: own space of independent sampling. Each costs 8 bytes per finished trial and parameter.
MAX_SPACES = 64


def _grown(a: np.ndarray, need: int) -> np.ndarray:
    """``a`` with room for ``need`` entries: itself, or resized to at least twice its length
    (amortised O(1) appends)."""
    return a if need <= len(a) else np.resize(a, max(need, 2 * len(a), 64))


class _Columns:
    """The finished trials' parameters in one search space, in the ledger's order, in internal
    representation (``NaN``-free; ``has`` False where the trial lacks a parameter of it)."""

    def __init__(self, space: dict[str, BaseDistribution]) -> None:
        self.space = space
        # Optuna's arrays are ``np.asarray`` of the internal values: float64, except a
        # categorical's indices (int64); kept so, since the estimator stacks them.
        self.columns = [
            np.empty(0, dtype=np.int64 if isinstance(d, CategoricalDistribution) else np.float64)
            for d in space.values()
        ]
        self.has = np.empty(0, dtype=bool)
        self.size = 0  # ledger entries converted

    def row(self, params: dict[str, Any]) -> list[Any] | None:
        """``params`` in internal representation, or None where one of the space's is missing
        (Optuna leaves such a trial out of the arrays: ``_get_internal_repr``)."""
        if not self.space.keys() <= params.keys():
            return None
        return [d.to_internal_repr(params[name]) for name, d in self.space.items()]

    def extend(self, trials: list[FrozenTrial]) -> None:
        """Convert the ledger's trials from ``self.size`` on."""
        new = trials[self.size :]
        if not new:
            return
        need = self.size + len(new)
        self.columns = [_grown(c, need) for c in self.columns]
        self.has = _grown(self.has, need)
        for i, t in enumerate(new, start=self.size):
            row = self.row(t.params)
            self.has[i] = row is not None
            if row is not None:
                for column, value in zip(self.columns, row, strict=True):
                    column[i] = value
        self.size = need


class _Ledger:
    """The study's finished (COMPLETE or PRUNED) trials as Optuna's split ranks them."""

    def __init__(self, study: Study) -> None:
        self.direction = study.direction
        self.trials: list[FrozenTrial] = []  # in the order they were first seen
        self.position: dict[int, int] = {}  # trial number -> index in ``trials``
        self._numbers = np.empty(0, dtype=np.int64)  # grows by doubling
        # Sorted keys that end in the trial's number, so that ties fall as in Optuna's
        # stable sorts of trials listed by number (``reverse=True`` keeps that order too).
        self.complete: list[tuple[Any, ...]] = []
        self.pruned: list[tuple[Any, ...]] = []
        self.infeasible: list[tuple[Any, ...]] = []
        self.spaces: dict[tuple[tuple[str, BaseDistribution], ...], _Columns] = {}

    def add(self, trial: FrozenTrial, study: Study) -> None:
        """Rank ``trial``, as ``optuna.samplers._tpe.sampler._split_trials`` would."""
        if (infeasible := _get_infeasible_trial_score(trial)) > 0:
            bisect.insort(self.infeasible, (infeasible, trial.number))
        elif trial.state == TrialState.COMPLETE:
            value = trial.value  # as stored: an int beyond 2**53 ranks as Optuna ranks it
            signed = value if self.direction == StudyDirection.MINIMIZE else -value  # type: ignore[operator]
            bisect.insort(self.complete, (signed, trial.number))
        else:
            bisect.insort(self.pruned, (*_get_pruned_trial_score(trial, study), trial.number))
        i = self.position[trial.number] = len(self.trials)
        self.trials.append(trial)
        self._numbers = _grown(self._numbers, i + 1)
        self._numbers[i] = trial.number

    @property
    def numbers(self) -> np.ndarray:
        """The trials' numbers, in the ledger's order."""
        return self._numbers[: len(self.trials)]

    def columns(self, space: dict[str, BaseDistribution]) -> _Columns:
        key = tuple(space.items())
        cols = self.spaces.pop(key, None)
        if cols is None:
            if len(self.spaces) >= MAX_SPACES:
                self.spaces.pop(next(iter(self.spaces)))
            cols = _Columns(space)
        self.spaces[key] = cols  # the most recently used last
        cols.extend(self.trials)
        return cols

    def below(self, n_below: int) -> list[int]:
        """The numbers of the below set: the best complete trials, then the pruned ones that
        got furthest, then the least infeasible, ``n_below`` in all."""
        numbers = []
        # As ``_split_trials`` slices (a negative gamma included): the complete trials first,
        # then what is left of n_below from the pruned, then from the infeasible.
        for ranked in (self.complete, self.pruned, self.infeasible):
            chosen = ranked[: min(n_below, len(ranked))]
            numbers += [key[-1] for key in chosen]
            n_below = max(0, n_below - len(chosen))
        return numbers


class IncrementalTPESampler(optuna.samplers.TPESampler):
    """``optuna.samplers.TPESampler`` with the same arguments and the same suggestions, whose
    per-suggestion Python work follows the trials that finished since the last suggestion
    instead of all of them (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ledger: _Ledger | None = None
        # ``Study.optimize(n_jobs=...)`` asks from several threads: one ledger update at a time.
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_ledger"] = None  # rebuilt from the study on the next suggestion
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _sample(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if len(study.directions) > 1:
            return super()._sample(study, trial, search_space)
        # What follows is TPESampler._sample (Optuna 5.0.0) with its split and its reading of
        # parameters answered from the ledger; the rest is the same calls in the same order.
        if self._constant_liar:
            states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]
        else:
            states = [TrialState.COMPLETE, TrialState.PRUNED]
        trials = study._get_trials(deepcopy=False, states=states, use_cache=not self._constant_liar)
        if self._gamma is None:
            self._gamma = default_gamma

        with self._lock:
            obs_below, obs_above = self._observations(study, trial, trials, search_space)
        params = self._parzen_estimator_parameters
        mpe_below = self._parzen_estimator_cls(obs_below, search_space, params)
        mpe_above = self._parzen_estimator_cls(obs_above, search_space, params)

        samples_below = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        acq_func_vals = self._compute_acquisition_func(samples_below, mpe_below, mpe_above)
        ret = optuna.samplers.TPESampler._compare(samples_below, acq_func_vals)
        for param_name, dist in search_space.items():
            ret[param_name] = dist.to_external_repr(ret[param_name])
        return ret

    def _observations(
        self,
        study: Study,
        trial: FrozenTrial,
        trials: list[FrozenTrial],
        search_space: dict[str, BaseDistribution],
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The below and the above set's parameters, as ``_split_trials`` and
        ``_get_internal_repr`` would give them for ``trials`` (fresh arrays)."""
        ledger, running = self._ledger_for(study, trials)
        running = [t for t in running if t.number != trial.number]
        below = sorted(ledger.below(self._gamma(len(ledger.trials))))
        cols = ledger.columns(search_space)

        below_at = np.array([ledger.position[n] for n in below], dtype=np.intp)
        below_at = below_at[cols.has[below_at]]
        is_below = np.zeros(cols.size, dtype=bool)
        is_below[below_at] = True
        above_at = np.flatnonzero(~is_below & cols.has[: cols.size])
        # Running trials are above (constant liar) with the parameters they were given.
        rows, numbers = [], []
        for t in running:
            if (row := cols.row(self._get_params(t, study))) is not None:
                rows.append(row)
                numbers.append(t.number)
        order = np.argsort(
            np.concatenate([ledger.numbers[above_at], np.asarray(numbers, dtype=np.int64)]),
            kind="stable",
        )

        def observations(at: np.ndarray, extra: list[list[Any]]) -> dict[str, np.ndarray]:
            out = {}
            for j, (name, column) in enumerate(zip(search_space, cols.columns, strict=True)):
                values = column[at]
                if extra:
                    values = np.concatenate([values, np.asarray([r[j] for r in extra])])
                out[name] = values if len(values) else np.asarray([])
            return out

        obs_below = observations(below_at, [])
        obs_above = {name: v[order] for name, v in observations(above_at, rows).items()}
        return obs_below, obs_above

    def _ledger_for(
        self, study: Study, trials: list[FrozenTrial]
    ) -> tuple[_Ledger, list[FrozenTrial]]:
        """The ledger, brought up to date with ``trials`` (the study's finished and running
        ones; a trial is added once, when it is first seen finished), and the running ones.

        A ledger belongs to the trials it holds, not to a study's name or id (a study deleted
        and made again under one storage gets the same id, and a new in-memory storage can
        land at a freed one's address): a finished trial is recognised as the very object
        the ledger took, which Optuna's storages keep (in memory, cached or journaled) once a
        trial has finished. A storage that hands out copies makes the ledger start over at
        each suggestion: Optuna's cost, Optuna's suggestions."""
        ledger = self._ledger
        if ledger is None or ledger.direction != study.direction:
            ledger = self._ledger = _Ledger(study)
        # One pass of Python over the study: a dict lookup per trial (``_number``: the
        # ``number`` property costs as much again).
        position, held = ledger.position, ledger.trials
        rest = [t for t in trials if (i := position.get(t._number)) is None or held[i] is not t]
        if len(trials) - len(rest) != len(held) or any(t._number in position for t in rest):
            # Trials the ledger holds that are not this study's: start over.
            ledger = self._ledger = _Ledger(study)
            rest = trials
        running = []
        for t in rest:
            if t.state == TrialState.RUNNING:
                running.append(t)
            else:
                ledger.add(t, study)
        return ledger, running
