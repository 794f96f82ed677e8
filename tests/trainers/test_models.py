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


# Every reference network as (name, args, classes, parameters, parameter tensors). The counts of
# the official models were measured by building the authors' code (hiyouga/AMP-Regularizer
# ``models/``, csdongxian/AWP ``AT_AWP/``) and match these exactly, tensor for tensor in order.
REFERENCE_COUNTS = [
    ("preact_resnet18", {}, 10, 11_171_146, 54),  # kuangliu/pytorch-cifar
    ("preact_resnet18", {"variant": "awp"}, 10, 11_172_170, 56),  # AWP PreActResNet18
    ("preact_resnet18", {"variant": "amp"}, 10, 11_176_906, 75),  # AMP preactresnet18
    ("preact_resnet18", {"variant": "amp"}, 100, 11_223_076, 75),
    ("vgg16_bn", {}, 10, 14_728_266, 54),  # kuangliu VGG('VGG16')
    ("vgg16_bn", {"variant": "amp"}, 10, 33_646_666, 58),  # AMP vgg16
    ("wide_resnet", {}, 10, 36_479_194, 80),  # WRN-28-10, xternalz (the AWP code's)
    ("wide_resnet", {"variant": "amp"}, 10, 36_479_194, 80),  # AMP wrn28_10
    ("pyramidnet", {}, 10, 27_216_021, 601),  # AMP pyramidnet164_270
]


@pytest.mark.parametrize(
    ("name", "kwargs", "num_classes", "count", "tensors"),
    REFERENCE_COUNTS,
    ids=[f"{n}-{k.get('variant', 'default')}-{c}" for n, k, c, _, _ in REFERENCE_COUNTS],
)
def test_reference_param_and_tensor_counts(
    name: str, kwargs: dict[str, object], num_classes: int, count: int, tensors: int
) -> None:
    model = build(name, num_classes=num_classes, in_shape=(3, 32, 32), **kwargs)
    assert (n_params(model), len(list(model.parameters()))) == (count, tensors)


# A cheap configuration of every non-default variant, for the forward/backward contract.
# 8x8 inputs where the model takes them (adaptive pooling), to keep the 11M-parameter nets quick.
VARIANT_SMOKE = [
    ("preact_resnet18", (3, 8, 8), {"variant": "awp"}),
    ("preact_resnet18", (3, 8, 8), {"variant": "amp", "dropout": 0.1}),
    ("vgg16_bn", (3, 32, 32), {"variant": "amp", "dropout": 0.1}),
    ("wide_resnet", (3, 8, 8), {"depth": 10, "widen_factor": 1, "variant": "amp", "dropout": 0.1}),
]


@pytest.mark.parametrize(("name", "in_shape", "kwargs"), VARIANT_SMOKE)
def test_variant_forward_backward(
    name: str, in_shape: tuple[int, ...], kwargs: dict[str, object]
) -> None:
    torch.manual_seed(0)
    model = build(name, num_classes=NUM_CLASSES, in_shape=in_shape, **kwargs)
    out = model(torch.randn(2, *in_shape))
    assert out.shape == (2, NUM_CLASSES)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_amp_variants_use_the_official_init() -> None:
    # The AMP code's loop: He-normal fan-out conv weights, BN (1, 0), zero linear biases; conv
    # biases and linear weights keep PyTorch's defaults (non-zero, uniform).
    torch.manual_seed(0)
    model = build("preact_resnet18", num_classes=10, in_shape=(3, 32, 32), variant="amp")
    conv = model.layer4[1].conv1  # 512 -> 512, 3x3: 2.4M weights, a tight std estimate
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.01)
    assert conv.bias is not None and conv.bias.abs().max() > 0
    bound = 1.0 / (conv.in_channels * 9) ** 0.5  # PyTorch's default conv bias bound
    assert conv.bias.abs().max() <= bound
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bns)
    assert torch.equal(model.linear.bias, torch.zeros(10))
    # The default variant keeps PyTorch's init: kaiming_uniform(a=sqrt(5)) has std 1/sqrt(3 fan_in).
    torch.manual_seed(0)
    default = build("preact_resnet18", num_classes=10, in_shape=(3, 32, 32))
    w = default.layer4[1].conv1.weight
    assert w.std().item() == pytest.approx((1.0 / (3 * 512 * 9)) ** 0.5, rel=0.01)


def _zero_(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def test_amp_preact_identity_skip_reads_the_preactivated_input() -> None:
    from trainers.models.preact_resnet import AmpPreActBlock, PreActBlock

    x = torch.randn(2, 8, 4, 4)
    for block_type in (PreActBlock, AmpPreActBlock):
        block = block_type(8, 8, 1).eval()
        _zero_(block.conv2)  # the residual branch now adds nothing: the output is the skip
        with torch.no_grad():
            out = block(x)
            pre = torch.relu(block.bn1(x))
        expected = pre if block_type is AmpPreActBlock else x
        torch.testing.assert_close(out, expected)


def test_amp_wide_resnet_block_order_and_final_bn() -> None:
    from trainers.models.wide_resnet import AmpWideBasic, WideBasic

    x = torch.randn(2, 4, 8, 8)
    for block_type in (WideBasic, AmpWideBasic):
        block = block_type(4, 6, 2, 0.0).eval()
        _zero_(block.conv2)
        assert block.shortcut is not None
        with torch.no_grad():
            out = block(x)
            # xternalz projects the pre-activated input, the AMP code the raw one.
            skip_in = x if block_type is AmpWideBasic else torch.relu(block.bn1(x))
            expected = block.shortcut(skip_in)
        torch.testing.assert_close(out, expected)
        # The AMP code strides in the second conv, xternalz in the first.
        strided = block.conv2 if block_type is AmpWideBasic else block.conv1
        assert strided.stride == (2, 2)
    amp = build("wide_resnet", num_classes=10, in_shape=(3, 32, 32), depth=10, variant="amp")
    default = build("wide_resnet", num_classes=10, in_shape=(3, 32, 32), depth=10)
    assert (amp.bn.momentum, default.bn.momentum) == (0.9, 0.1)


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
        ("vgg16_bn", {"variant": "amq"}, r"unknown vgg16_bn variant 'amq'.*did you mean 'amp'"),
        ("preact_resnet18", {"variant": "AWP"}, r"variant 'AWP'; allowed: amp, awp, kuangliu"),
        ("preact_resnet18", {"dropout": 0.1}, r"dropout needs variant 'amp'.*variant='kuangliu'"),
        ("vgg16_bn", {"variant": "amp", "dropout": 1.0}, r"dropout must be in \[0, 1\).*1.0"),
        ("wide_resnet", {"variant": "xternalz"}, r"wide_resnet variant 'xternalz'.*amp, awp"),
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


@pytest.mark.parametrize("name", MODELS.names())
def test_option_names_read_from_the_source_match_the_signature(name: str) -> None:
    from trainers.models import option_names, options

    assert option_names(name) == list(options(name))
