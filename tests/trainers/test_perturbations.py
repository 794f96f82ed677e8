"""Contract suite run over every registered perturbation.

The reference gradients below are independent, straightforward per-tensor implementations of
ALGORITHMS.md (Python loops, fresh model copies, no multi-tensor ops), so a bug shared by the
fast implementation and its test would have to be written twice in two different shapes.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from trainers.perturbations import PERTURBATIONS, build

KINDS = PERTURBATIONS.names()


# -- small random models, with and without BatchNorm ---------------------------------------------


def mlp(bn: bool) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(6, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.Tanh(), nn.Linear(16, 4)]
    return nn.Sequential(*layers)


def cnn(bn: bool) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(2, 5, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(5))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 4)]
    return nn.Sequential(*layers)


MODELS = {
    "mlp": (mlp, (6,)),
    "mlp_bn": (lambda: mlp(True), (6,)),
    "cnn": (lambda: cnn(False), (2, 4, 4)),
    "cnn_bn": (lambda: cnn(True), (2, 4, 4)),
}
MODELS["mlp"] = (lambda: mlp(False), (6,))


def make(model_name: str, seed: int = 0):
    torch.manual_seed(seed)
    factory, shape = MODELS[model_name]
    model = factory().train()
    x = torch.randn(8, *shape)
    y = torch.randint(0, 4, (8,))
    return model, x, y


def closure_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, counter: list[int]):
    def closure() -> torch.Tensor:
        counter[0] += 1
        model.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()

    return closure


# -- the reference implementation ----------------------------------------------------------------


def grad_at(model: nn.Module, weights: dict[str, torch.Tensor], x, y) -> dict[str, torch.Tensor]:
    """g at the given weights, computed on a fresh copy (train mode, batch statistics)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(weights[n])
    m.zero_grad()
    nn.functional.cross_entropy(m(x), y).backward()
    return {n: p.grad.detach().clone() for n, p in m.named_parameters()}


def ref_erm(model, x, y):
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    return grad_at(model, w, x, y)


def ref_sam(model, x, y, radius, adaptive):
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = grad_at(model, w, x, y)
    if adaptive:
        norm = math.sqrt(sum(float(((w[n].abs() * g[n]) ** 2).sum()) for n in w))
        e = {n: radius * w[n] ** 2 * g[n] / (norm + 1e-12) for n in w}
    else:
        norm = math.sqrt(sum(float((g[n] ** 2).sum()) for n in w))
        e = {n: radius * g[n] / (norm + 1e-12) for n in w}
    return grad_at(model, {n: w[n] + e[n] for n in w}, x, y)


def ref_amp(model, x, y, radius, inner_steps, inner_lr):
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = grad_at(model, w, x, y)
    delta = {n: torch.zeros_like(t) for n, t in w.items()}
    for _ in range(inner_steps):
        for n in w:
            delta[n] = delta[n] + inner_lr * g[n]
            factor = radius / (float(delta[n].norm()) + 1e-12)
            if factor < 1:  # the official per-tensor projection
                delta[n] = delta[n] * factor
        g = grad_at(model, {n: w[n] + delta[n] for n in w}, x, y)
    return g


def ref_awp(model, x, y, radius, inner_steps, inner_lr):
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    theta = dict(w)
    for _ in range(inner_steps):
        g = grad_at(model, theta, x, y)
        theta = {n: theta[n] + inner_lr * g[n] for n in theta}
    perturbed = {}
    for n in w:
        if w[n].dim() > 1 and "weight" in n:
            d = theta[n] - w[n]
            v = w[n].norm() * d / (d.norm() + 1e-20)
            perturbed[n] = w[n] + radius * v
        else:
            perturbed[n] = w[n]
    return grad_at(model, perturbed, x, y)


REFERENCES = {"erm": ref_erm, "sam": ref_sam, "amp": ref_amp, "awp": ref_awp}

# (kind, hparams): radii that do and do not clip, K = 1, 2, 3.
CASES = [
    ("erm", {}),
    ("sam", {"radius": 0.05, "adaptive": False}),
    ("sam", {"radius": 0.5, "adaptive": True}),
    ("amp", {"radius": 0.01, "inner_steps": 1, "inner_lr": 1.0}),  # clips
    ("amp", {"radius": 10.0, "inner_steps": 2, "inner_lr": 0.5}),  # does not clip
    ("amp", {"radius": 0.05, "inner_steps": 3, "inner_lr": 1.0}),
    ("awp", {"radius": 0.01, "inner_steps": 1, "inner_lr": 0.01}),
    ("awp", {"radius": 0.05, "inner_steps": 2, "inner_lr": 0.1}),
    ("awp", {"radius": 0.02, "inner_steps": 3, "inner_lr": 1.0}),
]


def test_every_kind_has_a_reference_and_cases():
    assert set(REFERENCES) == set(KINDS)
    assert {k for k, _ in CASES} == set(KINDS)
    for kind in ("amp", "awp"):
        assert {h["inner_steps"] for k, h in CASES if k == kind} == {1, 2, 3}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize(("kind", "hparams"), CASES, ids=lambda v: str(v))
def test_gradient_matches_reference(kind, hparams, model_name):
    model, x, y = make(model_name)
    expected = REFERENCES[kind](model, x, y, **hparams)
    with torch.no_grad():
        loss_at_w = float(nn.functional.cross_entropy(copy.deepcopy(model)(x), y))
    counter = [0]
    loss = build(kind, model, **hparams).backward(closure_for(model, x, y, counter))
    assert float(loss) == pytest.approx(loss_at_w, rel=1e-6)
    got = torch.cat([p.grad.flatten() for p in model.parameters()])
    ref = torch.cat([expected[n].flatten() for n, _ in model.named_parameters()])
    err = float((got - ref).norm() / ref.norm())
    assert err <= 1e-5, f"{kind}: relative error {err:.2e}"
    # per tensor too, with an absolute floor for gradients that are zero up to rounding
    # (a Linear bias right before BatchNorm)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-7, msg=n)


def test_amp_cases_cover_clipping_and_not():
    """The AMP cases above must exercise both branches of the projection."""
    model, x, y = make("mlp")
    g = ref_erm(model, x, y)
    norms = [float(t.norm()) for t in g.values()]
    assert all(0.01 < 1.0 * n for n in norms)  # radius 0.01, lr 1: every tensor clips
    assert all(2 * 0.5 * n < 10.0 for n in norms)  # radius 10, lr 0.5: none can clip


@pytest.mark.parametrize("model_name", ["mlp_bn", "cnn_bn"])
@pytest.mark.parametrize("kind", KINDS)
def test_restores_weights_bit_identically_and_keeps_unperturbed_bn_stats(kind, model_name):
    model, x, y = make(model_name)
    hp = {"radius": 0.3} if kind != "erm" else {}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    twin = copy.deepcopy(model)
    closure_for(twin, x, y, [0])()  # one plain pass: the running stats plain training gives
    build(kind, model, **hp).backward(closure_for(model, x, y, [0]))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"{kind}: {n} not restored bit-identically"
    for (n, b), b_twin in zip(model.named_buffers(), twin.buffers(), strict=True):
        assert torch.equal(b, b_twin), f"{kind}: buffer {n} differs from one unperturbed pass"


@pytest.mark.parametrize(("kind", "hparams"), CASES, ids=lambda v: str(v))
def test_closure_calls(kind, hparams):
    model, x, y = make("mlp")
    counter = [0]
    p = build(kind, model, **hparams)
    p.backward(closure_for(model, x, y, counter))
    expected = {"erm": 1, "sam": 2}.get(kind, 1 + hparams.get("inner_steps", 1))
    assert counter[0] == expected == p.closure_calls


@pytest.mark.parametrize("model_name", ["mlp_bn", "cnn"])
@pytest.mark.parametrize(
    ("kind", "hparams"), [c for c in CASES if c[0] != "erm"], ids=lambda v: str(v)
)
def test_radius_zero_is_exactly_erm(kind, hparams, model_name):
    model, x, y = make(model_name)
    twin = copy.deepcopy(model)
    closure_for(twin, x, y, [0])()
    build(kind, model, **{**hparams, "radius": 0.0}).backward(closure_for(model, x, y, [0]))
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "erm"])
def test_nonzero_radius_changes_the_gradient(kind):
    """Guards the reference test against a perturbation that silently does nothing."""
    model, x, y = make("cnn")
    twin = copy.deepcopy(model)
    closure_for(twin, x, y, [0])()
    build(kind, model, radius=0.5).backward(closure_for(model, x, y, [0]))
    assert any(
        not torch.equal(p.grad, q.grad)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True)
    )


BAD = [
    ("sam", {"radius": -0.1}, "radius"),
    ("sam", {"radius": float("nan")}, "radius"),
    ("sam", {"radius": "0.05"}, "radius"),
    ("sam", {"adaptive": "yes"}, "adaptive"),
    ("sam", {"inner_steps": 2}, "inner_steps"),
    ("amp", {"inner_steps": 0}, "inner_steps"),
    ("amp", {"inner_steps": 1.5}, "inner_steps"),
    ("amp", {"inner_steps": True}, "inner_steps"),
    ("amp", {"inner_lr": 0}, "inner_lr"),
    ("amp", {"inner_lr": float("inf")}, "inner_lr"),
    ("amp", {"radius": -1}, "radius"),
    ("amp", {"rho": 0.1}, "rho"),
    ("awp", {"inner_steps": -1}, "inner_steps"),
    ("awp", {"radius": float("inf")}, "radius"),
    ("erm", {"radius": 0.1}, "radius"),
]


@pytest.mark.parametrize(("kind", "hparams", "field"), BAD, ids=lambda v: str(v))
def test_bad_hyperparameters_raise(kind, hparams, field):
    model, _, _ = make("mlp")
    with pytest.raises(ValueError, match=field):
        build(kind, model, **hparams)


def test_unknown_kind_lists_allowed_and_closest():
    model, _, _ = make("mlp")
    with pytest.raises(ValueError) as info:
        build("amq", model)
    msg = str(info.value)
    assert "'amq'" in msg and "did you mean 'amp'" in msg
    for kind in KINDS:
        assert kind in msg
