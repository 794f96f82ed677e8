"""VGG-16 with batch normalisation for 32x32 images.

Papers: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (configuration D, thirteen 3x3 convolutions); Ioffe & Szegedy, "Batch
Normalization", ICML 2015 (BN after every convolution).

``variant`` picks the reference network (counts for 10 classes; parameters / tensors):

- ``"kuangliu"`` (default): the CIFAR adaptation of kuangliu/pytorch-cifar ``models/vgg.py``.
  The five max-pools bring 32x32 down to 1x1, so the three 4096-wide ImageNet FC layers shrink
  to one 512 -> num_classes linear layer; convolutions keep their biases; PyTorch's default
  init. 14,728,266 / 54.
- ``"amp"``: the AMP code, hiyouga/AMP-Regularizer ``models/vgg.py`` ``vgg16``, the network
  behind the AMP paper's VGG16 numbers: the same conv stack with a ``Dropout(dropout)`` after
  every conv-BN-ReLU, then the classic 512-4096-4096-num_classes head with ReLU and
  ``Dropout(dropout)`` between its layers (the code's ``--dropout``, default 0), and the code's
  init loop (``trainers.models._init``: He-normal fan-out conv weights, BN at identity, zero
  linear biases; conv biases and linear weights keep PyTorch's default). 33,646,666 / 58.

Deviations, each parameter-free: global pooling is adaptive (kuangliu's ``AvgPool2d(1)``, the
AMP code's plain flatten), a no-op at 32x32 that lets larger inputs reach the 512-wide head; the
first convolution takes ``in_shape[0]`` channels.
"""

from __future__ import annotations

import torch
from torch import nn

from trainers._registry import unknown_message
from trainers.models._init import kaiming_fan_out_init

# Configuration D of Simonyan & Zisserman 2015, Table 1: output channels, "M" a 2x2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
VARIANTS = ("kuangliu", "amp")
FC_WIDTH = 4096  # the AMP code's hidden FC width, ImageNet VGG's


class VGG(nn.Module):
    """Conv-BN-ReLU stack given by ``cfg``, global average pool, then the classifier head."""

    def __init__(
        self,
        cfg: tuple[int | str, ...],
        num_classes: int,
        in_channels: int = 3,
        variant: str = "kuangliu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                if variant == "amp":
                    layers.append(nn.Dropout(dropout))
                channels = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        if variant == "kuangliu":
            self.classifier: nn.Module = nn.Linear(channels, num_classes)
        else:
            self.classifier = nn.Sequential(
                nn.Linear(channels, FC_WIDTH),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(FC_WIDTH, FC_WIDTH),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(FC_WIDTH, num_classes),
            )
            kaiming_fan_out_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg16_bn(
    num_classes: int,
    in_shape: tuple[int, ...],
    variant: str = "kuangliu",
    dropout: float = 0.0,
) -> VGG:
    """VGG-16-BN; ``variant`` is "kuangliu" (default, one linear layer) or "amp" (3 FC layers).

    Parameters for 10 classes: kuangliu 14,728,266, amp 33,646,666. ``dropout`` is the AMP
    code's ``--dropout`` and exists only in ``variant="amp"``.
    """
    if len(in_shape) != 3:
        raise ValueError(f"vgg16_bn needs in_shape (C, H, W), but got {in_shape=}")
    # Five 2x2 max-pools floor-divide each side by 32; anything smaller pools to nothing.
    if min(in_shape[1:]) < 32:
        raise ValueError(f"vgg16_bn needs H and W of at least 32, but got {in_shape=}")
    if variant not in VARIANTS:
        raise ValueError(unknown_message("vgg16_bn variant", variant, list(VARIANTS)))
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"vgg16_bn dropout must be in [0, 1), but got {dropout=}")
    if dropout and variant != "amp":
        raise ValueError(
            f"vgg16_bn dropout needs variant 'amp' (the only reference code with dropout), "
            f"but got {variant=} with {dropout=}"
        )
    return VGG(VGG16_CFG, num_classes, in_shape[0], variant=variant, dropout=dropout)
