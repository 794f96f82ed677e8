"""The training loop on real (generated) data: learning, resume, divergence, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from trainers import TrainSpec, fit
from trainers.checkpoint import load_checkpoint, save_checkpoint
from trainers.loop import lr_factor

REPO = Path(__file__).resolve().parents[2]


def spec(**overrides) -> TrainSpec:
    base = {
        "model": {"name": "cnn1d"},
        "data": {"name": "mnist1d", "num_train": 1000, "num_test": 500},
        "optim": {"lr": 0.05},
        "perturbation": {"kind": "amp", "radius": 0.02, "inner_steps": 1, "inner_lr": 1.0},
        "epochs": 3,
        "batch_size": 100,
        "device": "cpu",
    }
    base.update(overrides)
    return TrainSpec.model_validate(base)


def test_mnist1d_amp_learns_far_above_chance():
    s = spec(
        data={"name": "mnist1d", "num_train": 4000, "num_test": 1000}, epochs=15, optim={"lr": 0.1}
    )
    result = fit(s)
    assert result.status == "finished"
    assert len(result.history) == 15
    final = result.final
    assert final["test_acc"] > 0.5, final  # chance is 0.1
    assert final["closure_passes"] == 2 * math.ceil(4000 / 100)  # AMP K=1: two passes a step
    assert final["gen_gap"] == pytest.approx(final["train_acc"] - final["test_acc"])
    for key in ("train_loss", "test_loss", "epoch_seconds", "images_per_s", "lr"):
        assert math.isfinite(final[key])


@pytest.mark.parametrize("kind", ["erm", "sam", "amp", "awp"])
def test_resume_is_bit_identical(kind, tmp_path):
    hp = {
        "erm": {},
        "sam": {"radius": 0.05},
        "amp": {"radius": 0.02, "inner_steps": 2},
        "awp": {"radius": 0.01, "inner_steps": 2},
    }[kind]
    extra = (
        {
            "adversarial": {
                "eps": 0.05,
                "steps": 2,
                "step_size": 0.02,
                "eval_steps": 2,
                "eval_examples": 100,
            }
        }
        if kind == "awp"
        else {}
    )
    s = spec(
        perturbation={"kind": kind, **hp},
        model={"name": "cnn1d", "args": {"batchnorm": True}},
        data={"name": "mnist1d", "num_train": 300, "num_test": 100},
        **extra,
    )

    full = fit(s, on_epoch_end=lambda m, save: save(tmp_path / "full") and None)
    # interrupted after epoch 1: stop, then resume from that checkpoint
    first = fit(s, on_epoch_end=lambda m, save: bool(save(tmp_path / "part")))
    assert first.status == "stopped" and len(first.history) == 1
    resumed = fit(
        s, resume=tmp_path / "part", on_epoch_end=lambda m, save: save(tmp_path / "part") and None
    )
    assert resumed.status == "finished"
    a = load_checkpoint(tmp_path / "full")["model"]
    b = load_checkpoint(tmp_path / "part")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    drop = {"train_seconds", "epoch_seconds", "images_per_s"}
    strip = [{k: v for k, v in m.items() if k not in drop} for m in full.history]
    assert strip == [{k: v for k, v in m.items() if k not in drop} for m in resumed.history]


def test_resume_refuses_a_checkpoint_of_another_spec(tmp_path):
    s = spec(epochs=1)
    fit(s, on_epoch_end=lambda m, save: save(tmp_path) and None)
    other = spec(epochs=2, optim={"lr": 0.5})
    with pytest.raises(ValueError, match="optim"):
        fit(other, resume=tmp_path)


def test_diverging_config_ends_as_diverged():
    s = spec(optim={"lr": 1e6, "momentum": 0.0}, perturbation={"kind": "erm"}, epochs=5)
    result = fit(s)
    assert result.status == "diverged"
    assert "loss became" in result.message and "epoch 1" in result.message
    assert result.final["diverged"] == 1.0
    assert len(result.history) == 1


def test_half_written_checkpoint_is_never_loaded(tmp_path):
    good = save_checkpoint(tmp_path, {"epoch": 1})
    # what a process killed in the middle of torch.save leaves behind
    (tmp_path / ".checkpoint.pt.tmp-12345").write_bytes(b"PK\x03\x04 truncated")
    assert load_checkpoint(tmp_path) == {"epoch": 1}
    assert good == tmp_path / "checkpoint.pt"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_follows_fp32_on_cpu(precision):
    ref = fit(spec(epochs=2)).history
    got = fit(spec(precision=precision, epochs=2)).history
    assert [m["train_loss"] for m in got] == pytest.approx([m["train_loss"] for m in ref], rel=2e-2)
    # autocast really ran in reduced precision: the losses are not bit-equal to fp32's
    assert [m["test_loss"] for m in got] != [m["test_loss"] for m in ref]


def test_awp_reports_robust_accuracy():
    s = spec(
        perturbation={"kind": "awp", "radius": 0.01},
        adversarial={
            "eps": 0.05,
            "steps": 2,
            "step_size": 0.025,
            "eval_steps": 3,
            "eval_examples": 200,
        },
        epochs=1,
    )
    m = fit(s).final
    assert 0.0 <= m["robust_acc"] <= m["test_acc"] + 1e-9


def test_lr_schedules():
    c = spec(epochs=10)
    assert lr_factor(c, 0) == 1.0 and lr_factor(c, 10) == pytest.approx(0.0)
    assert lr_factor(c, 5) == pytest.approx(0.5)
    m = spec(epochs=200, schedule={"name": "multistep", "milestones": [100, 150]})
    assert [lr_factor(m, t) for t in (99.9, 100, 150)] == pytest.approx([1, 0.1, 0.01])
    w = spec(epochs=10, schedule={"name": "constant", "warmup_epochs": 2})
    assert lr_factor(w, 1) == 0.5 and lr_factor(w, 3) == 1.0


def test_python_m_trainers_prints_one_json_line(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(spec(epochs=2).model_dump(mode="json")))
    proc = subprocess.run(
        [sys.executable, "-m", "trainers", str(cfg)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["status"] == "finished" and out["epoch"] == 2 and out["test_acc"] > 0.1


def test_python_m_trainers_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {name: cnn1d}\ndata: {name: mnist1d}\nprecision: fp8\n")
    proc = subprocess.run(
        [sys.executable, "-m", "trainers", str(cfg)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "precision" in proc.stderr and "bf16" in proc.stderr and "Traceback" not in proc.stderr
