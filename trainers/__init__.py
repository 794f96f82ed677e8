"""Plain-PyTorch trainers for flat-minima regularizers: ERM, SAM, AMP and AWP.

This package never imports Ray or MLflow: a sweep calls :func:`fit` once per trial, and an
exported config re-runs with ``python -m trainers FILE`` alone.
"""

from trainers.loop import FitResult, fit
from trainers.spec import TrainSpec

__all__ = ["FitResult", "TrainSpec", "fit"]
