"""VGG-16 with batch normalisation for 32x32 images.

Papers: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (configuration D, thirteen 3x3 convolutions); Ioffe & Szegedy, "Batch
Normalization", ICML 2015 (BN after every convolution).

Architecture: the CIFAR adaptation of kuangliu/pytorch-cifar ``models/vgg.py`` — the five
max-pools bring 32x32 down to 1x1, so the three 4096-wide ImageNet FC layers shrink to one
512 -> num_classes linear layer (14,728,266 parameters on CIFAR-10). Convolutions keep their
biases, as there.

The AMP code (hiyouga/AMP-Regularizer ``models/vgg.py``) keeps a 512-4096-4096-num_classes head
instead; ``classifier="mlp"`` builds that head (with ``dropout`` between its layers) to match the
network behind the AMP paper's VGG numbers (33,646,666 parameters on CIFAR-10).

Deviations: global pooling is adaptive, a no-op at 32x32 that lets larger inputs reach the 512-wide
head; the first convolution takes ``in_shape[0]`` channels.
"""

from __future__ import annotations

import torch
from torch import nn

# Configuration D of Simonyan & Zisserman 2015, Table 1: output channels, "M" a 2x2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
CLASSIFIERS = ("linear", "mlp")


class VGG(nn.Module):
    """Conv-BN-ReLU stack given by ``cfg``, global average pool, then the classifier head."""

    def __init__(
        self,
        cfg: tuple[int | str, ...],
        num_classes: int,
        in_channels: int = 3,
        classifier: str = "linear",
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
                channels = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        if classifier == "linear":
            self.classifier: nn.Module = nn.Linear(channels, num_classes)
        else:
            self.classifier = nn.Sequential(
                nn.Linear(channels, 4096),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(4096, num_classes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg16_bn(
    num_classes: int,
    in_shape: tuple[int, ...],
    classifier: str = "linear",
    dropout: float = 0.0,
) -> VGG:
    """VGG-16-BN; ``classifier`` is "linear" (kuangliu, default) or "mlp" (the AMP code)."""
    if len(in_shape) != 3:
        raise ValueError(f"vgg16_bn needs in_shape (C, H, W), but got {in_shape=}")
    # Five 2x2 max-pools floor-divide each side by 32; anything smaller pools to nothing.
    if min(in_shape[1:]) < 32:
        raise ValueError(f"vgg16_bn needs H and W of at least 32, but got {in_shape=}")
    if classifier not in CLASSIFIERS:
        raise ValueError(f"vgg16_bn classifier must be one of {CLASSIFIERS}, but got {classifier=}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"vgg16_bn dropout must be in [0, 1), but got {dropout=}")
    return VGG(VGG16_CFG, num_classes, in_shape[0], classifier=classifier, dropout=dropout)
