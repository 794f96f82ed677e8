"""IncrementalTPESampler suggests what Optuna's TPESampler suggests, draw for draw."""

from __future__ import annotations

import math
import pickle
import random
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import optuna
import pytest

from sweeps.incremental_tpe import IncrementalTPESampler

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _suggest(trial: optuna.Trial) -> None:
    """A space like the service's: log floats, an int, a categorical, a conditional float."""
    trial.suggest_float("radius", 1e-3, 1.0, log=True)
    trial.suggest_int("steps", 1, 3)
    kind = trial.suggest_categorical("kind", ["amp", "awp"])
    if kind == "awp":
        trial.suggest_float("inner_lr", 1e-3, 1.0, log=True)


def _outcome(trial: optuna.Trial, seed: int, pruned: float) -> dict[str, Any]:
    """How ``trial`` ends, drawn from its number: mostly complete (values rounded, so that
    some tie; now and then infinite), a share ``pruned`` pruned after a few reports (some NaN,
    some none, so that their ranks tie too), some failed."""
    rng = random.Random(seed * 100_003 + trial.number)
    p = trial.params
    value = round(-abs(math.log(p["radius"] / 0.05)) - 0.1 * p["steps"] + rng.gauss(0, 0.3), 1)
    draw = rng.random()
    if draw < pruned:
        for step in range(rng.randint(0, 3)):
            trial.report(float("nan") if rng.random() < 0.1 else value - step, step)
        return {"state": optuna.trial.TrialState.PRUNED}
    if draw < pruned + 0.05:
        return {"state": optuna.trial.TrialState.FAIL}
    if draw < pruned + 0.07:
        return {"values": -math.inf}
    return {"values": value}


def _run(
    study: optuna.Study,
    trials: int,
    seed: int,
    feasible: float | None = None,
    pruned: float = 0.15,
) -> list[dict]:
    """``trials`` trials asked 4 at a time before any is told (as Tune runs 4 at once); the
    parameters each was given. ``feasible``: a radius above it is infeasible."""
    out: list[dict] = []
    while len(out) < trials:
        asked = [study.ask() for _ in range(min(4, trials - len(out)))]
        for t in asked:
            _suggest(t)
            out.append(dict(t.params))
            if feasible is not None:
                t.set_constraint("radius", t.params["radius"] - feasible)
        for t in asked:
            study.tell(t, **_outcome(t, seed, pruned))
    return out


@pytest.mark.parametrize(
    ("direction", "kwargs", "feasible", "pruned"),
    [
        ("maximize", {"multivariate": True, "constant_liar": True}, None, 0.15),  # service's
        ("minimize", {"multivariate": True, "constant_liar": True}, None, 0.15),
        ("maximize", {}, None, 0.15),  # independent TPE, no liar
        ("maximize", {"multivariate": True, "constant_liar": True}, 0.3, 0.15),
        # so few complete trials that pruned ones enter the below set
        ("minimize", {"multivariate": True, "constant_liar": True}, None, 0.9),
        # so few feasible ones that infeasible ones do
        ("maximize", {"multivariate": True, "constant_liar": True}, 0.0015, 0.15),
    ],
)
def test_same_suggestions_as_optuna(
    direction: str, kwargs: dict, feasible: float | None, pruned: float
) -> None:
    seen = []
    for cls in (optuna.samplers.TPESampler, IncrementalTPESampler):
        sampler = cls(seed=3, n_startup_trials=4, **kwargs)
        study = optuna.create_study(direction=direction, sampler=sampler)
        seen.append(_run(study, 240, seed=7, feasible=feasible, pruned=pruned))
    assert seen[0] == seen[1]
    assert len({p["radius"] for p in seen[0]}) == 240  # TPE sampled, not a constant


def test_same_suggestions_across_a_pickled_restart() -> None:
    """Tune snapshots the searcher (study and sampler pickled together) and restores it: the
    restored sampler rebuilds its state and goes on as Optuna's would."""
    kwargs = {"seed": 5, "n_startup_trials": 4, "multivariate": True, "constant_liar": True}
    ref = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(**kwargs))
    expected = _run(ref, 160, seed=1)

    study = optuna.create_study(direction="maximize", sampler=IncrementalTPESampler(**kwargs))
    first = _run(study, 80, seed=1)
    ledger = study.sampler._ledger
    assert ledger is not None and len(ledger.trials) > 40
    blob = pickle.dumps(study)
    assert len(blob) < len(pickle.dumps((study, ledger))) - 1000  # the ledger is not in it
    restored = pickle.loads(blob)  # noqa: S301 (our own bytes)
    assert restored.sampler._ledger is None
    assert first + _run(restored, 80, seed=1) == expected


def _both(scenario: Any) -> None:
    """``scenario(sampler class)`` gives the same suggestions with Optuna's and with ours."""
    assert scenario(IncrementalTPESampler) == scenario(optuna.samplers.TPESampler)


def test_one_sampler_for_a_study_made_again_under_the_same_id(tmp_path: Path) -> None:
    """A study deleted and made again in one storage gets its id back: the sampler's kept
    trials are the first study's and must not rank the second's (found in review)."""

    def scenario(cls: type) -> list[dict]:
        storage = optuna.storages.get_storage(f"sqlite:///{tmp_path / cls.__name__}.db")
        sampler = cls(seed=0, n_startup_trials=5, constant_liar=True)
        first = optuna.create_study(storage=storage, sampler=sampler, study_name="s")
        first.optimize(lambda t: (t.suggest_float("x", -10, 10) - 3) ** 2, n_trials=6)
        optuna.delete_study(study_name="s", storage=storage)
        again = optuna.create_study(
            storage=storage, sampler=sampler, study_name="s", direction="maximize"
        )
        assert again._study_id == first._study_id
        again.optimize(lambda t: -((t.suggest_float("x", -10, 10) - 3) ** 2), n_trials=20)
        return [t.params for t in again.trials]

    _both(scenario)


def test_a_negative_gamma_and_integer_values_rank_as_optuna_ranks_them() -> None:
    def negative(cls: type) -> list[dict]:
        study = optuna.create_study(
            sampler=cls(seed=5, n_startup_trials=3, multivariate=True, gamma=lambda n: -2)
        )
        study.optimize(lambda t: t.suggest_float("x", -3, 3) ** 2, n_trials=15)
        return [t.params for t in study.trials]

    def integers(cls: type) -> list[dict]:
        # Values that differ beyond a float's precision, kept as ints by the storage.
        study = optuna.create_study(sampler=cls(seed=23, n_startup_trials=2, gamma=lambda n: 1))
        dist = {"x": optuna.distributions.FloatDistribution(-5, 5)}
        for x, value in [(4.0, 2**53 + 1), (-4.0, 2**53)]:
            study.add_trial(
                optuna.trial.create_trial(params={"x": x}, distributions=dist, value=value)
            )
        study.optimize(lambda t: t.suggest_float("x", -5, 5) and 2.0**55, n_trials=5)
        return [t.params for t in study.trials]

    _both(negative)
    _both(integers)


def test_threads_asking_at_once_get_suggestions() -> None:
    """``optimize(n_jobs=4)`` asks from four threads; with Python switching threads every
    10 microseconds, an unlocked ledger failed 20-35 of 1000 trials (found in review)."""
    study = optuna.create_study(sampler=IncrementalTPESampler(seed=0, n_startup_trials=5))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        study.optimize(
            lambda t: t.suggest_float("x", -5, 5) ** 2 + t.suggest_int("z", 0, 9),
            n_trials=400,
            n_jobs=4,
            catch=(Exception,),
        )
    finally:
        sys.setswitchinterval(interval)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 400


def test_pinned_to_the_optuna_it_was_read_from() -> None:
    # The sampler restates TPESampler._sample around its cached split: a new Optuna may
    # change that method, so the version is pinned (pyproject.toml) and checked here.
    assert version("optuna") == "5.0.0"
