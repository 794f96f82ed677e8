"""Empirical risk minimisation: the plain gradient, one closure call. The baseline."""

from __future__ import annotations

import torch

from trainers.perturbations._base import Closure, Perturbation


class ERM(Perturbation):
    """``.grad = g(w)``; no hyperparameters."""

    kind = "erm"
    defaults = {}

    def backward(self, closure: Closure) -> torch.Tensor:
        return closure()
