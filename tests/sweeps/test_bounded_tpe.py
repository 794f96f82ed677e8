"""sweeps/bounded_tpe.py: Optuna's TPE over a bounded history (real Optuna studies, no Ray)."""

from __future__ import annotations

import pickle
import random
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.bounded_tpe import BEST, MIN_HISTORY, BoundedTPESampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

# As sweeps.searchers builds the service's TPE.
KWARGS: dict[str, Any] = {
    "seed": 0,
    "n_startup_trials": 4,
    "multivariate": True,
    "constant_liar": True,
}


def objective(rng: random.Random) -> Any:
    def f(trial: optuna.Trial) -> float:
        radius = trial.suggest_float("radius", 1e-3, 1.0, log=True)
        lr = trial.suggest_float("inner_lr", 1e-3, 1.0, log=True)
        steps = trial.suggest_int("inner_steps", 1, 3)
        return -((radius - 0.05) ** 2) - (lr - 0.1) ** 2 - 0.01 * steps + rng.gauss(0, 0.01)

    return f


def grow(study: optuna.Study, n: int, seed: int = 0, running: int = 0) -> None:
    """Add ``n`` trials, ``running`` of them asked at once before being told (as Tune's
    concurrent trials are), so the constant liar sees RUNNING trials."""
    rng = random.Random(seed)
    f = objective(rng)
    for _ in range(n // max(running, 1)):
        asked = [study.ask() for _ in range(max(running, 1))]
        for trial in asked:
            study.tell(trial, f(trial))


def test_optuna_default_gamma_caps_the_below_set_at_best() -> None:
    # The bound keeps TPE's below set whole only because Optuna's default gamma is
    # min(ceil(0.1 n), 25): if Optuna changes it, the module's argument must be redone.
    from optuna.samplers._tpe.sampler import default_gamma

    assert default_gamma(10**6) == BEST
    assert default_gamma(MIN_HISTORY) == BEST
    assert default_gamma(MIN_HISTORY - 20) < BEST


def test_same_suggestions_as_optuna_tpe_up_to_the_bound() -> None:
    plain = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(**KWARGS))
    bounded = optuna.create_study(
        direction="maximize", sampler=BoundedTPESampler(max_history=MIN_HISTORY, **KWARGS)
    )
    n = MIN_HISTORY + BEST
    grow(plain, n, running=5)
    grow(bounded, n, running=5)
    assert [t.params for t in plain.trials] == [t.params for t in bounded.trials]
    # Beyond it the view is smaller than the study, and the suggestions part ways.
    grow(plain, 150, seed=1, running=5)
    grow(bounded, 150, seed=1, running=5)
    assert [t.params for t in plain.trials] != [t.params for t in bounded.trials]


def brute_view(study: optuna.Study, max_history: int) -> list[int]:
    trials = study._get_trials(deepcopy=False)
    window = trials[-max_history:]
    older = [t for t in trials[: len(trials) - len(window)] if t.state == TrialState.COMPLETE]
    best = sorted(older, key=lambda t: t.value, reverse=True)[:BEST]
    running = [t for t in trials[: len(trials) - len(window)] if not t.state.is_finished()]
    return sorted(t.number for t in [*best, *running, *window])


def test_the_view_is_the_window_and_the_best_before_it_as_the_study_grows() -> None:
    sampler = BoundedTPESampler(max_history=MIN_HISTORY, **KWARGS)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    grow(study, 200)
    everything = study._get_trials(deepcopy=False)
    assert sampler.bounded(study, everything) is everything  # under the bound: the study
    # A trial that is still running when the window passes it, and then turns out the best.
    late = study.ask()
    objective(random.Random(0))(late)  # its params drawn; it is told only later
    for step in range(6):
        grow(study, 60, seed=step + 1, running=3)
        trials = study._get_trials(deepcopy=False)
        view = sampler.bounded(study, trials)
        numbers = [t.number for t in view]
        assert numbers == sorted(numbers) and len(view) <= MIN_HISTORY + BEST + 1
        assert numbers == brute_view(study, MIN_HISTORY)
        if step == 3:
            assert late.number in numbers  # unfinished: kept for the constant liar
            study.tell(late, 10.0)
    trials = study._get_trials(deepcopy=False)
    view = sampler.bounded(study, trials)
    best = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=True
    )[:BEST]
    assert {t.number for t in best} <= {t.number for t in view}
    assert late.number in {t.number for t in view}  # folded in once it finished


def test_minimising_keeps_the_lowest_values() -> None:
    sampler = BoundedTPESampler(max_history=MIN_HISTORY, **KWARGS)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    grow(study, 600)
    trials = study._get_trials(deepcopy=False)
    lowest = sorted(trials, key=lambda t: t.value)[:BEST]
    assert {t.number for t in lowest} <= {t.number for t in sampler.bounded(study, trials)}


def test_a_multi_objective_study_is_not_bounded() -> None:
    sampler = BoundedTPESampler(max_history=MIN_HISTORY, **KWARGS)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for i in range(MIN_HISTORY + BEST + 10):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, [x, x * i])
    trials = study._get_trials(deepcopy=False)
    assert sampler.bounded(study, trials) is trials


def test_it_pickles_with_its_study_and_goes_on_alike() -> None:
    # Tune's searcher snapshot pickles OptunaSearch with its in-memory study and sampler.
    study = optuna.create_study(
        direction="maximize", sampler=BoundedTPESampler(max_history=MIN_HISTORY, **KWARGS)
    )
    grow(study, 400, running=4)
    copy = pickle.loads(pickle.dumps(study))  # noqa: S301 - our own bytes, just written
    grow(study, 20, seed=7)
    grow(copy, 20, seed=7)
    assert [t.params for t in study.trials] == [t.params for t in copy.trials]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_history must be at least 250, but got 100"):
        BoundedTPESampler(max_history=100)
    with pytest.raises(ValueError, match="default gamma"):
        BoundedTPESampler(max_history=MIN_HISTORY, gamma=lambda n: 5)


def test_the_spec_chooses_bounded_or_the_incremental_tpe() -> None:
    from sweeps.incremental_tpe import IncrementalTPESampler
    from sweeps.searchers import SAMPLERS
    from sweeps.spec import SweepSpec
    from tests.sweeps.conftest import sweep_dict

    sampler = SAMPLERS.get("tpe").build(SweepSpec.model_validate(sweep_dict()))
    # Optuna's suggestions (test_incremental_tpe) unless a bound is asked for
    assert type(sampler) is IncrementalTPESampler
    bounded = sweep_dict()
    bounded["searcher"] = {**bounded["searcher"], "max_history": 1000}
    sampler = SAMPLERS.get("tpe").build(SweepSpec.model_validate(bounded))
    assert isinstance(sampler, BoundedTPESampler) and sampler.max_history == 1000


def test_a_bound_that_would_do_nothing_is_refused() -> None:
    from pydantic import ValidationError

    from sweeps.spec import SweepSpec
    from tests.sweeps.conftest import sweep_dict

    multi = sweep_dict(metric=["val_acc", "val_loss"], mode=["max", "min"])
    multi["searcher"] = {**multi["searcher"], "max_history": 1000}
    with pytest.raises(ValidationError, match="sampler 'tpe' and 2 metric"):
        SweepSpec.model_validate(multi)
