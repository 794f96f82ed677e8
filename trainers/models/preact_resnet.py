"""PreAct ResNet-18 for 32x32 images, in the three forms the reference codes train.

Paper: He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016
(arXiv:1603.05027): full pre-activation residual units, BN -> ReLU -> conv.

Common to every variant: a 3x3 stride-1 stem with no max-pool (32x32 inputs are already small),
four stages of two blocks with 64-128-256-512 channels, a 1x1 projection shortcut taken from the
pre-activated input when the shape changes, then global average pool -> linear.

``variant`` picks the reference network (counts for 10 classes; parameters / tensors):

- ``"kuangliu"`` (default): kuangliu/pytorch-cifar ``models/preact_resnet.py``. Bias-free convs,
  the identity shortcut adds the raw input, the last block's raw output is pooled, PyTorch's
  default init. 11,171,146 / 54.
- ``"awp"``: the AWP code, csdongxian/AWP ``AT_AWP/preactresnet.py`` ``PreActResNet18`` (from
  Rice et al. 2020, locuslab/robust_overfitting): kuangliu plus the final BN -> ReLU that the
  pre-activation design implies, PyTorch's default init. 11,172,170 / 56.
- ``"amp"``: the AMP code, hiyouga/AMP-Regularizer ``models/preresnet.py`` ``preactresnet18``.
  Every block conv and projection has a bias, the identity shortcut adds the *pre-activated*
  input (its ``self.shortcut = nn.Sequential()`` is applied to ``relu(bn(x))``), ``dropout``
  sits between the two convs of a block and before the linear layer (the code's ``--dropout``,
  default 0), the final BN -> ReLU is there, and the init is the code's loop
  (``trainers.models._init``): He-normal fan-out conv weights, BN at identity, zero linear bias;
  conv biases keep PyTorch's default uniform init, as there. 11,176,906 / 75 (CIFAR-100:
  11,223,076). AMP's radius is absolute per tensor, so these extra tensors change what a given
  epsilon means.

Deviations, each parameter-free: global pooling is adaptive (``AvgPool2d(4)`` in every original)
so any input size works, and the stem takes ``in_shape[0]`` channels. Module names differ from
the originals (state dicts are not interchangeable by key) but parameters are created in the
originals' order with the same shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers._registry import unknown_message
from trainers.models._init import kaiming_fan_out_init

VARIANTS = ("kuangliu", "awp", "amp")


class PreActBlock(nn.Module):
    """Two 3x3 convolutions, each preceded by BN -> ReLU (He et al. 2016, Fig. 4e)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        # The projection reads the pre-activated input, as in the paper's full pre-activation
        # unit; the identity path reads the raw input so the skip stays a pure identity.
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class AmpPreActBlock(nn.Module):
    """The AMP code's ``PreActBlock``: biased convs, dropout inside, skip from ``relu(bn(x))``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        # Unlike He et al. and kuangliu, the AMP code's identity skip also reads the
        # pre-activated input: both paths start from ``out``.
        shortcut = self.shortcut(out) if self.shortcut is not None else out
        out = torch.relu(self.bn2(self.conv1(out)))
        if self.dropout:  # skipped at 0 so the default costs no extra kernel
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class PreActResNet(nn.Module):
    """Stem conv, four stages of pre-activation blocks, optional BN -> ReLU, pooled linear head."""

    def __init__(
        self,
        num_blocks: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
        variant: str = "kuangliu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.variant = variant
        self.dropout = dropout
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        # The last unit ends on a conv; without this its output reaches the pool un-normalised
        # (kuangliu's choice; the AWP and AMP codes add it).
        self.head: nn.Module = (
            nn.Sequential(nn.BatchNorm2d(512), nn.ReLU())
            if variant != "kuangliu"
            else nn.Identity()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)
        if variant == "amp":
            kaiming_fan_out_init(self)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for s in [stride] + [1] * (num_blocks - 1):
            if self.variant == "amp":
                layers.append(AmpPreActBlock(self.in_planes, planes, s, self.dropout))
            else:
                layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.pool(self.head(out)).flatten(1)
        if self.dropout:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.linear(out)


def preact_resnet18(
    num_classes: int,
    in_shape: tuple[int, ...],
    variant: str = "kuangliu",
    dropout: float = 0.0,
) -> PreActResNet:
    """PreActResNet-18, two blocks per stage; ``variant`` is "kuangliu", "awp" or "amp".

    Parameters for 10 classes: kuangliu 11,171,146, awp 11,172,170, amp 11,176,906.
    ``dropout`` is the AMP code's ``--dropout`` and exists only in ``variant="amp"``.
    """
    if len(in_shape) != 3:
        raise ValueError(f"preact_resnet18 needs in_shape (C, H, W), but got {in_shape=}")
    if variant not in VARIANTS:
        raise ValueError(unknown_message("preact_resnet18 variant", variant, list(VARIANTS)))
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"preact_resnet18 dropout must be in [0, 1), but got {dropout=}")
    if dropout and variant != "amp":
        raise ValueError(
            f"preact_resnet18 dropout needs variant 'amp' (the only reference code with "
            f"dropout), but got {variant=} with {dropout=}"
        )
    return PreActResNet(
        (2, 2, 2, 2), num_classes, in_channels=in_shape[0], variant=variant, dropout=dropout
    )
