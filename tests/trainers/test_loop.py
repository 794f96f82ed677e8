"""The training loop on real (generated) data: learning, honest metrics, resume, divergence,
the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import trainers
from trainers import EPOCH_METRICS, FINAL_METRICS, TrainSpec, fit, loop
from trainers.checkpoint import load_checkpoint, save_checkpoint
from trainers.loop import lr_factor
from trainers.precision import LossScaler

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
    # AMP K=1: two passes a step, on the 3600 examples left after the 10% validation split
    assert final["closure_passes"] == 2 * math.ceil(3600 / 100)
    assert final["gen_gap"] == pytest.approx(final["train_acc"] - final["val_acc"])
    assert abs(final["val_acc"] - final["test_acc"]) < 0.1  # validation estimates the test
    for key in ("train_loss", "val_loss", "test_loss", "epoch_seconds", "images_per_s", "lr"):
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
        test_at_best_val=True,
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
    best_a = load_checkpoint(tmp_path / "full")["best_val"]
    best_b = load_checkpoint(tmp_path / "part")["best_val"]
    assert (best_a["epoch"], best_a["val_acc"]) == (best_b["epoch"], best_b["val_acc"])
    for k in best_a["state"]:
        assert torch.equal(best_a["state"][k], best_b["state"][k]), k
    drop = {"train_seconds", "epoch_seconds", "images_per_s", "train_seconds_total"}
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
    assert_follows_fp32(precision, rel=2e-2)


def assert_follows_fp32(precision: str, rel: float, **overrides) -> None:
    """Two epochs in ``precision`` train like two in fp32 (within ``rel``), yet not bit-equal
    (also run on CUDA, test_cuda.py)."""
    ref = fit(spec(epochs=2, **overrides)).history
    got = fit(spec(precision=precision, epochs=2, **overrides)).history
    assert [m["train_loss"] for m in got] == pytest.approx([m["train_loss"] for m in ref], rel=rel)
    # autocast really ran in reduced precision: the losses are not bit-equal to fp32's
    assert [m["val_loss"] for m in got] != [m["val_loss"] for m in ref]


def test_fp16_skipped_steps_leave_all_passes_bn_statistics_finite(monkeypatch):
    """An fp16 step that overflows is skipped; under all_passes its perturbed pass (at NaN
    weights) must not leave NaN in the running statistics, which eval mode would read."""
    skipped: list[bool] = []

    class Overflowing(LossScaler):
        """Starts at 2^24, so the first few fp16 backward passes overflow."""

        def __init__(self, device: torch.device) -> None:
            super().__init__(device, init_scale=2.0**24)

        def step(self, optimizer: torch.optim.Optimizer) -> bool:
            ok = super().step(optimizer)
            skipped.append(not ok)
            return ok

    monkeypatch.setattr(loop, "LossScaler", Overflowing)
    s = spec(
        model={"name": "cnn1d", "args": {"batchnorm": True}},
        perturbation={"kind": "amp", "radius": 0.02, "bn_update": "all_passes"},
        precision="fp16",
        epochs=1,
    )
    result = fit(s)
    assert any(skipped) and not all(skipped)  # overflowed steps, then training
    assert result.status == "finished"
    for m in result.history:
        assert math.isfinite(m["val_loss"]), m


def test_awp_reports_robust_accuracy():
    s = spec(
        perturbation={"kind": "awp", "radius": 0.01},
        adversarial={
            "eps": 0.05,
            "steps": 2,
            "step_size": 0.025,
            "eval_steps": 3,
            "eval_examples": 50,
        },
        epochs=2,
    )
    history = fit(s).history
    assert all(0.0 <= m["val_robust_acc"] <= m["val_acc"] + 1e-9 for m in history)
    assert "test_robust_acc" not in history[0]
    m = history[-1]
    assert 0.0 <= m["test_robust_acc"] <= m["test_acc"] + 1e-9


class _Constant(torch.nn.Module):
    """Predicts class 0 for every input, whatever an attack does."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10, dtype=x.dtype)
        logits[:, 0] = 1
        return logits + self.w * x.flatten(1).sum(1, keepdim=True)


def test_robust_accuracy_attacks_exactly_the_examples_asked_in_fp32(monkeypatch):
    s = spec(
        precision="bf16",
        perturbation={"kind": "awp", "radius": 0.01},
        adversarial={"eps": 0.05, "steps": 1, "step_size": 0.05, "eval_steps": 1},
    )
    b = trainers.data.build(s.data, batch_size=100, device="cpu", seed=0)
    used = []
    real_autocast = loop.autocast

    def spy(precision, device):
        used.append(precision)
        return real_autocast(precision, device)

    monkeypatch.setattr(loop, "autocast", spy)
    cpu, fmt = torch.device("cpu"), torch.preserve_format
    acc = loop.robust_accuracy(_Constant(), b.test, s, cpu, fmt, None, None, examples=150)
    y = torch.cat([yb for _, yb in b.test])
    assert acc == int((y[:150] == 0).sum()) / 150  # 150, not two whole batches of 100
    assert used == ["fp32", "fp32"]  # the AWP paper's evaluation, whatever the training's
    used.clear()
    s_train = s.model_copy(
        update={"adversarial": s.adversarial.model_copy(update={"eval_precision": "train"})}
    )
    loop.robust_accuracy(_Constant(), b.test, s_train, cpu, fmt, None, None)
    assert used == ["bf16"] * 5  # examples=None: all 500 test examples


# --- honest metrics ------------------------------------------------------------------------


def test_the_test_set_is_measured_once_after_the_last_epoch():
    seen = []
    small = {"name": "mnist1d", "num_train": 300, "num_test": 100}
    result = fit(
        spec(epochs=3, data=small), on_epoch_end=lambda m, save: seen.append(dict(m)) and None
    )
    assert seen == result.history and result.final == seen[-1]
    for m in seen:
        assert set(m) <= EPOCH_METRICS | FINAL_METRICS, set(m) - EPOCH_METRICS - FINAL_METRICS
        assert {"val_loss", "val_acc", "gen_gap"} <= set(m)  # validation every epoch
        assert m["gen_gap"] == pytest.approx(m["train_acc"] - m["val_acc"])
    for m in seen[:-1]:
        assert not set(m) & FINAL_METRICS and not any(k.startswith("test_") for k in m)
    last = seen[-1]
    assert {"test_loss", "test_acc", "train_seconds_total", "closure_passes_total"} <= set(last)
    assert "best_val_epoch" not in last  # test_at_best_val is off
    assert last["train_seconds_total"] == pytest.approx(sum(m["train_seconds"] for m in seen))
    assert last["closure_passes_total"] == sum(m["closure_passes"] for m in seen)


def test_metric_names_are_declared_once():
    assert not EPOCH_METRICS & FINAL_METRICS
    assert trainers.test_metric_for("val_acc") == "test_acc"
    assert trainers.test_metric_for("val_loss") == "test_loss"
    assert trainers.test_metric_for("val_robust_acc") == "test_robust_acc"
    assert trainers.test_metric_for("train_acc") is None
    for val in ("val_acc", "val_loss", "val_robust_acc"):
        assert val in EPOCH_METRICS and trainers.test_metric_for(val) in FINAL_METRICS


def test_without_a_validation_split_there_are_no_val_metrics():
    s = spec(
        epochs=2, data={"name": "mnist1d", "num_train": 1000, "num_test": 500, "val_fraction": 0}
    )
    history = fit(s).history
    assert history[0]["closure_passes"] == 2 * 10  # the whole pool of 1000 is trained on
    for m in history:
        assert not any(k.startswith("val_") for k in m) and "gen_gap" not in m
    assert "test_acc" in history[-1] and "test_acc" not in history[0]
    with pytest.raises(ValueError, match="test_at_best_val needs a validation split"):
        fit(s.model_copy(update={"test_at_best_val": True}))


_EVALUATE = loop.evaluate


def _script_val_acc(monkeypatch, n_val: int, accs: list[float]) -> None:
    """Make the validation accuracies of the next epochs ``accs``; everything else is real."""
    scripted = iter(accs)

    def evaluate(net, loader, *args):
        loss, acc = _EVALUATE(net, loader, *args)
        return (loss, next(scripted)) if loader.n == n_val else (loss, acc)

    monkeypatch.setattr(loop, "evaluate", evaluate)


def test_test_at_best_val_reports_the_best_epoch_and_survives_a_resume(tmp_path, monkeypatch):
    s = spec(
        model={"name": "cnn1d", "args": {"batchnorm": True}},  # buffers must be kept too
        data={"name": "mnist1d", "num_train": 300, "num_test": 100},  # 30 validation examples
        test_at_best_val=True,
    )

    def keep_every_epoch(m, save):
        save(tmp_path / f"e{m['epoch']}")

    _script_val_acc(monkeypatch, 30, [0.5, 0.9, 0.7, 0.9])  # epoch 2; a tie later is no better
    full = fit(s.model_copy(update={"epochs": 4}), on_epoch_end=keep_every_epoch)
    final = full.final
    assert final["best_val_epoch"] == 2
    assert all("best_val_epoch" not in m for m in full.history[:-1])
    # The reported numbers are those of epoch 2's weights and BatchNorm statistics.
    b = trainers.data.build(s.data, batch_size=100, device="cpu", seed=0)
    model = trainers.models.build("cnn1d", num_classes=10, in_shape=b.in_shape, batchnorm=True)
    model.load_state_dict(load_checkpoint(tmp_path / "e2")["model"])
    loss, acc = _EVALUATE(model, b.test, s, torch.device("cpu"), torch.preserve_format)
    assert (final["test_loss_at_best_val"], final["test_acc_at_best_val"]) == (loss, acc)
    assert final["test_acc_at_best_val"] != final["test_acc"] or loss != final["test_loss"]

    # Stopped after epoch 2 (the best), resumed for 3 and 4: the best weights come back from
    # the checkpoint, and every metric equals the uninterrupted run's.
    _script_val_acc(monkeypatch, 30, [0.5, 0.9])
    first = fit(
        s.model_copy(update={"epochs": 4}),
        on_epoch_end=lambda m, save: m["epoch"] == 2 and bool(save(tmp_path / "part")),
    )
    assert first.status == "stopped" and "test_acc" not in first.final
    _script_val_acc(monkeypatch, 30, [0.7, 0.9])
    resumed = fit(s.model_copy(update={"epochs": 4}), resume=tmp_path / "part")
    drop = {"train_seconds", "epoch_seconds", "images_per_s", "train_seconds_total"}
    strip = [{k: v for k, v in m.items() if k not in drop} for m in full.history]
    assert strip == [{k: v for k, v in m.items() if k not in drop} for m in resumed.history]


def test_resume_with_more_epochs_keeps_test_metrics_on_the_last_epoch_only(tmp_path):
    fit(spec(epochs=1), on_epoch_end=lambda m, save: save(tmp_path) and None)
    longer = fit(spec(epochs=2), resume=tmp_path)
    assert "test_acc" not in longer.history[0] and "test_acc" in longer.history[1]
    assert longer.final["closure_passes_total"] == 2 * longer.final["closure_passes"]


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
    assert out["status"] == "finished" and out["epoch"] == 2
    # The final epoch's metrics: validation, then the test set measured once, and the totals.
    assert {"val_acc", "test_acc", "test_loss", "train_seconds_total"} <= set(out)
    assert 0 <= out["test_acc"] <= 1 and out["closure_passes_total"] == 2 * 2 * 9


def test_python_m_trainers_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {name: cnn1d}\ndata: {name: mnist1d}\nprecision: fp8\n")
    proc = subprocess.run(
        [sys.executable, "-m", "trainers", str(cfg)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "precision" in proc.stderr and "bf16" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_with_fewer_epochs_than_the_checkpoint_is_refused(tmp_path):
    # It used to "finish" at once, reporting the checkpoint's later epoch and no test set.
    fit(spec(epochs=2), on_epoch_end=lambda m, save: save(tmp_path) and None)
    with pytest.raises(ValueError, match="at epoch 2, past epochs 1; resume it with epochs >= 2"):
        fit(spec(epochs=1), resume=tmp_path)
