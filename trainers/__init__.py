"""Plain-PyTorch trainers for flat-minima regularizers: ERM, SAM, AMP and AWP.

This package never imports Ray or MLflow: a sweep calls :func:`fit` once per trial, and an
exported config re-runs with ``python -m trainers FILE`` alone. ``EPOCH_METRICS`` name what
every epoch reports (validation included), ``FINAL_METRICS`` what only the last epoch reports
(the test set), and ``test_metric_for`` maps a validation metric to its test counterpart.
"""

from trainers.loop import (
    DIAGNOSTIC_METRICS,
    EPOCH_METRICS,
    FINAL_METRICS,
    FitResult,
    fit,
    test_metric_for,
)
from trainers.spec import TrainSpec

__all__ = [
    "DIAGNOSTIC_METRICS",
    "EPOCH_METRICS",
    "FINAL_METRICS",
    "FitResult",
    "TrainSpec",
    "fit",
    "test_metric_for",
]
