"""Contract suite run over every registered perturbation.

The reference gradients below are independent, straightforward per-tensor implementations of
docs/algorithms.md (Python loops, fresh model copies, no multi-tensor ops), so a bug shared by the
fast implementation and its test would have to be written twice in two different shapes.
"""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from torch import nn

from trainers import perturbations
from trainers.perturbations import AMP, AWP, ERM, PERTURBATIONS, SAM, build, from_spec
from trainers.precision import LossScaler
from trainers.spec import PERTURBATION_SPECS, AMPSpec, BasePerturbationSpec, parse_perturbation

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


def closure_for(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    counter: list[int],
    buffers_seen: list[list[torch.Tensor]] | None = None,
):
    def closure() -> torch.Tensor:
        counter[0] += 1
        model.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if buffers_seen is not None:  # BN running statistics right after this pass
            buffers_seen.append([b.detach().clone() for b in model.buffers()])
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
    assert_restores(kind, *make(model_name))


def assert_restores(kind: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """After one step of ``kind`` the weights are bit-identical to before it and the BN
    buffers are those of one unperturbed pass (also run on CUDA, test_cuda.py)."""
    hp = {"radius": 0.3} if kind != "erm" else {}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    twin = copy.deepcopy(model)
    closure_for(twin, x, y, [0])()  # one plain pass: the running stats plain training gives
    build(kind, model, **hp).backward(closure_for(model, x, y, [0]))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"{kind}: {n} not restored bit-identically"
    for (n, b), b_twin in zip(model.named_buffers(), twin.buffers(), strict=True):
        assert torch.equal(b, b_twin), f"{kind}: buffer {n} differs from one unperturbed pass"


@pytest.mark.parametrize("model_name", ["mlp_bn", "cnn_bn"])
@pytest.mark.parametrize(("kind", "hparams"), CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("bn_update", ["first_pass", "all_passes"])
def test_bn_update_keeps_first_or_last_pass_statistics(kind, hparams, bn_update, model_name):
    model, x, y = make(model_name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen: list[list[torch.Tensor]] = []
    p = build(kind, model, **hparams, bn_update=bn_update)
    p.backward(closure_for(model, x, y, [0], seen))
    assert len(seen) == p.closure_calls
    expected = seen[0] if bn_update == "first_pass" else seen[-1]
    for (n, b), b_ref in zip(model.named_buffers(), expected, strict=True):
        assert torch.equal(b, b_ref), f"{kind} {bn_update}: buffer {n}"
    if kind != "erm":  # the passes differ, so the two modes are told apart
        assert not torch.equal(seen[0][0], seen[-1][0])
    for n, q in model.named_parameters():  # weights are restored in both modes
        assert torch.equal(q, before[n])


@pytest.mark.parametrize("kind", KINDS)
def test_all_passes_updates_input_bn_once_per_closure_call(kind):
    """Independent of the hooks: BN on the input sees the same batch in every pass, so its
    statistics after ``backward`` are those of ``closure_calls`` plain passes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 4)).train()
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    twin = copy.deepcopy(model)
    hp = {"inner_steps": 2} if kind in ("amp", "awp") else {}
    p = build(kind, model, **hp, bn_update="all_passes")
    for _ in range(p.closure_calls):
        closure_for(twin, x, y, [0])()
    p.backward(closure_for(model, x, y, [0]))
    bn, bn_twin = model[0], twin[0]
    assert int(bn.num_batches_tracked) == p.closure_calls
    torch.testing.assert_close(bn.running_mean, bn_twin.running_mean, rtol=0, atol=1e-7)
    torch.testing.assert_close(bn.running_var, bn_twin.running_var, rtol=0, atol=1e-7)


def fp16_closure_for(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    scaler: LossScaler,
    buffers_seen: list[list[torch.Tensor]],
):
    """The training loop's fp16 closure: autocast forward, scaled backward, unscaled grads."""
    params = list(model.parameters())

    def closure() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.backward(loss, params)
        buffers_seen.append([b.detach().clone() for b in model.buffers()])
        return loss.detach()

    return closure


@pytest.mark.parametrize("model_name", ["mlp_bn", "cnn_bn"])
@pytest.mark.parametrize(("kind", "hparams"), CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("bn_update", ["first_pass", "all_passes"])
def test_fp16_overflow_keeps_weights_and_the_unperturbed_pass_bn_stats(
    kind, hparams, bn_update, model_name
):
    """An fp16 step whose backward overflows is skipped; its perturbed passes run at NaN
    weights (inf gradients times a clip factor of 0), and under all_passes their running
    statistics were kept, NaN for good. With the scaler's flag they are dropped."""
    model, x, y = make(model_name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    twin = copy.deepcopy(model)
    scaler = LossScaler(torch.device("cpu"), init_scale=2.0**40)  # every fp16 backward overflows
    fp16_closure_for(twin, x, y, LossScaler(torch.device("cpu"), init_scale=2.0**40), [])()
    seen: list[list[torch.Tensor]] = []
    p = build(kind, model, **hparams, bn_update=bn_update)
    p.backward(fp16_closure_for(model, x, y, scaler, seen), found_inf=scaler.found_inf)
    assert float(scaler.found_inf) == 1.0  # the step will be skipped
    if kind != "erm":  # the case under test: a perturbed pass ran at non-finite weights
        assert not all(torch.isfinite(b).all() for b in seen[-1])
    for n, q in model.named_parameters():
        assert torch.equal(q, before[n]), f"{kind} {bn_update}: {n} not restored"
    for (n, b), b_twin in zip(model.named_buffers(), twin.buffers(), strict=True):
        assert torch.equal(b, b_twin), f"{kind} {bn_update}: buffer {n} not the first pass's"


@pytest.mark.parametrize(("kind", "hparams"), CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("bn_update", ["first_pass", "all_passes"])
def test_a_clear_overflow_flag_changes_nothing(kind, hparams, bn_update):
    """fp16 without overflow: passing the scaler's flag gives bit-identical gradients and
    buffers to not passing it (what fp32 and bf16 do)."""
    model, x, y = make("cnn_bn")
    twin = copy.deepcopy(model)
    build(kind, twin, **hparams, bn_update=bn_update).backward(closure_for(twin, x, y, [0]))
    clear = torch.zeros(())
    p = build(kind, model, **hparams, bn_update=bn_update)
    p.backward(closure_for(model, x, y, [0]), found_inf=clear)
    for q, q_twin in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(q, q_twin) and torch.equal(q.grad, q_twin.grad)
    for b, b_twin in zip(model.buffers(), twin.buffers(), strict=True):
        assert torch.equal(b, b_twin)


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
    ("amp", {"bn_update": "every_pass"}, "bn_update"),
]


@pytest.mark.parametrize(("kind", "hparams", "field"), BAD, ids=lambda v: str(v))
def test_bad_hyperparameters_raise_one_line_naming_the_field(kind, hparams, field):
    model, _, _ = make("mlp")
    with pytest.raises(ValueError, match=f"perturbation.{field}: ") as info:
        build(kind, model, **hparams)
    assert "\n" not in str(info.value)
    cls = PERTURBATIONS.get(kind)
    if field in inspect.signature(cls).parameters:
        with pytest.raises(ValueError, match=f"perturbation.{field}: "):
            cls(model, **hparams)  # the constructor checks through the same spec
    else:
        with pytest.raises(TypeError, match=field):
            cls(model, **hparams)  # not a keyword of this kind


def test_error_gives_the_bound_and_the_value():
    model, _, _ = make("mlp")
    with pytest.raises(ValueError) as info:
        AMP(model, radius=-1.0)
    assert str(info.value) == (
        "perturbation.radius: Input should be greater than or equal to 0, but got -1.0"
    )


def test_registry_and_specs_name_the_same_kinds():
    assert set(PERTURBATIONS.names()) == set(PERTURBATION_SPECS)
    for kind in KINDS:
        assert PERTURBATIONS.get(kind).kind == kind


@pytest.mark.parametrize("kind", KINDS)
def test_constructors_are_keyword_only_with_the_spec_defaults(kind):
    cls, spec_cls = PERTURBATIONS.get(kind), PERTURBATION_SPECS[kind]
    params = list(inspect.signature(cls).parameters.values())
    assert params[0].name == "model"
    hyper = params[1:]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in hyper)
    loop_fields = {"kind", "warmup_epochs"}  # read by the training loop, not the perturbation
    assert {p.name for p in hyper} == set(spec_cls.model_fields) - loop_fields
    for p in hyper:
        assert p.default == spec_cls.model_fields[p.name].default, p.name
    model, _, _ = make("mlp")
    assert cls(model).spec == spec_cls()
    if hyper:
        with pytest.raises(TypeError):
            cls(model, hyper[0].default)  # positional hyperparameters are refused


def test_typed_constructors_and_from_spec_agree():
    model, _, _ = make("mlp")
    amp = AMP(model, radius=0.2, inner_steps=2, inner_lr=0.5, bn_update="all_passes")
    assert (amp.spec.radius, amp.spec.inner_steps, amp.spec.inner_lr) == (0.2, 2, 0.5)
    assert amp.bn_update == "all_passes" and amp.closure_calls == 3
    same = from_spec(
        AMPSpec(radius=0.2, inner_steps=2, inner_lr=0.5, bn_update="all_passes"), model
    )
    assert isinstance(same, AMP) and same.spec == amp.spec
    # warmup_epochs belongs to the loop: a spec with it still builds
    sam = from_spec(parse_perturbation({"kind": "sam", "warmup_epochs": 3}), model)
    assert isinstance(sam, SAM) and sam.spec.radius == 0.05
    assert isinstance(from_spec(parse_perturbation({}), model), ERM)
    expected = "SAM(bn_update='first_pass', radius=0.05, adaptive=True)"
    assert repr(SAM(model, adaptive=True)) == expected
    assert isinstance(AWP(model).spec, BasePerturbationSpec)
    assert perturbations.build("awp", model).spec == PERTURBATION_SPECS["awp"]()


def test_unknown_kind_lists_allowed_and_closest():
    model, _, _ = make("mlp")
    with pytest.raises(ValueError) as info:
        build("amq", model)
    msg = str(info.value)
    assert "'amq'" in msg and "did you mean 'amp'" in msg
    for kind in KINDS:
        assert kind in msg
