"""Small models that train in seconds on a CPU: an MLP, a 1-D CNN and a 2-D CNN.

The MLP and the 1-D CNN are the baselines of Greydanus, "Scaling down Deep Learning" (MNIST-1D),
arXiv:2011.14439, 2020, from greydanus/mnist1d ``models.py``: ``MLPBase`` (two hidden layers of
100 ReLU units) and ``ConvBase`` (three stride-2 Conv1d layers of 25 channels, kernels 5-3-3,
padding 1, ReLU, a linear head on the flattened features: 125 inputs for length-40 signals).
``small_cnn`` is this project's own two-layer 2-D CNN, sized for sklearn's 8x8 digits.

Each takes ``batchnorm=True`` to insert BatchNorm after every hidden layer, because the
perturbation tests need models with and without BN statistics. With BN on, the layer before it
drops its bias: BN subtracts the batch mean, so a bias there has no effect on the output, and
would only add a direction that a weight perturbation can move along for nothing.
"""

from __future__ import annotations

import math

from torch import nn


def _norm1d(batchnorm: bool, features: int) -> list[nn.Module]:
    return [nn.BatchNorm1d(features)] if batchnorm else []


def _norm2d(batchnorm: bool, channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels)] if batchnorm else []


def mlp(
    num_classes: int,
    in_shape: tuple[int, ...],
    hidden: int = 100,
    depth: int = 2,
    batchnorm: bool = False,
) -> nn.Sequential:
    """Flatten, ``depth`` hidden Linear-ReLU layers of width ``hidden``, a linear head.

    ``depth=0`` is multinomial logistic regression; the default is MNIST-1D's ``MLPBase``.
    """
    if hidden < 1:
        raise ValueError(f"mlp hidden must be >= 1, but got {hidden=}")
    if depth < 0:
        raise ValueError(f"mlp depth must be >= 0, but got {depth=}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(in_shape)
    for _ in range(depth):
        layers += [nn.Linear(width, hidden, bias=not batchnorm), *_norm1d(batchnorm, hidden)]
        layers.append(nn.ReLU())
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


# MNIST-1D ConvBase: (kernel size, stride, padding) of its three Conv1d layers.
_CNN1D_LAYERS = ((5, 2, 1), (3, 2, 1), (3, 2, 1))


def cnn1d(
    num_classes: int,
    in_shape: tuple[int, ...],
    channels: int = 25,
    batchnorm: bool = False,
) -> nn.Sequential:
    """MNIST-1D's ``ConvBase`` for signals of shape (C, L); 5,210 parameters at (1, 40)."""
    if len(in_shape) != 2:
        raise ValueError(f"cnn1d needs in_shape (C, L), but got {in_shape=}")
    if channels < 1:
        raise ValueError(f"cnn1d channels must be >= 1, but got {channels=}")
    in_channels, length = in_shape
    layers: list[nn.Module] = []
    for kernel, stride, padding in _CNN1D_LAYERS:
        conv = nn.Conv1d(in_channels, channels, kernel, stride, padding, bias=not batchnorm)
        layers += [conv, *_norm1d(batchnorm, channels), nn.ReLU()]
        in_channels = channels
        length = (length + 2 * padding - kernel) // stride + 1
        if length < 1:
            raise ValueError(f"cnn1d needs a longer signal than L={in_shape[1]} ({in_shape=})")
    layers += [nn.Flatten(), nn.Linear(channels * length, num_classes)]
    return nn.Sequential(*layers)


def small_cnn(
    num_classes: int,
    in_shape: tuple[int, ...],
    channels: int = 32,
    batchnorm: bool = False,
) -> nn.Sequential:
    """Two conv3x3-ReLU-maxpool2 stages of ``channels`` channels, flatten, linear head.

    At (1, 8, 8) the head sees 2x2 maps: 10,858 parameters for 10 classes without BN.
    """
    if len(in_shape) != 3:
        raise ValueError(f"small_cnn needs in_shape (C, H, W), but got {in_shape=}")
    if min(in_shape[1:]) < 4:
        raise ValueError(f"small_cnn needs H and W of at least 4 (two 2x2 pools), {in_shape=}")
    if channels < 1:
        raise ValueError(f"small_cnn channels must be >= 1, but got {channels=}")
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for c_in in (c, channels):
        conv = nn.Conv2d(c_in, channels, 3, padding=1, bias=not batchnorm)
        layers += [conv, *_norm2d(batchnorm, channels), nn.ReLU(), nn.MaxPool2d(2)]
    layers += [nn.Flatten(), nn.Linear(channels * (h // 4) * (w // 4), num_classes)]
    return nn.Sequential(*layers)
