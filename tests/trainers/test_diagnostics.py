"""Tests for ``trainers.diagnostics``: the top Hessian eigenvalue against an explicit Hessian."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from trainers.diagnostics import _top_eigenvalue, hessian_top_eigenvalue


def tiny_model(dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """A net with BatchNorm and dropout, so eval mode matters; 5-6-3, 63 parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3)
    ).to(dtype)
    # Move the running statistics away from (0, 1), so eval-mode BN differs from train mode
    # and from an untouched BN.
    with torch.no_grad():
        for _ in range(3):
            model((torch.randn(32, 5, dtype=torch.float64) * 2 + 1).to(dtype))
    return model


def batch(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    # Drawn in float64 and cast, so both precisions see the same batch.
    x = torch.randn(16, 5, generator=generator, dtype=torch.float64).to(dtype)
    return x, torch.randint(0, 3, (16,), generator=generator)


def explicit_spectrum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eigenvalues, ascending, of the Hessian built entry by entry, with the model in eval mode."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    buffers = dict(model.named_buffers())

    def loss(w: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = w[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        logits = torch.func.functional_call(model, {**params, **buffers}, (x,))
        return F.cross_entropy(logits, y)

    was_training = model.training
    model.eval()
    hessian = torch.autograd.functional.hessian(loss, flat)
    model.train(was_training)
    return torch.linalg.eigvalsh(hessian.double())


@pytest.fixture(scope="module")
def expected_top() -> float:
    """The top eigenvalue of ``tiny_model``'s eval-mode Hessian on ``batch``, built explicitly."""
    return explicit_spectrum(tiny_model(), *batch())[-1].item()


def test_matches_the_explicit_hessian(expected_top: float) -> None:
    model = tiny_model()
    x, y = batch()
    expected = expected_top
    assert expected > 0
    got = hessian_top_eigenvalue(model.train(), x, y, iters=500, tol=1e-10)
    assert got == pytest.approx(expected, rel=1e-3)
    # BN really normalised with its running statistics (eval mode): reset them and the value moves.
    model[1].reset_running_stats()
    reset = hessian_top_eigenvalue(model, x, y, iters=500, tol=1e-10)
    assert abs(reset - expected) > 1e-2 * expected


def test_float32_model_agrees_with_the_float64_hessian(expected_top: float) -> None:
    x, y = batch(torch.float32)
    got = hessian_top_eigenvalue(tiny_model(torch.float32), x, y, iters=500, tol=1e-7)
    assert got == pytest.approx(expected_top, rel=1e-3)


def test_weights_buffers_grads_and_modes_are_untouched() -> None:
    model = tiny_model()
    model.train()
    model[1].eval()  # a mixed state: each module's own flag must come back
    model[0].weight.grad = torch.full_like(model[0].weight, 0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grad_before = model[0].weight.grad.clone()
    modes = [m.training for m in model.modules()]

    hessian_top_eigenvalue(model, *batch())

    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical, buffers too
    assert torch.equal(model[0].weight.grad, grad_before)
    assert model[4].weight.grad is None
    assert [m.training for m in model.modules()] == modes


def test_same_seed_same_value_and_the_seed_matters() -> None:
    model = tiny_model()
    x, y = batch()
    a = hessian_top_eigenvalue(model, x, y, iters=3, seed=0)
    b = hessian_top_eigenvalue(model, x, y, iters=3, seed=0)
    c = hessian_top_eigenvalue(model, x, y, iters=3, seed=1)
    assert a == b
    assert a != c  # three iterations have not converged: the start vector shows


def test_finds_the_top_eigenvalue_when_a_negative_one_dominates() -> None:
    # A symmetric matrix with eigenvalues -5, 2, 1 in a random basis: plain power iteration
    # would return -5.
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    matrix = q @ torch.diag(torch.tensor([-5.0, 2.0, 1.0], dtype=torch.float64)) @ q.T

    def matvec(v: list[torch.Tensor]) -> list[torch.Tensor]:
        return [matrix @ v[0]]

    v0 = [torch.randn(3, generator=generator, dtype=torch.float64)]
    assert _top_eigenvalue(matvec, v0, iters=500, tol=1e-12) == pytest.approx(2.0, rel=1e-6)


def test_known_hessian_with_a_parameter_outside_the_graph() -> None:
    # A bias-only "model" whose logits are the bias: CE is convex in it with a known Hessian,
    # diag(p) - p p^T averaged over the batch, p = softmax(bias); an unused parameter is ignored.
    class BiasOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.5, -0.25, 0.0], dtype=torch.float64))
            self.unused = nn.Parameter(torch.ones(2, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bias.expand(x.shape[0], 3)

    model = BiasOnly()
    p = torch.softmax(model.bias.detach(), 0)
    expected = torch.linalg.eigvalsh(torch.diag(p) - torch.outer(p, p))[-1].item()
    x, y = torch.zeros(4, 1, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    got = hessian_top_eigenvalue(model, x, y, iters=500, tol=1e-12)
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"iters": 0}, r"iters must be >= 1, but got iters=0"), ({"tol": 0.0}, r"tol must be > 0")],
)
def test_bad_arguments_name_the_field(kwargs: dict[str, float], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        hessian_top_eigenvalue(tiny_model(), *batch(), **kwargs)  # type: ignore[arg-type]
