"""Datasets as device-resident loaders: ``DataSpec`` -> ``build`` -> ``DataBundle``.

Registered datasets: cifar10, cifar100, svhn (read from disk), mnist1d (generated offline),
digits (bundled with scikit-learn) and synthetic (a random linear teacher). Each gets a
validation split carved from its training set (``split_indices``). Nothing here
imports Ray or MLflow, and nothing downloads unless ``DataSpec.download`` is set.
"""

from trainers.data._build import DataBundle, build, check_data
from trainers.data._spec import DataSpec
from trainers.data._split import split_indices
from trainers.data.datasets import DATASETS
from trainers.data.loader import DeviceLoader, Loader, SampleLoader, epoch_generator

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
