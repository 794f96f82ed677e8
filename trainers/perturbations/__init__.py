"""Perturbations behind one gradient contract: ``loss = p.backward(closure)``.

Kinds: ``erm``, ``sam`` (and ASAM via ``adaptive``), ``amp``, ``awp``. See ``_base`` for the
contract and ``docs/algorithms.md`` for each method's exact gradient. Each kind's
hyperparameters, bounds and defaults are its spec model in ``trainers.spec`` (``AMPSpec`` ...).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainers.perturbations._base import Closure, Perturbation
from trainers.perturbations.amp import AMP
from trainers.perturbations.awp import AWP
from trainers.perturbations.erm import ERM
from trainers.perturbations.sam import SAM
from trainers.registry import Registry
from trainers.spec import PerturbationSpec, parse_perturbation

__all__ = [
    "AMP",
    "AWP",
    "ERM",
    "PERTURBATIONS",
    "SAM",
    "Closure",
    "Perturbation",
    "build",
    "from_spec",
]

PERTURBATIONS: Registry[type[Perturbation[Any]]] = Registry("perturbation kind")
for _cls in (ERM, SAM, AMP, AWP):
    PERTURBATIONS.register(_cls.kind)(_cls)

# Fields of a spec that the training loop reads, not the perturbation.
_LOOP_FIELDS = {"kind", "warmup_epochs"}


def from_spec(spec: PerturbationSpec, model: nn.Module) -> Perturbation[Any]:
    """The perturbation ``spec`` describes, for ``model`` (``warmup_epochs`` is the loop's)."""
    return PERTURBATIONS.get(spec.kind)(model, **spec.model_dump(exclude=_LOOP_FIELDS))


def build(kind: str, model: nn.Module, **hparams: Any) -> Perturbation[Any]:
    """Build perturbation ``kind`` for ``model``; unknown kinds or bad values raise a one-line
    ValueError naming the field ("perturbation.radius: Input should be greater than ...").
    """
    PERTURBATIONS.get(kind)  # an unknown kind: the registry's message, with the closest kind
    return from_spec(parse_perturbation({**hparams, "kind": kind}), model)
