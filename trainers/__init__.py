"""Plain-PyTorch trainers for flat-minima regularizers: ERM, SAM, AMP and AWP.

This package never imports Ray or MLflow: a sweep calls :func:`fit` once per trial, and an
exported config re-runs with ``python -m trainers FILE`` alone. ``EPOCH_METRICS`` name what
every epoch reports (validation included), ``FINAL_METRICS`` what only the last epoch reports
(the test set's numbers, ``TEST_METRICS``, and the run's totals), and ``test_metric_for`` maps
a validation metric to its test counterpart.

``TrainSpec`` and the metric names load without PyTorch (a sweep's driver checks specs and
objectives with them); ``fit`` and ``FitResult`` import it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainers._lazy import lazy_attributes
from trainers.metrics import (
    DIAGNOSTIC_METRICS,
    EPOCH_METRICS,
    FINAL_METRICS,
    TEST_METRICS,
    test_metric_for,
)
from trainers.spec import TrainSpec

if TYPE_CHECKING:
    from trainers.loop import FitResult, fit

# the training loop (and PyTorch) on first use
__getattr__ = lazy_attributes(__name__, {"fit": "trainers.loop", "FitResult": "trainers.loop"})


__all__ = [
    "DIAGNOSTIC_METRICS",
    "EPOCH_METRICS",
    "FINAL_METRICS",
    "TEST_METRICS",
    "FitResult",
    "TrainSpec",
    "fit",
    "test_metric_for",
]
