"""Every registered space samples only valid TrainSpecs; ranges and conditionals behave."""

from __future__ import annotations

import optuna
import pytest

import search_spaces
from search_spaces import spaces as S
from trainers import TrainSpec
from trainers.perturbations import PERTURBATIONS

BASE = TrainSpec.model_validate({"model": {"name": "cnn1d"}, "data": {"name": "mnist1d"}})


@pytest.mark.parametrize("name", search_spaces.SPACES.names())
@pytest.mark.parametrize("optimizer", [False, True])
def test_200_sampled_points_are_valid_train_specs(name, optimizer):
    ranges = search_spaces.resolve(name, optimizer=optimizer)
    fn = search_spaces.define_by_run(name, ranges)
    kind = search_spaces.SPACES.get(name).kind
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(200):
        trial = study.ask()
        point = {**trial.params, **fn(trial)}
        assert point["perturbation.kind"] == kind
        spec = BASE.with_overrides(point)
        assert spec.perturbation.kind == kind
        for key, value in point.items():  # every searched or fixed value reached the spec
            section, field = key.split(".")
            assert getattr(getattr(spec, section), field) == value, key
        for key, r in ranges.items():
            if key in trial.params:
                assert r.low <= trial.params[key] <= r.high
        study.tell(trial, 0.0)
    if optimizer:
        assert {"optim.lr", "optim.weight_decay"} <= set(study.trials[0].params)


def test_every_kind_has_its_own_space():
    for kind in PERTURBATIONS.names():
        name = search_spaces.space_for_kind(kind)
        assert name == kind and search_spaces.SPACES.get(name).kind == kind
    assert search_spaces.space_for_kind("sam", adaptive=True) == "asam"


def test_space_for_kind_errors():
    with pytest.raises(ValueError, match="unknown perturbation kind 'amq'.*did you mean 'amp'"):
        search_spaces.space_for_kind("amq")
    with pytest.raises(ValueError, match="adaptive applies to perturbation kind 'sam' only"):
        search_spaces.space_for_kind("amp", adaptive=True)


def test_a_space_must_name_a_real_kind():
    from search_spaces._core import register

    with pytest.raises(ValueError, match="unknown perturbation kind 'amq'"):
        register("bad", {}, kind="amq")
    assert "bad" not in search_spaces.SPACES


def test_asam_has_its_own_radius_range_and_sets_adaptive():
    asam, sam = search_spaces.SPACES.get("asam"), search_spaces.SPACES.get("sam")
    assert asam.kind == sam.kind == "sam"
    r = asam.ranges["perturbation.radius"]
    assert r is S.ASAM_RADIUS and r != sam.ranges["perturbation.radius"]
    assert r.low <= 0.5 and r.high >= 2.0  # Kwon et al. 2021: about 0.5-2
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for name, adaptive in (("asam", True), ("sam", False)):
        t = study.ask()
        fixed = search_spaces.define_by_run(name, search_spaces.resolve(name))(t)
        assert fixed == {"perturbation.kind": "sam", "perturbation.adaptive": adaptive}
        study.tell(t, 0.0)


def test_radius_and_inner_lr_are_log_uniform_and_steps_integer():
    for space in ("amp", "awp"):
        r = search_spaces.resolve(space)
        assert r["perturbation.radius"].log and r["perturbation.inner_lr"].log
        assert r["perturbation.inner_steps"].integer
    steps = search_spaces.resolve("amp")["perturbation.inner_steps"]
    assert (steps.low, steps.high) == (1, 3)


def test_amp_range_reaches_far_below_the_paper():
    assert S.AMP_RADIUS.low <= 0.01 and S.AMP_RADIUS.high >= 0.5


def awp_points(overrides=None, n=60):
    ranges = search_spaces.resolve("awp", overrides)
    fn = search_spaces.define_by_run("awp", ranges)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        t = study.ask()
        fixed = fn(t)
        yield t, fixed
        study.tell(t, 0.0)


def test_awp_takes_one_proxy_step_by_default_like_the_paper():
    for t, fixed in awp_points():
        assert t.params["perturbation.inner_steps"] == 1
        assert "perturbation.inner_lr" not in t.params
        assert fixed["perturbation.inner_lr"] == S.AWP_INNER_LR_FIXED


def test_awp_extension_to_more_steps_searches_inner_lr_only_when_it_matters():
    seen = set()
    for t, fixed in awp_points({"perturbation.inner_steps": [1, 3]}):
        k = t.params["perturbation.inner_steps"]
        seen.add(k)
        assert ("perturbation.inner_lr" in t.params) == (k >= 2)
        if k == 1:
            assert fixed["perturbation.inner_lr"] == S.AWP_INNER_LR_FIXED
    assert seen == {1, 2, 3}


def test_sample_adds_the_kind_and_the_constants():
    ranges = search_spaces.resolve("awp")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    point = search_spaces.sample("awp", study.ask(), ranges)
    assert point["perturbation.kind"] == "awp" and point["perturbation.inner_steps"] == 1
    assert BASE.with_overrides(point).perturbation.kind == "awp"


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


def test_search_spaces_uses_only_public_trainers_names():
    import ast
    import pathlib

    root = pathlib.Path(search_spaces.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainers"):
                parts = node.module.split(".") + [a.name for a in node.names]
                assert not any(p.startswith("_") for p in parts), f"{path.name}: {node.module}"
