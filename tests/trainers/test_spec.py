"""TrainSpec: strict keys, one-line errors, and PyYAML's traps closed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from trainers._yaml import YAMLError, load_yaml
from trainers.spec import TrainSpec, format_validation_error

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
            "inner_steps must be an integer >= 1",
        ),
        (
            BASE + "perturbation: {kind: sam, inner_steps: 2}\n",
            "unknown hyperparameter 'inner_steps'",
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
