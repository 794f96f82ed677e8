"""PyramidNet with bottleneck blocks and optional ShakeDrop, for 32x32 images.

Papers: Han, Kim & Kim, "Deep Pyramidal Residual Networks", CVPR 2017 (arXiv:1610.02915): the
width grows by ``alpha / N`` channels at every one of the ``N = 3n`` blocks instead of doubling
per stage, blocks are BN -> conv1x1 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv1x1 -> BN (no
ReLU at the start, a BN at the end), and the shortcut is an identity (a 2x2 average pool when
the block strides) zero-padded to the wider output. Yamada, Iwamura, Akiba & Kise, "ShakeDrop
Regularization for Deep Residual Learning", IEEE Access 2019 (arXiv:1802.02375): the residual
branch is scaled by ``b + alpha - b * alpha`` in the forward pass and ``b + beta - b * beta`` in
the backward pass, ``b ~ Bernoulli(1 - p_drop)``, ``alpha ~ U[-1, 1]``, ``beta ~ U[0, 1]``, with
``p_drop`` rising linearly to 0.5 at the last block; at test time the branch is scaled by its
expectation ``1 - p_drop``.

Architecture: dyhan0920/PyramidNet-PyTorch as re-used by the AMP code (hiyouga/AMP-Regularizer
``models/pyramidnet.py``), whose CIFAR configuration is PyramidNet-164 (bottleneck, alpha=270).
The AMP code's copy computes what this module does with ``shakedrop=False`` (at the code's
default dropout 0), so it needs no ``variant``. On CIFAR-10 that is 27,216,021 parameters in 601
tensors, 27,050,177 of them conv and linear weights. The paper's 27.0M (and its 26.0M for
PyramidNet-272, alpha=200: 25,999,978 of 26,210,842) matches only the second figure, so its
counts evidently leave out BN scales and shifts.

The ShakeDrop draws ``b``, ``alpha`` and ``beta`` once per example, as the SAM code does
(google-research/sam, PyramidNet-272 + ShakeDrop); the owruby/shake-drop_pytorch port draws ``b``
once per batch and reads it back with ``.item()``, a host sync on every block.

Deviations, each parameter-free: global pooling is adaptive (``AvgPool2d(8)`` in the original) so
any input size works, and the stem takes ``in_shape[0]`` channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.models._init import kaiming_fan_out_init

# The drop probability of the last block (Yamada et al. 2019, "linear decay rule", p_L = 0.5).
SHAKEDROP_MAX_P = 0.5


class _ShakeDropFunction(torch.autograd.Function):
    """Scales by ``gate + (1 - gate) * alpha`` forward and ``gate + (1 - gate) * beta`` backward."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        gate: torch.Tensor,
        alpha: torch.Tensor,
        beta: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(gate, beta)
        return x * (gate + (1.0 - gate) * alpha)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None]:
        gate, beta = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * (gate + (1.0 - gate) * beta), None, None, None


class ShakeDrop(nn.Module):
    """ShakeDrop on a residual branch; ``p_drop`` is the chance that the branch is shaken."""

    def __init__(self, p_drop: float) -> None:
        super().__init__()
        self.p_drop = p_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            # E[b + alpha - b * alpha] = 1 - p_drop, because E[alpha] = 0.
            return x * (1.0 - self.p_drop)
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        gate = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.p_drop)
        alpha = torch.empty(shape, dtype=x.dtype, device=x.device).uniform_(-1.0, 1.0)
        beta = torch.rand(shape, dtype=x.dtype, device=x.device)
        return _ShakeDropFunction.apply(x, gate, alpha, beta)

    def extra_repr(self) -> str:
        return f"p_drop={self.p_drop}"


class PyramidBottleneck(nn.Module):
    """Han et al. 2017 Fig. 6(d) bottleneck; the output has ``4 * planes`` channels."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, p_drop: float | None) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.branch = nn.Sequential(
            nn.BatchNorm2d(in_planes),
            nn.Conv2d(in_planes, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(),
            nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(),
            nn.Conv2d(planes, out_planes, 1, bias=False),
            nn.BatchNorm2d(out_planes),
        )
        self.shakedrop: nn.Module = ShakeDrop(p_drop) if p_drop is not None else nn.Identity()
        # ceil_mode keeps odd feature maps the same size as the strided 3x3 conv's output.
        self.downsample: nn.Module = (
            nn.AvgPool2d(2, stride=2, ceil_mode=True) if stride != 1 else nn.Identity()
        )
        self.pad = out_planes - in_planes  # channels of zeros appended to the shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shakedrop(self.branch(x))
        shortcut = self.downsample(x)
        if self.pad:
            # F.pad's tuple runs from the last dim back: (W, W, H, H, C-before, C-after).
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad))
        return out + shortcut


class PyramidNet(nn.Module):
    """Stem conv + BN, three stages of ``n`` bottlenecks with additive widening, BN-ReLU-pool-FC."""

    def __init__(
        self,
        depth: int,
        alpha: float,
        num_classes: int,
        in_channels: int = 3,
        shakedrop: bool = False,
    ) -> None:
        super().__init__()
        n = (depth - 2) // 9  # three stages of n blocks, three weighted layers each, + stem + FC
        num_blocks = 3 * n
        add_rate = alpha / num_blocks  # channels added per block, before the 4x expansion
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks = []
        in_planes, width = 16, 16.0
        for i in range(num_blocks):
            stride = 2 if i in (n, 2 * n) else 1
            width += add_rate
            # Rounding the running float width, not each increment, keeps the total at alpha.
            planes = int(round(width))
            p_drop = SHAKEDROP_MAX_P * (i + 1) / num_blocks if shakedrop else None
            blocks.append(PyramidBottleneck(in_planes, planes, stride, p_drop))
            in_planes = planes * PyramidBottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        # dyhan0920's init, kept by the AMP code: He-normal fan-out, BN at identity, zero FC bias.
        kaiming_fan_out_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.bn1(self.conv1(x)))
        out = self.pool(torch.relu(self.bn(out)))
        return self.fc(out.flatten(1))


def pyramidnet(
    num_classes: int,
    in_shape: tuple[int, ...],
    depth: int = 164,
    alpha: float = 270,
    shakedrop: bool = False,
) -> PyramidNet:
    """Bottleneck PyramidNet-depth (alpha); the default is the AMP paper's PyramidNet-164 (270)."""
    if len(in_shape) != 3:
        raise ValueError(f"pyramidnet needs in_shape (C, H, W), but got {in_shape=}")
    if depth < 11 or (depth - 2) % 9 != 0:
        raise ValueError(
            f"pyramidnet depth must be 9n+2 with n >= 1 (11, 20, 29, ..., 164, 272), "
            f"but got {depth=}"
        )
    if alpha < 0:
        raise ValueError(f"pyramidnet alpha must be >= 0, but got {alpha=}")
    return PyramidNet(depth, alpha, num_classes, in_channels=in_shape[0], shakedrop=shakedrop)
