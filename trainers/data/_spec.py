"""``DataSpec``: which dataset, where it lives, and how it is augmented.

Everything here is checked when a spec is loaded, on any machine. Whether ``root`` exists is a
property of the machine that trains, so it is checked by ``check_data``/``build`` instead.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainers._registry import unknown_message
from trainers.data.datasets import DATASETS


class DataSpec(BaseModel):
    """A dataset from the ``trainers.data`` registry and its options.

    ``augment`` is the papers' recipe: 4-px zero-pad random crop plus random horizontal flip
    for CIFAR, the crop alone for SVHN (a mirrored digit is another glyph). It is ignored for
    mnist1d, digits and synthetic, which have no standard augmentation; ``autoaugment`` and
    ``cutout`` are refused for them.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str
    root: str | None = None  # directory holding the files; cifar10/cifar100/svhn only
    download: bool = False  # let torchvision fetch missing files (needs internet)
    augment: bool = True
    autoaugment: bool = False  # Cubuk et al. 2019 policy; uses the per-sample CPU path
    cutout: int = Field(0, ge=0)  # square side in px, 0 = off (DeVries & Taylor 2017: 16)
    num_train: int | None = Field(None, ge=1)  # first N (real) or generated N; None = default
    num_test: int | None = Field(None, ge=1)
    shape: list[int] | None = None  # synthetic only; per-example, default [3, 32, 32]
    num_classes: int | None = Field(None, ge=2)  # synthetic only; default 10
    seed: int = 0  # data generation and split (mnist1d, digits, synthetic), not shuffling
    device_resident: bool = True  # whole dataset on the device, augmented there

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
            for key, off in (("autoaugment", False), ("cutout", 0)):
                if getattr(self, key) != off:
                    raise ValueError(
                        f"{key} applies to image datasets (cifar10, cifar100, svhn),"
                        f" but got name={self.name!r}"
                    )
        return self

    @property
    def root_path(self) -> str:
        """``root`` with ``~`` expanded; only for datasets that need a root."""
        if self.root is None:
            raise ValueError(f"dataset {self.name!r} has no data.root")
        return os.path.expanduser(self.root)
