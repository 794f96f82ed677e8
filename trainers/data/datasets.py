"""The dataset registry: where each dataset's tensors come from, and how it is normalised.

A loader returns CPU tensors; ``trainers.data.build`` moves them to the device and batches them.
Images (CIFAR, SVHN) stay uint8 NCHW so the device holds a quarter of the float32 bytes;
MNIST-1D, digits and synthetic data are float32 and already standardised.

- CIFAR-10/100 (Krizhevsky 2009) and SVHN (Netzer et al. 2011) are read from their genuine
  on-disk formats by torchvision's classes (``trainers.data._vision``), first N examples kept.
- MNIST-1D (Greydanus 2020) is generated offline with ``mnist1d.data.make_dataset`` and kept in
  an on-disk cache (``FLATSWEEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/flatsweep``): generating 5000
  examples takes seconds, which every new trial worker would otherwise pay again.
- digits is scikit-learn's bundled 8x8 UCI digits (1797 images), split 80/20 with ``spec.seed``.
- synthetic is Gaussian inputs labelled by a fixed random linear teacher, so it is learnable.

The validation split is carved from the training arrays afterwards (``split_train_val``), so the
test set is never touched by it and the arrays cached per process are the same for any split.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from trainers._registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

    from trainers.data._spec import DataSpec


@dataclass(frozen=True)
class Arrays:
    """One dataset's examples on the CPU: x uint8 NCHW images or float32, y int64 labels."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int


@dataclass(frozen=True)
class DatasetDef:
    """A registered dataset and the metadata that ``build`` and ``DataSpec`` need."""

    name: str
    load: Callable[[DataSpec], Arrays]
    # Files that must exist under ``root``; empty for datasets that need no root.
    files: tuple[str, ...] = ()
    # uint8 images that take the pad-crop/flip/Cutout/AutoAugment augmentations.
    image: bool = False
    mean: tuple[float, ...] | None = None  # per channel, in [0, 1] pixel units
    std: tuple[float, ...] | None = None
    flip: bool = False  # random horizontal flip with probability 1/2
    autoaugment_policy: str | None = None  # torchvision AutoAugmentPolicy member name
    # How the validation split is carved unless ``DataSpec.val_split`` says otherwise.
    val_split: Literal["stratified", "last"] = "stratified"
    # Examples in its train and test splits (a real dataset), checked when a spec is loaded
    # (before any trial starts); None for generated data, which ``DataSpec`` bounds itself.
    sizes: tuple[int, int] | None = None

    @property
    def needs_root(self) -> bool:
        return bool(self.files)


DATASETS: Registry[DatasetDef] = Registry("dataset")


def _register(name: str, **meta: object) -> Callable[[Callable], Callable]:
    def deco(load: Callable[[DataSpec], Arrays]) -> Callable[[DataSpec], Arrays]:
        DATASETS.register(name)(DatasetDef(name=name, load=load, **meta))  # type: ignore[arg-type]
        return load

    return deco


def _first(x: Tensor, n: int | None, what: str, spec: DataSpec) -> Tensor:
    """The first ``n`` examples (deterministic subset), refusing more than the split holds."""
    if n is None:
        return x
    if n > len(x):
        raise ValueError(f"{what} must be at most {len(x)} for dataset {spec.name!r}, but got {n}")
    return x[:n]


def _subset(
    spec: DataSpec, x_tr: Tensor, y_tr: Tensor, x_te: Tensor, y_te: Tensor, k: int
) -> Arrays:
    return Arrays(
        x_train=_first(x_tr, spec.num_train, "num_train", spec),
        y_train=_first(y_tr, spec.num_train, "num_train", spec),
        x_test=_first(x_te, spec.num_test, "num_test", spec),
        y_test=_first(y_te, spec.num_test, "num_test", spec),
        num_classes=k,
    )


# The papers' augmentation for CIFAR: padded random 32x32 crop (``DataSpec.crop_padding``,
# ``pad_mode``), random flip (He et al. 2016). SVHN keeps the crop but drops the flip: mirrored
# digits are other glyphs. Their validation split is the last N training images by default.
_CIFAR = dict(image=True, flip=True, autoaugment_policy="CIFAR10", val_split="last")


@_register(
    "cifar10",
    files=(
        *(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
        "cifar-10-batches-py/test_batch",
    ),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2471, 0.2435, 0.2616),
    sizes=(50000, 10000),
    **_CIFAR,
)
def _cifar10(spec: DataSpec) -> Arrays:
    from trainers.data._vision import load_cifar

    return _subset(spec, *load_cifar("cifar10", spec.root_path, spec.download), 10)


@_register(
    "cifar100",
    files=("cifar-100-python/train", "cifar-100-python/test"),
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    sizes=(50000, 10000),
    **_CIFAR,
)
def _cifar100(spec: DataSpec) -> Arrays:
    from trainers.data._vision import load_cifar

    return _subset(spec, *load_cifar("cifar100", spec.root_path, spec.download), 100)


@_register(
    "svhn",
    files=("train_32x32.mat", "test_32x32.mat"),
    image=True,
    mean=(0.4377, 0.4438, 0.4728),
    std=(0.198, 0.201, 0.197),
    sizes=(73257, 26032),
    flip=False,
    autoaugment_policy="SVHN",
    val_split="last",
)
def _svhn(spec: DataSpec) -> Arrays:
    from trainers.data._vision import load_svhn

    return _subset(spec, *load_svhn(spec.root_path, spec.download), 10)


def cache_dir() -> Path:
    """Where generated datasets are cached: ``FLATSWEEP_CACHE_DIR``, else the XDG cache."""
    if os.environ.get("FLATSWEEP_CACHE_DIR"):
        return Path(os.environ["FLATSWEEP_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "flatsweep"


def _generate_mnist1d(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # mnist1d.utils imports matplotlib; keep that cost off ``import trainers.data``.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    # We split ourselves (train_split=1), which for 4000/1000 equals the reference 0.8 split.
    # make_dataset, unlike get_dataset, writes no pickle.
    args.num_samples, args.train_split, args.seed = num_samples, 1.0, seed
    # make_dataset seeds the global ``random`` and ``np.random`` states; give the caller's back.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return np.asarray(data["x"]), np.asarray(data["y"])


def _mnist1d_cached(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``_generate_mnist1d`` through the on-disk cache; any cache trouble means regenerate."""
    # The generator's other arguments are the installed mnist1d's defaults: key on its version.
    key = f"mnist1d-{metadata.version('mnist1d')}-n{num_samples}-seed{seed}"
    path = cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) == key:
                return f["x"], f["y"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # absent, unreadable or from another writer's crash: regenerate
    x, y = _generate_mnist1d(num_samples, seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: workers on one node may race, and a reader never sees half a file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, x=x, y=y, key=np.array(key))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the regeneration next time
    return x, y


@_register("mnist1d")
def _mnist1d(spec: DataSpec) -> Arrays:
    import torch

    n_train = 4000 if spec.num_train is None else spec.num_train  # the reference 4000/1000
    n_test = 1000 if spec.num_test is None else spec.num_test
    # make_dataset draws num_samples // 10 per class; round up and keep the first n_train +
    # n_test of its shuffled output.
    xs, ys = _mnist1d_cached(10 * math.ceil((n_train + n_test) / 10), spec.seed)
    x = torch.from_numpy(xs).float().unsqueeze(1)  # (N, 1, 40)
    y = torch.from_numpy(ys).long()
    return Arrays(
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_test=x[n_train : n_train + n_test],
        y_test=y[n_train : n_train + n_test],
        num_classes=10,
    )


@_register("digits", sizes=(1437, 360))
def _digits(spec: DataSpec) -> Arrays:
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()  # ships inside scikit-learn: no download
    x = torch.from_numpy(bunch.data).float().view(-1, 1, 8, 8) / 16.0  # pixels are 0..16
    y = torch.from_numpy(bunch.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(spec.seed))
    n_test = math.ceil(0.2 * len(y))  # 360 of 1797, as sklearn's train_test_split(0.2)
    tr, te = perm[n_test:], perm[:n_test]
    # One scalar mean/std from the training split: corner pixels are constant, so a
    # per-pixel std would divide by zero.
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return _subset(spec, x[tr], y[tr], x[te], y[te], 10)


#: The synthetic dataset's defaults (``DataSpec`` bounds its size with them).
SYNTHETIC_SHAPE, SYNTHETIC_NUM_TRAIN, SYNTHETIC_NUM_TEST = (3, 32, 32), 512, 128


@_register("synthetic")
def _synthetic(spec: DataSpec) -> Arrays:
    import torch

    shape = tuple(spec.shape) if spec.shape is not None else SYNTHETIC_SHAPE
    k = 10 if spec.num_classes is None else spec.num_classes
    n_train = SYNTHETIC_NUM_TRAIN if spec.num_train is None else spec.num_train
    n_test = SYNTHETIC_NUM_TEST if spec.num_test is None else spec.num_test
    g = torch.Generator().manual_seed(spec.seed)
    x = torch.randn(n_train + n_test, *shape, generator=g)
    d = math.prod(shape)
    # Labels are the argmax of a fixed random linear map, so a linear model can reach 100%.
    teacher = torch.randn(d, k, generator=g) / math.sqrt(d)
    y = (x.view(len(x), d) @ teacher).argmax(1)
    return Arrays(x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes=k)
