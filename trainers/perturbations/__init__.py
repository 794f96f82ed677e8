"""Perturbations behind one gradient contract: ``loss = p.backward(closure)``.

Kinds: ``erm``, ``sam`` (and ASAM via ``adaptive``), ``amp``, ``awp``. See ``_base`` for the
contract and ``../shared/ALGORITHMS.md`` for each method's exact gradient.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainers._registry import Registry
from trainers.perturbations._base import Closure, Perturbation
from trainers.perturbations.amp import AMP
from trainers.perturbations.awp import AWP
from trainers.perturbations.erm import ERM
from trainers.perturbations.sam import SAM

__all__ = ["AMP", "AWP", "ERM", "PERTURBATIONS", "SAM", "Closure", "Perturbation", "build"]

PERTURBATIONS: Registry[type[Perturbation]] = Registry("perturbation kind")
for _cls in (ERM, SAM, AMP, AWP):
    PERTURBATIONS.register(_cls.kind)(_cls)


def build(kind: str, model: nn.Module, **hparams: Any) -> Perturbation:
    """Build perturbation ``kind`` for ``model``; unknown kinds or bad values raise ValueError."""
    return PERTURBATIONS.get(kind)(model, **hparams)
