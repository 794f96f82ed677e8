"""``DataSpec``: which dataset, where it lives, how it is split and how it is augmented.

Everything here is checked when a spec is loaded, on any machine. Whether ``root`` exists is a
property of the machine that trains, so it is checked by ``check_data``/``build`` instead.
"""

from __future__ import annotations

import math
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainers._registry import unknown_message
from trainers.data.datasets import (
    DATASETS,
    SYNTHETIC_NUM_TEST,
    SYNTHETIC_NUM_TRAIN,
    SYNTHETIC_SHAPE,
)

#: Values per synthetic example: generated data is held in memory, so its size is bounded.
MAX_EXAMPLE_SIZE = 2**24
MAX_SYNTHETIC_VALUES = 2**29
#: MNIST-1D examples generated for one spec (train + test): about 250 microseconds each on
#: one core, so at most about 4 minutes per node (the result is cached), and 320 MB.
MAX_MNIST1D = 1_000_000


class DataSpec(BaseModel):
    """A dataset from the ``trainers.data`` registry and its options.

    ``augment`` is the papers' recipe: a random crop of the image padded by ``crop_padding`` px
    on each side plus a random horizontal flip for CIFAR, the crop alone for SVHN (a mirrored
    digit is another glyph). The padding is black by default (torchvision's RandomCrop);
    ``pad_mode: grey`` fills it with pixel value 128, as the AMP official code does
    (``RandomCrop(32, padding=4, fill=128)``, SVHN with ``padding=2``), and ``pad_mode:
    reflect`` mirrors the border, as the AWP official code does (``np.pad(mode="reflect")``).
    Augmentation is ignored for mnist1d, digits and synthetic, which have no standard one;
    ``autoaugment``, ``cutout``, ``pad_mode`` and ``crop_padding`` are refused for them.

    Validation: ``val_fraction`` of the training pool (or exactly ``num_val`` examples) is held
    out as a validation split, disjoint from the test set, never augmented, and fixed by
    ``seed`` alone (not by the training seed, so re-training a finalist with other training
    seeds sees the same split). ``val_split`` says how it is carved: ``stratified`` draws each
    class's share at random (the default for mnist1d, digits and synthetic); ``last`` takes
    the pool's last N examples (the default for cifar10, cifar100 and svhn, whose files are not
    sorted by class). Deviation: the AWP official ``--val`` reads Rice et al.'s
    ``cifar10_validation_split.pth`` (``generate_validation.py``: 1000 examples of a
    ``np.random.seed(0)`` permutation); ``val_split: stratified`` with ``num_val: 1000`` is the
    closest seeded equivalent here.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    name: str
    root: str | None = None  # directory holding the files; cifar10/cifar100/svhn only
    download: bool = False  # let torchvision fetch missing files (needs internet)
    augment: bool = True
    autoaugment: bool = False  # Cubuk et al. 2019 policy; uses the per-sample CPU path
    cutout: int = Field(0, ge=0)  # square side in px, 0 = off (DeVries & Taylor 2017: 16)
    # The training pool before the validation split is carved from it: first N (real) or
    # generated N; None = the dataset's default. The train loader serves num_train - num_val.
    num_train: int | None = Field(None, ge=1)
    num_test: int | None = Field(None, ge=1)
    shape: list[int] | None = None  # synthetic only; per-example, default [3, 32, 32]
    num_classes: int | None = Field(None, ge=2)  # synthetic only; default 10
    seed: int = 0  # data generation, the train/test and the train/val split; not shuffling
    device_resident: bool = True  # whole dataset on the device, augmented there
    # Share of the training pool held out for validation, rounded, at least 1 example when
    # > 0; 0 = train on the whole pool and report no val_* metrics.
    val_fraction: float = Field(0.1, ge=0, lt=1)
    num_val: int | None = Field(None, ge=0)  # examples held out; overrides val_fraction
    # How the validation split is carved; None = the dataset's default (see the docstring).
    val_split: Literal["stratified", "last"] | None = None
    # Fill of the random crop's border: zeros (torchvision), grey 128 (AMP), reflect (AWP).
    pad_mode: Literal["zeros", "grey", "reflect"] = "zeros"
    crop_padding: int = Field(4, ge=0)  # px padded on each side before the random crop

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(unknown_message("dataset", v, DATASETS.names()))
        return v

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError(f"shape must be a non-empty list of positive sizes, but got {v}")
        if v is not None and math.prod(v) > MAX_EXAMPLE_SIZE:
            raise ValueError(
                f"shape must hold at most {MAX_EXAMPLE_SIZE} values per example (a 3x1024x1024 "
                f"image is 3.1M), but got {v} ({math.prod(v)})"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DataSpec:
        info = DATASETS.get(self.name)
        if self.name != "synthetic":
            for key in ("shape", "num_classes"):
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"{key} is only for dataset 'synthetic', but got name={self.name!r}"
                    )
        if info.needs_root and self.root is None:
            raise ValueError(f"dataset {self.name!r} needs data.root (the directory of its files)")
        if not info.image:
            off_values = (
                ("autoaugment", False),
                ("cutout", 0),
                ("pad_mode", "zeros"),
                ("crop_padding", 4),
            )
            for key, off in off_values:
                if getattr(self, key) != off:
                    raise ValueError(
                        f"{key} applies to image datasets (cifar10, cifar100, svhn),"
                        f" but got name={self.name!r}"
                    )
        if self.name == "synthetic":
            # Generated in memory at once (float32): 2**29 values are 2 GiB.
            n = (self.num_train or SYNTHETIC_NUM_TRAIN) + (self.num_test or SYNTHETIC_NUM_TEST)
            size = n * math.prod(self.shape or SYNTHETIC_SHAPE)
            if size > MAX_SYNTHETIC_VALUES:
                raise ValueError(
                    f"num_train + num_test times the shape's size must be at most "
                    f"{MAX_SYNTHETIC_VALUES} values for synthetic data, but got {size}"
                )
        if info.sizes is not None:
            # A real dataset's splits: refused here, before any trial starts, not in each
            # trial's loader.
            for key, size in zip(("num_train", "num_test"), info.sizes, strict=True):
                if (n := getattr(self, key)) is not None and n > size:
                    raise ValueError(
                        f"{key} must be at most {size} for dataset {self.name!r} (its "
                        f"{key.removeprefix('num_')} split), but got {n}"
                    )
        if self.name == "mnist1d":
            total = (self.num_train or 4000) + (self.num_test or 1000)
            if total > MAX_MNIST1D:
                raise ValueError(
                    f"num_train + num_test must be at most {MAX_MNIST1D} for dataset "
                    f"'mnist1d' (generated in memory), but got {total}"
                )
        if self.num_val is not None and self.num_train is not None:
            if self.num_val >= self.num_train:
                raise ValueError(
                    f"num_val must be less than num_train={self.num_train} (the training pool),"
                    f" but got {self.num_val}"
                )
        return self

    def val_size(self, pool: int) -> int:
        """Examples held out of a training pool of ``pool`` examples for validation."""
        if self.num_val is not None:
            n = self.num_val
        elif self.val_fraction > 0:
            n = max(1, round(self.val_fraction * pool))  # never silently no split
        else:
            n = 0
        if n >= pool:
            what = "num_val" if self.num_val is not None else f"val_fraction={self.val_fraction}"
            raise ValueError(
                f"{what} must leave training examples: the validation split must be smaller"
                f" than the training pool of {pool} (dataset {self.name!r}), but got {n}"
            )
        return n

    @property
    def root_path(self) -> str:
        """``root`` with ``~`` expanded; only for datasets that need a root."""
        if self.root is None:
            raise ValueError(f"dataset {self.name!r} has no data.root")
        return os.path.expanduser(self.root)


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
