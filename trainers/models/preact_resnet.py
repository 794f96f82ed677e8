"""PreAct ResNet-18 for 32x32 images.

Paper: He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016
(arXiv:1603.05027): full pre-activation residual units, BN -> ReLU -> conv.

Architecture: kuangliu/pytorch-cifar ``models/preact_resnet.py``, the network the AWP code
(csdongxian/AWP) and the AMP code (hiyouga/AMP-Regularizer, ``models/preresnet.py``) train on
CIFAR: a 3x3 stride-1 stem with no max-pool (32x32 inputs are already small), stages of
64-128-256-512 channels, bias-free convolutions, a 1x1 projection shortcut taken from the
pre-activated input when the shape changes, then global average pool -> linear.

The three codebases differ in the head. kuangliu pools the last block's raw output: 11,171,146
parameters on CIFAR-10, the default here. The AWP code (via Rice et al. 2020,
locuslab/robust_overfitting) and the AMP code insert the final BN -> ReLU that the paper's
pre-activation design implies: ``head_bn=True``, +1,024 parameters (11,172,170). The AMP code also
gives its block convolutions biases; neither other codebase does, and neither does this one.

Deviations, each parameter-free: global pooling is adaptive (``AvgPool2d(4)`` in the original) so
any input size works, and the stem takes ``in_shape[0]`` channels.
"""

from __future__ import annotations

import torch
from torch import nn


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


class PreActResNet(nn.Module):
    """Stem conv, four stages of ``PreActBlock``s, optional BN -> ReLU, pooled linear head."""

    def __init__(
        self,
        num_blocks: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
        head_bn: bool = False,
    ) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        # The last unit ends on a conv; without this its output reaches the pool un-normalised.
        self.head: nn.Module = (
            nn.Sequential(nn.BatchNorm2d(512), nn.ReLU()) if head_bn else nn.Identity()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.pool(self.head(out))
        return self.linear(out.flatten(1))


def preact_resnet18(
    num_classes: int, in_shape: tuple[int, ...], head_bn: bool = False
) -> PreActResNet:
    """PreActResNet-18, two blocks per stage: 11,171,146 parameters for 10 classes.

    ``head_bn=True`` adds the final BN -> ReLU of the AWP and AMP code (11,172,170).
    """
    if len(in_shape) != 3:
        raise ValueError(f"preact_resnet18 needs in_shape (C, H, W), but got {in_shape=}")
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels=in_shape[0], head_bn=head_bn)
