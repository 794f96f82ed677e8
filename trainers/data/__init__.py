"""Datasets as device-resident loaders: ``DataSpec`` -> ``build`` -> ``DataBundle``.

Registered datasets: cifar10, cifar100, svhn (read from disk), mnist1d (generated offline),
digits (bundled with scikit-learn) and synthetic (a random linear teacher). Each gets a
validation split carved from its training set (``split_indices``). Nothing here
imports Ray or MLflow, and nothing downloads unless ``DataSpec.download`` is set.

``DataSpec``, ``check_data`` and ``DATASETS`` load without PyTorch, so a spec is checked
(``sweeps validate``, a sweep's driver) without its import, about 2 s on a small CPU; the
names that need PyTorch load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainers._lazy import lazy_attributes
from trainers.data._spec import DataSpec, check_data
from trainers.data.datasets import DATASETS

if TYPE_CHECKING:
    from trainers.data._build import DataBundle, build
    from trainers.data._split import split_indices
    from trainers.data.loader import DeviceLoader, Loader, SampleLoader, epoch_generator

__getattr__ = lazy_attributes(
    __name__,
    {
        "DataBundle": "trainers.data._build",
        "build": "trainers.data._build",
        "split_indices": "trainers.data._split",
        "DeviceLoader": "trainers.data.loader",
        "Loader": "trainers.data.loader",
        "SampleLoader": "trainers.data.loader",
        "epoch_generator": "trainers.data.loader",
    },
)


__all__ = [
    "DATASETS",
    "DataBundle",
    "DataSpec",
    "DeviceLoader",
    "Loader",
    "SampleLoader",
    "build",
    "check_data",
    "epoch_generator",
    "split_indices",
]
