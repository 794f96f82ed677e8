"""Tests for ``trainers.models``: every registered model, parameter counts against the papers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers.models import MODELS, build, options
from trainers.models.pyramidnet import ShakeDrop

# A cheap configuration of each registered model for the forward/backward contract tests. A model
# registered without an entry here fails ``test_every_model_has_a_smoke_config``.
SMOKE: dict[str, tuple[tuple[int, ...], dict[str, object]]] = {
    "preact_resnet18": ((3, 32, 32), {}),
    "wide_resnet": ((3, 32, 32), {"depth": 10, "widen_factor": 1}),
    "vgg16_bn": ((3, 32, 32), {}),
    "pyramidnet": ((3, 32, 32), {"depth": 20, "alpha": 48}),
    "mlp": ((1, 40), {}),
    "cnn1d": ((1, 40), {}),
    "small_cnn": ((1, 8, 8), {}),
}
NUM_CLASSES = 7  # not 10, so a head hard-wired to CIFAR-10 shows up


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_model_has_a_smoke_config() -> None:
    assert set(MODELS.names()) == set(SMOKE)


@pytest.mark.parametrize("name", MODELS.names())
def test_forward_backward(name: str) -> None:
    in_shape, kwargs = SMOKE[name]
    torch.manual_seed(0)
    model = build(name, num_classes=NUM_CLASSES, in_shape=in_shape, **kwargs)
    out = model(torch.randn(2, *in_shape))
    assert out.shape == (2, NUM_CLASSES)
    out.logsumexp(1).sum().backward()
    # Perturbation methods walk every parameter; one outside the graph would get grad None.
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("name", [n for n in MODELS.names() if len(SMOKE[n][0]) == 3])
def test_channels_last_matches_contiguous(name: str) -> None:
    in_shape, kwargs = SMOKE[name]
    torch.manual_seed(0)
    model = build(name, num_classes=NUM_CLASSES, in_shape=in_shape, **kwargs).eval()
    x = torch.randn(2, *in_shape)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("head_bn", "count"),
    [(False, 11_171_146), (True, 11_172_170)],  # kuangliu; AWP / AMP code (+ final BN)
)
def test_preact_resnet18_param_count(head_bn: bool, count: int) -> None:
    model = build("preact_resnet18", num_classes=10, in_shape=(3, 32, 32), head_bn=head_bn)
    assert n_params(model) == count


# Zagoruyko & Komodakis 2016 report 11.0M (16-8) and 36.5M (28-10); 46.2M (34-10) is the figure
# quoted for the Madry et al. / TRADES / AWP network. The exact counts agree to those digits.
@pytest.mark.parametrize(
    ("depth", "widen_factor", "count"),
    [(16, 8, 10_961_370), (28, 10, 36_479_194), (34, 10, 46_160_474)],
)
def test_wide_resnet_param_count(depth: int, widen_factor: int, count: int) -> None:
    model = build(
        "wide_resnet",
        num_classes=10,
        in_shape=(3, 32, 32),
        depth=depth,
        widen_factor=widen_factor,
    )
    assert n_params(model) == count


def test_vgg16_bn_param_count() -> None:
    model = build("vgg16_bn", num_classes=10, in_shape=(3, 32, 32))
    assert n_params(model) == 14_728_266  # kuangliu/pytorch-cifar VGG('VGG16')
    amp = build("vgg16_bn", num_classes=10, in_shape=(3, 32, 32), classifier="mlp")
    assert n_params(amp) == 33_646_666  # the AMP code's 512-4096-4096-10 head


# Han et al. 2017 report 27.0M for PyramidNet-164 (alpha=270) and 26.0M for PyramidNet-272
# (alpha=200); both match the count without BN scales and shifts.
@pytest.mark.parametrize(
    ("depth", "alpha", "total", "paper"),
    [(164, 270, 27_216_021, 27.0e6), (272, 200, 26_210_842, 26.0e6)],
)
def test_pyramidnet_paper_config_builds(depth: int, alpha: int, total: int, paper: float) -> None:
    model = build(
        "pyramidnet",
        num_classes=10,
        in_shape=(3, 32, 32),
        depth=depth,
        alpha=alpha,
        shakedrop=True,
    )
    assert n_params(model) == total
    bn = sum(n_params(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert (total - bn) == pytest.approx(paper, rel=2e-3)


def test_pyramidnet_defaults_are_the_amp_paper_config() -> None:
    assert options("pyramidnet") == {"depth": 164, "alpha": 270, "shakedrop": False}


def test_unknown_model_names_the_closest_match() -> None:
    with pytest.raises(ValueError, match="did you mean 'preact_resnet18'"):
        build("preact_resnet19", num_classes=10, in_shape=(3, 32, 32))


def test_unknown_argument_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="'widen'.*widen_factor") as info:
        build("wide_resnet", num_classes=10, in_shape=(3, 32, 32), widen=10)
    assert "depth" in str(info.value) and "dropout" in str(info.value)


@pytest.mark.parametrize(
    ("name", "kwargs", "pattern"),
    [
        ("wide_resnet", {"depth": 27}, r"depth must be 6n\+4.*depth=27"),
        ("pyramidnet", {"depth": 100}, r"depth must be 9n\+2.*depth=100"),
        ("vgg16_bn", {"classifier": "fc"}, r"classifier must be one of.*classifier='fc'"),
        ("mlp", {"depth": -1}, r"depth must be >= 0.*depth=-1"),
    ],
)
def test_bad_argument_value_names_it(name: str, kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        build(name, num_classes=10, in_shape=(3, 32, 32), **kwargs)


@pytest.mark.parametrize(
    ("name", "in_shape"),
    [("preact_resnet18", (1, 40)), ("cnn1d", (1, 8, 8)), ("vgg16_bn", (1, 8, 8))],
)
def test_wrong_input_shape_is_a_value_error(name: str, in_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="in_shape"):
        build(name, num_classes=10, in_shape=in_shape)


def test_batchnorm_option_adds_batchnorm() -> None:
    for name in ("mlp", "cnn1d", "small_cnn"):
        in_shape, _ = SMOKE[name]
        plain = build(name, num_classes=10, in_shape=in_shape)
        with_bn = build(name, num_classes=10, in_shape=in_shape, batchnorm=True)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
        assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in with_bn.modules())


@pytest.mark.parametrize("shakedrop", [False, True])
def test_shakedrop_is_random_in_training_only(shakedrop: bool) -> None:
    torch.manual_seed(0)
    model = build(
        "pyramidnet",
        num_classes=10,
        in_shape=(3, 32, 32),
        depth=20,
        alpha=48,
        shakedrop=shakedrop,
    )
    x = torch.randn(4, 3, 32, 32)
    model.train()
    with torch.no_grad():
        # BN in training mode uses batch statistics, the same for the same batch; only
        # ShakeDrop can make two passes differ.
        a, b = model(x), model(x)
        model.eval()
        c, d = model(x), model(x)
    assert torch.equal(c, d)
    assert not torch.equal(a, b) if shakedrop else torch.equal(a, b)


def test_shakedrop_uses_alpha_forward_beta_backward_and_expectation_in_eval() -> None:
    torch.manual_seed(0)
    shake = ShakeDrop(p_drop=1.0)  # always shaken, so the gate b is 0 for every example
    x = torch.ones(256, 3, requires_grad=True)
    y = shake(x)
    y.sum().backward()
    assert x.grad is not None
    scale_forward, scale_backward = y[:, 0].detach(), x.grad[:, 0]
    assert scale_forward.min() < 0  # alpha ~ U[-1, 1]
    assert scale_backward.min() >= 0 and scale_backward.max() <= 1  # beta ~ U[0, 1]
    assert not torch.equal(scale_forward, scale_backward)

    half = ShakeDrop(p_drop=0.25).eval()
    torch.testing.assert_close(half(torch.ones(2, 3)), torch.full((2, 3), 0.75))
