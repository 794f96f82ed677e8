"""Every registered space samples only valid TrainSpecs; ranges and conditionals behave."""

from __future__ import annotations

import optuna
import pytest

import search_spaces
from search_spaces import spaces as S
from trainers import TrainSpec

BASE = TrainSpec.model_validate({"model": {"name": "cnn1d"}, "data": {"name": "mnist1d"}})


@pytest.mark.parametrize("name", search_spaces.SPACES.names())
@pytest.mark.parametrize("optimizer", [False, True])
def test_200_sampled_points_are_valid_train_specs(name, optimizer):
    ranges = search_spaces.resolve(name, optimizer=optimizer)
    fn = search_spaces.define_by_run(name, ranges)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    base = BASE.model_dump(mode="json")
    for _ in range(200):
        trial = study.ask()
        point = {**trial.params, **fn(trial)}
        spec = TrainSpec.model_validate(search_spaces.merge(base, point))
        assert spec.perturbation.kind == name
        for key, r in ranges.items():
            if key in trial.params:
                assert r.low <= trial.params[key] <= r.high
        study.tell(trial, 0.0)
    if optimizer:
        assert {"optim.lr", "optim.weight_decay"} <= set(study.trials[0].params)


def test_radius_and_inner_lr_are_log_uniform_and_steps_integer():
    for space in ("amp", "awp"):
        r = search_spaces.resolve(space)
        assert r["perturbation.radius"].log and r["perturbation.inner_lr"].log
        assert r["perturbation.inner_steps"].integer
        assert (r["perturbation.inner_steps"].low, r["perturbation.inner_steps"].high) == (1, 3)


def test_amp_range_reaches_far_below_the_paper():
    assert S.AMP_RADIUS.low <= 0.01 and S.AMP_RADIUS.high >= 0.5


def test_awp_searches_inner_lr_only_when_it_matters():
    ranges = search_spaces.resolve("awp")
    fn = search_spaces.define_by_run("awp", ranges)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        t = study.ask()
        fixed = fn(t)
        k = t.params["perturbation.inner_steps"]
        seen.add(k)
        assert ("perturbation.inner_lr" in t.params) == (k >= 2)
        if k == 1:
            assert fixed["perturbation.inner_lr"] == 0.01
        study.tell(t, 0.0)
    assert seen == {1, 2, 3}


def test_overrides_and_errors():
    r = search_spaces.resolve("amp", {"perturbation.radius": [0.001, 0.1]})
    assert (r["perturbation.radius"].low, r["perturbation.radius"].high) == (0.001, 0.1)
    with pytest.raises(ValueError, match="did you mean 'perturbation.radius'"):
        search_spaces.resolve("amp", {"perturbation.radiu": [0.1, 0.2]})
    with pytest.raises(ValueError, match="low must be <= high"):
        search_spaces.resolve("amp", {"perturbation.radius": [0.2, 0.1]})
    with pytest.raises(ValueError, match="log range needs low > 0"):
        search_spaces.resolve("amp", {"perturbation.radius": [0, 0.1]})
    with pytest.raises(ValueError, match="unknown search space 'amq'"):
        search_spaces.resolve("amq")


def test_merge_sets_dotted_keys_without_touching_the_base():
    base = {"perturbation": {"kind": "erm"}, "optim": {"lr": 0.1}}
    out = search_spaces.merge(base, {"perturbation.radius": 0.1, "optim.lr": 0.2})
    assert out == {"perturbation": {"kind": "erm", "radius": 0.1}, "optim": {"lr": 0.2}}
    assert base == {"perturbation": {"kind": "erm"}, "optim": {"lr": 0.1}}
