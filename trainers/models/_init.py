"""The weight initialisation shared by the official CIFAR codes this project reproduces.

The AMP code (hiyouga/AMP-Regularizer, every file in ``models/``), the AWP code's WideResNet
(csdongxian/AWP ``AT_AWP/wideresnet.py``, from xternalz/WideResNet-pytorch) and
dyhan0920/PyramidNet-PyTorch all end their constructors with the same loop: He-normal over
fan-out for convolution weights, BatchNorm at identity (scale 1, shift 0) and zero linear biases.
Everything the loop does not touch keeps PyTorch's default: linear weights, and convolution
biases where a model has them (the AMP code's PreActResNet and VGG do), stay
``kaiming_uniform_(a=sqrt(5))`` and ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
"""

from __future__ import annotations

from torch import nn


def kaiming_fan_out_init(model: nn.Module) -> None:
    """Apply the official codes' init loop to every submodule of ``model``, in place."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
