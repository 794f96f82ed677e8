"""The trainers on a CUDA GPU: the perturbations' multi-tensor code against the reference, the
training loop in every precision, and ``device: auto``.

Every test here is marked ``gpu`` and skipped on a machine without CUDA (tests/conftest.py);
``benchmarks/gpu_check.sh`` runs them. On CPU the same contracts are tested in
test_perturbations.py and test_loop.py; these check that nothing in them depends on the device
(``torch._foreach_*`` kernels, autocast, the fp16 loss scaler and cuDNN differ on CUDA).
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.trainers.test_loop import assert_follows_fp32, spec
from tests.trainers.test_perturbations import (
    CASES,
    KINDS,
    REFERENCES,
    assert_restores,
    closure_for,
    make,
)
from trainers import fit
from trainers.loop import resolve_device
from trainers.perturbations import build

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")


@pytest.fixture
def no_tf32():
    """Full fp32 convolutions and matrix products, so CUDA can be held to CPU's tolerances.

    cuDNN's convolutions use TF32 by default on Ampere and later (10 mantissa bits), which is
    a speed setting, not a property of the perturbations under test.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _on_cuda(model_name: str):
    model, x, y = make(model_name)
    return model.to(CUDA), x.to(CUDA), y.to(CUDA)


@pytest.mark.parametrize("model_name", ["mlp_bn", "cnn_bn", "cnn"])
@pytest.mark.parametrize(("kind", "hparams"), CASES, ids=lambda v: str(v))
def test_gradient_on_cuda_matches_the_cpu_reference(kind, hparams, model_name, no_tf32):
    cpu_model, x, y = make(model_name)
    expected = REFERENCES[kind](cpu_model, x, y, **hparams)  # per-tensor loops, on CPU
    model, xc, yc = _on_cuda(model_name)
    build(kind, model, **hparams).backward(closure_for(model, xc, yc, [0]))
    for n, p in model.named_parameters():
        assert p.grad.is_cuda
        torch.testing.assert_close(p.grad.cpu(), expected[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("kind", KINDS)
def test_weights_are_restored_bit_identically_on_cuda(kind):
    assert_restores(kind, *_on_cuda("cnn_bn"))


def test_device_auto_is_cuda_here():
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("kind", ["amp", "awp"])
def test_training_on_cuda_learns_in_every_precision(kind, precision):
    perturbation = {
        "amp": {"kind": "amp", "radius": 0.02, "inner_steps": 1, "inner_lr": 1.0},
        "awp": {"kind": "awp", "radius": 0.005},
    }[kind]
    s = spec(
        data={"name": "mnist1d", "num_train": 4000, "num_test": 1000},
        optim={"lr": 0.1},
        perturbation=perturbation,
        epochs=15,
        device="cuda",
        precision=precision,
    )
    result = fit(s)
    assert result.status == "finished", result.message
    final = result.final
    for key in ("train_loss", "val_loss", "test_loss"):
        assert math.isfinite(final[key]), (key, final)
    # chance is 0.1; the same setting on CPU in fp32 is tested above 0.5 in test_loop.py
    assert final["test_acc"] > 0.5, final


def test_bf16_on_cuda_follows_fp32(no_tf32):
    assert_follows_fp32("bf16", rel=5e-2, device="cuda")


def test_cuda_and_cpu_train_alike_in_fp32(no_tf32):
    """Same seed, same batches: two epochs on CUDA end near where CPU does."""
    on_cpu = fit(spec(epochs=2)).history
    on_gpu = fit(spec(epochs=2, device="cuda")).history
    assert [m["train_loss"] for m in on_gpu] == pytest.approx(
        [m["train_loss"] for m in on_cpu], rel=2e-2
    )
