"""TrainSpec: strict keys, one-line errors, and PyYAML's traps closed."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from trainers._yaml import YAMLError, load_yaml
from trainers.spec import (
    PERTURBATION_SPECS,
    AMPSpec,
    AWPSpec,
    ERMSpec,
    SAMSpec,
    TrainSpec,
    format_validation_error,
    parse_perturbation,
)

BASE = "model: {name: cnn1d}\ndata: {name: mnist1d}\n"


def error(text: str) -> str:
    with pytest.raises((ValidationError, ValueError)) as info:
        TrainSpec.model_validate(load_yaml(text))
    return format_validation_error(info.value, TrainSpec)


def test_scientific_notation_is_a_float():
    s = TrainSpec.model_validate(load_yaml(BASE + "optim: {lr: 1e-3, weight_decay: 5E-4}\n"))
    assert s.optim.lr == 0.001 and s.optim.weight_decay == 0.0005


def test_duplicate_key_is_refused():
    with pytest.raises(YAMLError, match="duplicate key 'lr'"):
        load_yaml(BASE + "optim:\n  lr: 0.1\n  lr: 0.2\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE + "epoch: 3\n", "epoch: unknown key; did you mean 'epochs'?"),
        (BASE + "optim: {lrr: 0.1}\n", "optim.lrr: unknown key; did you mean 'lr'?"),
        (BASE + "precision: fp8\n", "precision: allowed: 'fp32', 'bf16' or 'fp16'"),
        (BASE + "perturbation: {kind: amq}\n", "did you mean 'amp'"),
        (
            BASE + "perturbation: {kind: amp, inner_steps: 0}\n",
            "perturbation.inner_steps: Input should be greater than or equal to 1, but got 0",
        ),
        (
            BASE + "perturbation: {kind: sam, inner_steps: 2}\n",
            "perturbation.inner_steps: unknown key for kind 'sam'",
        ),
        (
            BASE + "perturbation: {kind: erm, radius: 0.1}\n",
            "perturbation.radius: unknown key for kind 'erm' (allowed: kind, warmup_epochs,",
        ),
        (BASE + "perturbation: {radius: 0.1}\n", "perturbation.radius: unknown key for kind 'erm'"),
        (
            BASE + "perturbation: {kind: amp, radiuss: 0.1}\n",
            "perturbation.radiuss: unknown key for kind 'amp'; did you mean 'radius'?",
        ),
        (BASE + "perturbation: {kind: sam, radius: -1}\n", "perturbation.radius: Input should"),
        (BASE + "perturbation: {kind: sam, adaptive: 'yes'}\n", "perturbation.adaptive: "),
        (BASE + "perturbation: {kind: awp, inner_lr: .inf}\n", "perturbation.inner_lr: "),
        (
            BASE + "perturbation: {kind: amp, bn_update: every}\n",
            "perturbation.bn_update: allowed: 'first_pass' or 'all_passes'",
        ),
        ("model: {name: resnet18}\ndata: {name: mnist1d}\n", "unknown model 'resnet18'"),
        ("model: {name: cnn1d}\ndata: {name: cifar11}\n", "did you mean 'cifar10'"),
        (BASE + "epochs: 10\nschedule: {name: multistep, milestones: [20]}\n", "milestones"),
    ],
)
def test_errors_are_one_line_and_name_the_field(text, expected):
    msg = error(text)
    assert expected in msg
    assert "\n" not in msg


def test_awp_turns_on_pgd_with_paper_defaults():
    s = TrainSpec.model_validate(load_yaml(BASE + "perturbation: {kind: awp}\n"))
    assert s.adversarial is not None
    assert (s.adversarial.eps, s.adversarial.steps, s.adversarial.step_size) == (
        8 / 255,
        10,
        2 / 255,
    )


# -- the perturbation: one spec model per kind -----------------------------------------------


def test_no_perturbation_or_no_kind_means_erm():
    assert TrainSpec.model_validate(load_yaml(BASE)).perturbation == ERMSpec()
    s = TrainSpec.model_validate(load_yaml(BASE + "perturbation: {warmup_epochs: 2}\n"))
    assert isinstance(s.perturbation, ERMSpec) and s.perturbation.warmup_epochs == 2


@pytest.mark.parametrize(
    ("kind", "cls", "expected"),
    [
        ("erm", ERMSpec, {}),
        ("sam", SAMSpec, {"radius": 0.05, "adaptive": False}),
        ("amp", AMPSpec, {"radius": 0.5, "inner_steps": 1, "inner_lr": 1.0}),
        ("awp", AWPSpec, {"radius": 0.01, "inner_steps": 1, "inner_lr": 0.01}),
    ],
)
def test_each_kind_dumps_every_field_with_its_real_default(kind, cls, expected):
    s = TrainSpec.model_validate(load_yaml(BASE + f"perturbation: {{kind: {kind}}}\n"))
    assert type(s.perturbation) is cls
    common = {"kind": kind, "warmup_epochs": 0, "bn_update": "first_pass"}
    assert s.model_dump(mode="json")["perturbation"] == {**common, **expected}
    # an exported spec round-trips to the same spec
    assert TrainSpec.model_validate(s.model_dump(mode="json")) == s


def test_every_registered_kind_has_a_spec():
    from trainers.perturbations import PERTURBATIONS

    assert set(PERTURBATION_SPECS) == set(PERTURBATIONS.names())


def test_perturbation_assignment_is_validated():
    s = TrainSpec.model_validate(load_yaml(BASE + "perturbation: {kind: amp}\n"))
    with pytest.raises(ValidationError):
        s.perturbation.radius = -1.0
    s.perturbation = {"kind": "sam", "radius": 0.1}
    assert isinstance(s.perturbation, SAMSpec) and s.perturbation.radius == 0.1


def test_hyperparameters_are_not_coerced_from_strings_or_bools():
    for data in ({"kind": "sam", "radius": "0.05"}, {"kind": "amp", "inner_steps": True}):
        with pytest.raises(ValueError, match="perturbation\\."):
            parse_perturbation(data)
    assert parse_perturbation({"kind": "sam", "radius": 1}).radius == 1.0  # int is a number


def test_parse_perturbation_errors_are_one_line():
    with pytest.raises(ValueError) as info:
        parse_perturbation({"kind": "amp", "radius": -1.0, "inner_lr": 0})
    assert str(info.value) == (
        "perturbation.radius: Input should be greater than or equal to 0, but got -1.0 (and 1 more)"
    )


# -- with_overrides ---------------------------------------------------------------------------


def base() -> TrainSpec:
    return TrainSpec.model_validate(load_yaml(BASE))


def test_with_overrides_sets_dotted_keys_and_leaves_self_alone():
    s = base()
    out = s.with_overrides(
        {"perturbation.kind": "amp", "perturbation.radius": 0.02, "optim.lr": 0.2}
    )
    assert out.perturbation == AMPSpec(radius=0.02) and out.optim.lr == 0.2
    assert s.perturbation == ERMSpec() and s.optim.lr == 0.1
    assert s.with_overrides({}) == s


def test_with_overrides_applies_kind_first_whatever_the_order():
    out = base().with_overrides({"perturbation.radius": 0.3, "perturbation.kind": "sam"})
    assert out.perturbation == SAMSpec(radius=0.3)


def test_a_new_kind_starts_from_its_defaults_keeping_the_common_fields():
    s = TrainSpec.model_validate(
        load_yaml(
            BASE + "perturbation: {kind: amp, radius: 0.02, inner_steps: 2, warmup_epochs: 1,"
            " bn_update: all_passes}\n"
        )
    )
    out = s.with_overrides({"perturbation.kind": "sam"})
    assert out.perturbation == SAMSpec(warmup_epochs=1, bn_update="all_passes")
    # the same kind keeps what the base set
    same = s.with_overrides({"perturbation.kind": "amp", "perturbation.inner_lr": 0.5})
    assert same.perturbation == AMPSpec(
        radius=0.02, inner_steps=2, inner_lr=0.5, warmup_epochs=1, bn_update="all_passes"
    )


def test_with_overrides_fills_an_unset_section_and_a_dict_field():
    out = base().with_overrides({"adversarial.eps": 0.1, "model.args.channels": 8})
    assert out.adversarial is not None and out.adversarial.eps == 0.1
    assert out.adversarial.steps == 10 and out.model.args == {"channels": 8}
    assert base().with_overrides({"perturbation.kind": "awp"}).adversarial is not None


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        ({"optim.lrr": 0.1}, "optim.lrr: unknown key; did you mean 'lr'?"),
        ({"epoch": 3}, "epoch: unknown key; did you mean 'epochs'?"),
        ({"perturbation.radius": 0.1}, "perturbation.radius: unknown key for kind 'erm'"),
        ({"perturbation.kind": "amq"}, "unknown perturbation kind 'amq'"),
        ({"epochs.x": 1}, "epochs.x: unknown key (epochs is a value, not a section)"),
        ({"optim.lr": -1.0}, "optim.lr: Input should be greater than 0, but got -1.0"),
        (
            {"perturbation.kind": "awp", "perturbation.inner_steps": 0},
            "perturbation.inner_steps: Input should be greater than or equal to 1",
        ),
    ],
)
def test_with_overrides_errors_are_one_line_value_errors(point, expected):
    with pytest.raises(ValueError) as info:
        base().with_overrides(point)
    assert not isinstance(info.value, ValidationError)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model: {name: cnn1d, args: {chanels: 8}}\ndata: {name: mnist1d}\n",
            "unknown cnn1d argument 'chanels'; allowed: batchnorm, channels",
        ),
        (BASE + "device: bogus\n", "device: must be auto, cpu, cuda, cuda:N or mps, but got"),
        (BASE + "seed: 1000000000000000000000000000000\n", "seed: Input should be less than"),
    ],
)
def test_a_bad_model_option_device_or_seed_is_refused_without_pytorch(text, message):
    """Checked by the spec, where a sweep's driver has not loaded PyTorch, not by a trial."""
    import subprocess
    import sys

    code = (
        "import sys; from trainers._yaml import load_yaml; from trainers.spec import "
        "TrainSpec, format_validation_error; from pydantic import ValidationError\n"
        "try:\n"
        f"    TrainSpec.model_validate(load_yaml({text!r}))\n"
        "except ValidationError as e:\n"
        "    print(format_validation_error(e))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert message in out[0] and out[1] == "False"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BASE + "perturbation: {kind: amp, inner_steps: 10000000}\n", "less than or equal to 100"),
        (BASE + "adversarial: {steps: 100000}\n", "less than or equal to 1000"),
        (BASE + "batch_size: 10000000\n", "less than or equal to 65536"),
        (
            "model: {name: mlp}\ndata: {name: synthetic, shape: [100000, 100000, 1000]}\n",
            "shape must hold at most 16777216 values per example",
        ),
        (
            "model: {name: mlp}\ndata: {name: synthetic, shape: [3, 1024, 1024]}\n",
            "times the shape's size must be at most 536870912 values for synthetic data",
        ),
    ],
)
def test_sizes_that_would_run_for_days_or_fill_memory_are_refused(text, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        TrainSpec.model_validate(load_yaml(text))
