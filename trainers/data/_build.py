"""``build``: a ``DataSpec`` to train and test loaders on a device; ``check_data`` preflights it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from trainers.data._spec import DataSpec
from trainers.data.datasets import DATASETS, Arrays, DatasetDef
from trainers.data.loader import DeviceLoader, Loader, SampleLoader


@dataclass
class DataBundle:
    """Loaders and the facts a model and an attack need about the data."""

    train: Loader  # shuffled, augmented; call ``set_epoch(e)`` before epoch e
    test: Loader  # fixed order, no augmentation
    num_classes: int
    in_shape: tuple[int, ...]  # per example, e.g. (3, 32, 32) or (1, 40)
    num_train: int
    num_test: int
    # Normalisation applied to the inputs, per channel in [0, 1] pixel units; None where the
    # inputs are already standardised (mnist1d, digits, synthetic). An attack with a budget in
    # pixel units divides it by ``std``.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def check_data(spec: DataSpec) -> None:
    """Raise a one-line ValueError if this machine lacks the spec's files; loads nothing.

    Nothing to check for generated or bundled datasets, nor when ``download`` may fetch them.
    """
    info = DATASETS.get(spec.name)
    if not info.needs_root or spec.download:
        return
    root = spec.root_path
    if not os.path.isdir(root):
        raise ValueError(
            f"data root {spec.root!r} does not exist (dataset {spec.name});"
            " set data.root or data.download=true"
        )
    missing = [f for f in info.files if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise ValueError(
            f"data root {spec.root!r} lacks {', '.join(missing)} (dataset {spec.name});"
            " set data.root or data.download=true"
        )


def _image_transform(
    spec: DataSpec, info: DatasetDef, size: tuple[int, int], train: bool
) -> Callable[[object], Tensor]:
    """The per-sample (PIL) equivalent of the device path, plus AutoAugment."""
    from torchvision import transforms as T

    from trainers.data.loader import Cutout

    steps: list[object] = []
    if train and spec.augment:
        steps.append(T.RandomCrop(size, padding=info.crop_padding))
        if info.flip:
            steps.append(T.RandomHorizontalFlip())
    if train and spec.autoaugment:
        steps.append(T.AutoAugment(T.AutoAugmentPolicy[info.autoaugment_policy]))
    steps += [T.ToTensor(), T.Normalize(info.mean, info.std)]
    if train and spec.cutout > 0:
        steps.append(Cutout(spec.cutout))  # after Normalize, as DeVries & Taylor's code
    return T.Compose(steps)


# Fields that decide the arrays (not the augmentation or where they are served from).
_ARRAY_FIELDS = ("name", "root", "download", "num_train", "num_test", "shape", "num_classes",
                 "seed")
_CACHE: dict[str, Arrays] = {}


def _load_cached(spec: DataSpec) -> Arrays:
    """Load the arrays once per process: a reused Ray actor's next trial skips the work
    (MNIST-1D generation alone takes seconds). Holds the two most recent datasets."""
    key = spec.model_dump_json(include=set(_ARRAY_FIELDS))
    if key not in _CACHE:
        if len(_CACHE) >= 2:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = DATASETS.get(spec.name).load(spec)
    return _CACHE[key]


def build(
    spec: DataSpec,
    *,
    batch_size: int,
    device: torch.device | str,
    seed: int,
    test_batch_size: int | None = None,
) -> DataBundle:
    """Load ``spec``'s dataset and wrap it in loaders yielding batches on ``device``.

    ``seed`` drives shuffling and augmentation (with the epoch); ``spec.seed`` drives data
    generation. The device-resident path serves everything except AutoAugment, which needs
    per-image PIL ops; ``device_resident=False`` forces the per-sample CPU path as well.
    ``test_batch_size`` defaults to ``batch_size``.
    """
    check_data(spec)
    info = DATASETS.get(spec.name)
    arrays = _load_cached(spec)
    test_bs = batch_size if test_batch_size is None else test_batch_size
    aug = spec.augment and info.image
    train: Loader
    test: Loader
    if spec.device_resident and not spec.autoaugment:
        norm = dict(mean=info.mean, std=info.std)
        train = DeviceLoader(
            arrays.x_train,
            arrays.y_train,
            batch_size=batch_size,
            device=device,
            seed=seed,
            shuffle=True,
            crop_padding=info.crop_padding if aug else 0,
            flip=info.flip and aug,
            cutout=spec.cutout,
            **norm,
        )
        test = DeviceLoader(
            arrays.x_test,
            arrays.y_test,
            batch_size=test_bs,
            device=device,
            seed=seed,
            shuffle=False,
            **norm,
        )
    else:
        size = tuple(arrays.x_train.shape[-2:])
        tf_train = _image_transform(spec, info, size, train=True) if info.image else None
        tf_test = _image_transform(spec, info, size, train=False) if info.image else None
        train = SampleLoader(
            arrays.x_train,
            arrays.y_train,
            batch_size=batch_size,
            device=device,
            seed=seed,
            shuffle=True,
            transform=tf_train,
        )
        test = SampleLoader(
            arrays.x_test,
            arrays.y_test,
            batch_size=test_bs,
            device=device,
            seed=seed,
            shuffle=False,
            transform=tf_test,
        )
    return DataBundle(
        train=train,
        test=test,
        num_classes=arrays.num_classes,
        in_shape=tuple(arrays.x_train.shape[1:]),
        num_train=len(arrays.y_train),
        num_test=len(arrays.y_test),
        mean=info.mean,
        std=info.std,
    )
