"""Wide ResNet (WRN-depth-k) for 32x32 images.

Paper: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (arXiv:1605.07146):
pre-activation basic blocks B(3,3), three stages of 16k-32k-64k channels, ``n = (depth - 4) / 6``
blocks per stage, dropout between the two convolutions of a block.

``variant`` picks the reference network; both have the same parameters (bias-free convs, a 1x1
projection where the width changes, a final BN -> ReLU -> pool -> linear) and the same init loop
(``trainers.models._init``: He-normal fan-out conv weights, BN at identity, zero linear bias),
but compute differently:

- ``"awp"`` (default): the PyTorch port xternalz/WideResNet-pytorch, which the AWP code trains
  (csdongxian/AWP ``AT_AWP/wideresnet.py``, via TRADES). A block whose shape changes
  pre-activates its input once and feeds that to both the residual branch and the 1x1
  projection; an identity block adds its raw input; the first conv of a block strides; dropout
  sits after the second BN -> ReLU.
- ``"amp"``: the AMP code, hiyouga/AMP-Regularizer ``models/wide_resnet.py`` ``wrn28_10`` (from
  meliketoy/wide-resnet.pytorch). The projection reads the *raw* block input, the *second* conv
  strides, dropout sits right after the first conv (before the second BN), another dropout
  precedes the linear layer, and the final BN is built with ``momentum=0.9``: PyTorch weights
  the current batch by 0.9 in its running statistics, so that BN's test-time statistics are
  essentially the last training batch's. Kept, because it is the official network.

Parameter counts on CIFAR-10 (both variants) match the published ones to three digits: WRN-16-8
10,961,370 and WRN-28-10 36,479,194 in 80 tensors (11.0M, 36.5M in the paper's Table),
WRN-34-10 46,160,474 (46.2M, as quoted for the Madry et al. / TRADES / AWP robust-training
network).

Deviations, each parameter-free: global pooling is adaptive (``AvgPool2d(8)`` in the originals)
so any input size works, and the stem takes ``in_shape[0]`` channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers._registry import unknown_message
from trainers.models._init import kaiming_fan_out_init

VARIANTS = ("awp", "amp")


class WideBasic(nn.Module):
    """BN -> ReLU -> conv3x3 -> BN -> ReLU -> dropout -> conv3x3, plus an identity or 1x1 skip."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        # A projection needs normalised input as much as the branch does, so it shares ``pre``.
        skip = self.shortcut(pre) if self.shortcut is not None else x
        out = torch.relu(self.bn2(self.conv1(pre)))
        out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + skip


class AmpWideBasic(nn.Module):
    """The AMP code's ``Wide_Basic``: BN-ReLU-conv-dropout-BN-ReLU-conv(stride), skip from ``x``."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(torch.relu(self.bn2(out)))
        # The projection reads the raw input here, not the pre-activated one.
        return out + (self.shortcut(x) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """WRN-depth-k: stem conv, three stages of ``WideBasic``, BN -> ReLU -> pool -> linear."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
        variant: str = "awp",
    ) -> None:
        super().__init__()
        self.head_dropout = dropout if variant == "amp" else 0.0
        block = AmpWideBasic if variant == "amp" else WideBasic
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        stages = []
        in_planes = widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2), strict=True):
            blocks = []
            for i in range(n):
                blocks.append(block(in_planes, planes, stride if i == 0 else 1, dropout))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        # The AMP code's momentum=0.9 (see the module docstring); PyTorch's default 0.1 otherwise.
        self.bn = nn.BatchNorm2d(widths[3], momentum=0.9 if variant == "amp" else 0.1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        # Both codes' init: He-normal fan-out (xternalz's ``sqrt(2 / (k * k * out_channels))``).
        kaiming_fan_out_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.pool(torch.relu(self.bn(out))).flatten(1)
        if self.head_dropout:
            out = F.dropout(out, p=self.head_dropout, training=self.training)
        return self.fc(out)


def wide_resnet(
    num_classes: int,
    in_shape: tuple[int, ...],
    depth: int = 28,
    widen_factor: int = 10,
    dropout: float = 0.0,
    variant: str = "awp",
) -> WideResNet:
    """WRN-depth-widen_factor; ``variant`` is "awp" (default, xternalz) or "amp".

    The flat-minima papers use 16-8 (SAM), 28-10 (AMP, SAM) and 34-10 (AWP).
    """
    if len(in_shape) != 3:
        raise ValueError(f"wide_resnet needs in_shape (C, H, W), but got {in_shape=}")
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            f"wide_resnet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, ...), "
            f"but got {depth=}"
        )
    if widen_factor < 1:
        raise ValueError(f"wide_resnet widen_factor must be >= 1, but got {widen_factor=}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"wide_resnet dropout must be in [0, 1), but got {dropout=}")
    if variant not in VARIANTS:
        raise ValueError(unknown_message("wide_resnet variant", variant, list(VARIANTS)))
    return WideResNet(
        depth, widen_factor, num_classes, in_channels=in_shape[0], dropout=dropout, variant=variant
    )
