"""Empirical risk minimisation: the plain gradient, one closure call. The baseline.

Semantics: ``docs/algorithms.md``. ``bn_update`` is accepted for a uniform spec and has no
effect: the only pass is the unperturbed one.
"""

from __future__ import annotations

from torch import nn

from trainers.perturbations._base import Perturbation
from trainers.spec import BNUpdate, ERMSpec

_DEFAULT = ERMSpec()


class ERM(Perturbation[ERMSpec]):
    """``.grad = g(w)``; no hyperparameters."""

    kind = "erm"

    def __init__(self, model: nn.Module, *, bn_update: BNUpdate = _DEFAULT.bn_update) -> None:
        super().__init__(model, bn_update=bn_update)

    @property
    def perturbed_calls(self) -> int:
        return 0

    def _move(self, step: int) -> None:
        raise AssertionError("ERM has no perturbed calls")  # backward never calls it
