"""Wide ResNet (WRN-depth-k) for 32x32 images.

Paper: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (arXiv:1605.07146):
pre-activation basic blocks B(3,3), three stages of 16k-32k-64k channels, ``n = (depth - 4) / 6``
blocks per stage, dropout between the two convolutions of a block.

Architecture: the PyTorch port xternalz/WideResNet-pytorch, which the AWP code (csdongxian/AWP,
via TRADES) trains. A block whose shape changes pre-activates its input once and feeds that to
both the residual branch and the 1x1 projection; an identity block adds its raw input. All convs
are bias-free. Parameter counts on CIFAR-10 match the published ones to three digits: WRN-16-8
10,961,370 and WRN-28-10 36,479,194 (11.0M, 36.5M in the paper's Table), WRN-34-10 46,160,474
(46.2M, as quoted for the Madry et al. / TRADES / AWP robust-training network).

Deviations, each parameter-free: global pooling is adaptive (``AvgPool2d(8)`` in the original) so
any input size works, and the stem takes ``in_shape[0]`` channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


class WideResNet(nn.Module):
    """WRN-depth-k: stem conv, three stages of ``WideBasic``, BN -> ReLU -> pool -> linear."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        stages = []
        in_planes = widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2), strict=True):
            blocks = []
            for i in range(n):
                blocks.append(WideBasic(in_planes, planes, stride if i == 0 else 1, dropout))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(widths[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        # The port's init: He-normal over fan-out (its ``sqrt(2 / (k * k * out_channels))``).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.pool(torch.relu(self.bn(out)))
        return self.fc(out.flatten(1))


def wide_resnet(
    num_classes: int,
    in_shape: tuple[int, ...],
    depth: int = 28,
    widen_factor: int = 10,
    dropout: float = 0.0,
) -> WideResNet:
    """WRN-depth-widen_factor; the flat-minima papers use 16-8, 28-10 and 34-10."""
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
    return WideResNet(depth, widen_factor, num_classes, in_channels=in_shape[0], dropout=dropout)
