"""A small base sweep spec for tests (the session's local Ray is in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import yaml

BASE_TRAIN: dict[str, Any] = {
    "model": {"name": "cnn1d"},
    "data": {"name": "mnist1d", "num_train": 600, "num_test": 300},
    "optim": {"lr": 0.1},
    "perturbation": {"kind": "amp"},
    "epochs": 3,
    "batch_size": 100,
    "device": "cpu",
}


def sweep_dict(name: str = "t", **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": name,
        "train": yaml.safe_load(yaml.safe_dump(BASE_TRAIN)),
        "space": {"name": "amp", "ranges": {"perturbation.radius": [0.005, 0.05]}},
        "searcher": {"sampler": "tpe", "seed": 0, "n_startup_trials": 2},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "num_samples": 4,
        "resources": {"cpu": 1},
    }
    d.update(over)
    return d
