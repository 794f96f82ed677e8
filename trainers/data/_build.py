"""``build``: a ``DataSpec`` to train, validation and test loaders on a device;
``check_data`` (in ``trainers.data._spec``, free of PyTorch) preflights it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from trainers.data._spec import DataSpec, check_data
from trainers.data._split import split_indices
from trainers.data.datasets import DATASETS, Arrays, DatasetDef
from trainers.data.loader import GREY, DeviceLoader, Loader, SampleLoader


@dataclass
class DataBundle:
    """Loaders and the facts a model and an attack need about the data."""

    train: Loader  # shuffled, augmented; call ``set_epoch(e)`` before epoch e
    val: Loader | None  # carved from the training pool; fixed order, no augmentation
    test: Loader  # fixed order, no augmentation
    num_classes: int
    in_shape: tuple[int, ...]  # per example, e.g. (3, 32, 32) or (1, 40)
    num_train: int  # examples the train loader serves: the pool less the validation split
    num_val: int  # 0 when there is no validation split
    num_test: int
    # Normalisation applied to the inputs, per channel in [0, 1] pixel units; None where the
    # inputs are already standardised (mnist1d, digits, synthetic). An attack with a budget in
    # pixel units divides it by ``std``.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def _image_transform(
    spec: DataSpec, info: DatasetDef, size: tuple[int, int], train: bool
) -> Callable[[object], Tensor]:
    """The per-sample (PIL) equivalent of the device path, plus AutoAugment."""
    from torchvision import transforms as T

    from trainers.data.loader import Cutout

    steps: list[object] = []
    if train and spec.augment:
        fill = GREY if spec.pad_mode == "grey" else 0
        mode = "reflect" if spec.pad_mode == "reflect" else "constant"
        steps.append(T.RandomCrop(size, padding=spec.crop_padding, fill=fill, padding_mode=mode))
        if info.flip:
            steps.append(T.RandomHorizontalFlip())
    if train and spec.autoaugment:
        steps.append(T.AutoAugment(T.AutoAugmentPolicy[info.autoaugment_policy]))
    steps += [T.ToTensor(), T.Normalize(info.mean, info.std)]
    if train and spec.cutout > 0:
        steps.append(Cutout(spec.cutout))  # after Normalize, as DeVries & Taylor's code
    return T.Compose(steps)


# Fields that decide the arrays (not the augmentation or where they are served from).
_ARRAY_FIELDS = (
    "name",
    "root",
    "download",
    "num_train",
    "num_test",
    "shape",
    "num_classes",
    "seed",
)
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

    ``seed`` (the training seed) drives shuffling and augmentation (with the epoch);
    ``spec.seed`` drives data generation and the train/validation split, so the split is the
    same for every training seed. The device-resident path serves everything except
    AutoAugment, which needs per-image PIL ops; ``device_resident=False`` forces the
    per-sample CPU path as well. ``test_batch_size`` (default ``batch_size``) batches the
    validation and test sets, which are never augmented.
    """
    check_data(spec)
    info = DATASETS.get(spec.name)
    arrays = _load_cached(spec)
    test_bs = batch_size if test_batch_size is None else test_batch_size
    n_val = spec.val_size(len(arrays.y_train))
    train_idx, val_idx = split_indices(
        arrays.y_train, n_val, spec.val_split or info.val_split, spec.seed
    )
    # Index only what the split moves: a "last" split or none keeps views, not copies.
    x_train, y_train = _take(arrays.x_train, train_idx), _take(arrays.y_train, train_idx)
    x_val, y_val = _take(arrays.x_train, val_idx), _take(arrays.y_train, val_idx)
    aug = spec.augment and info.image
    if aug and spec.pad_mode == "reflect" and spec.crop_padding >= min(x_train.shape[-2:]):
        raise ValueError(
            f"crop_padding must be less than the image side {min(x_train.shape[-2:])} with"
            f" pad_mode 'reflect', but got {spec.crop_padding}"
        )

    def loader(x: Tensor, y: Tensor, train: bool) -> Loader:
        """The train loader (shuffled, augmented) or an evaluation one (neither)."""
        common = dict(
            batch_size=batch_size if train else test_bs, device=device, seed=seed, shuffle=train
        )
        if spec.device_resident and not spec.autoaugment:
            return DeviceLoader(
                x,
                y,
                mean=info.mean,
                std=info.std,
                crop_padding=spec.crop_padding if aug and train else 0,
                pad_mode=spec.pad_mode,
                flip=info.flip and aug and train,
                cutout=spec.cutout if train else 0,
                **common,
            )
        size = tuple(x.shape[-2:])
        transform = _image_transform(spec, info, size, train=train) if info.image else None
        return SampleLoader(x, y, transform=transform, **common)

    return DataBundle(
        train=loader(x_train, y_train, train=True),
        val=loader(x_val, y_val, train=False) if n_val > 0 else None,
        test=loader(arrays.x_test, arrays.y_test, train=False),
        num_classes=arrays.num_classes,
        in_shape=tuple(arrays.x_train.shape[1:]),
        num_train=len(y_train),
        num_val=n_val,
        num_test=len(arrays.y_test),
        mean=info.mean,
        std=info.std,
    )


def _take(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]`` for sorted indices; a slice (a view) when they are contiguous."""
    if len(idx) == 0:
        return x[:0]
    first, last = int(idx[0]), int(idx[-1])
    if last - first + 1 == len(idx):
        return x[first : last + 1]
    return x[idx]
