"""The perturbation contract shared by ERM, SAM, AMP and AWP.

A perturbation computes a gradient; it never steps the optimizer. The training loop reads
``loss = perturbation.backward(closure)`` where plain training reads ``loss.backward()``, so
LR schedulers, gradient clipping and fp16 loss scaling stay exactly as in plain training (the
flaw of wrapping the optimizer, as davda54/sam does, is that all three had to reach through it).

``closure()`` zeroes the gradients, runs forward and backward at the model's *current* weights
on the current batch and returns the detached loss. After ``backward``:

* the return value is the loss at the unperturbed weights (the first closure call);
* every parameter is bit-identical to before: weights are restored by copy from a snapshot,
  never by subtracting the perturbation (which would round);
* ``.grad`` holds the method's gradient as defined in ALGORITHMS.md.

BatchNorm running statistics: only the first, unperturbed forward pass of a step updates them.
Buffers are snapshotted after that pass and restored by copy after the perturbed passes, so a
model evaluated in eval mode sees the statistics plain training would have produced. In train
mode BatchNorm normalises with batch statistics, so this policy never changes a gradient.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

Closure = Callable[[], torch.Tensor]


class Perturbation(ABC):
    """Base class: subclasses implement :meth:`backward` and declare their hyperparameters."""

    kind: ClassVar[str]
    #: hyperparameter name -> default; the names are the same in YAML, Optuna and MLflow.
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: nn.Module, **hparams: Any) -> None:
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(
                f"unknown hyperparameter {unknown[0]!r} for perturbation {self.kind!r}; "
                f"allowed: {allowed}"
            )
        self.hparams: dict[str, Any] = {**self.defaults, **hparams}
        self._validate()
        self.model = model
        self.params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
        self.buffers: list[torch.Tensor] = [
            b
            for b in model.buffers()
            if b.is_floating_point() or b.dtype in (torch.int64, torch.long)
        ]
        self._w: list[torch.Tensor] | None = None
        self._b: list[torch.Tensor] | None = None

    @property
    def closure_calls(self) -> int:
        """Closure calls per ``backward``: ERM 1, SAM 2, AMP and AWP ``1 + inner_steps``."""
        return 1

    @abstractmethod
    def backward(self, closure: Closure) -> torch.Tensor:
        """Fill ``.grad`` with the method's gradient; return the unperturbed loss."""

    # -- validation helpers --------------------------------------------------------------------

    def _validate(self) -> None:
        h = self.hparams
        if "radius" in h:
            r = h["radius"]
            if (
                isinstance(r, bool)
                or not isinstance(r, int | float)
                or not math.isfinite(r)
                or r < 0
            ):
                raise ValueError(
                    f"{self.kind}.radius must be a finite number >= 0, but got radius={r!r}"
                )
            h["radius"] = float(r)
        if "inner_steps" in h:
            k = h["inner_steps"]
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(
                    f"{self.kind}.inner_steps must be an integer >= 1, but got inner_steps={k!r}"
                )
        if "inner_lr" in h:
            lr = h["inner_lr"]
            if (
                isinstance(lr, bool)
                or not isinstance(lr, int | float)
                or not math.isfinite(lr)
                or lr <= 0
            ):
                raise ValueError(
                    f"{self.kind}.inner_lr must be a finite number > 0, but got inner_lr={lr!r}"
                )
            h["inner_lr"] = float(lr)
        if "adaptive" in h and not isinstance(h["adaptive"], bool):
            raise ValueError(
                f"{self.kind}.adaptive must be true or false, but got adaptive={h['adaptive']!r}"
            )

    # -- snapshot / restore (multi-tensor, no per-tensor Python loop of kernels) --------------

    def _grads(self) -> list[torch.Tensor]:
        # A parameter without a gradient (unused this step) contributes a zero gradient.
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def _snapshot(self) -> None:
        if self._w is None:
            self._w = [torch.empty_like(p) for p in self.params]
            self._b = [torch.empty_like(b) for b in self.buffers]
        torch._foreach_copy_(self._w, self.params)
        if self._b:
            torch._foreach_copy_(self._b, self.buffers)

    @torch.no_grad()
    def _restore(self) -> None:
        assert self._w is not None and self._b is not None
        torch._foreach_copy_(self.params, self._w)
        if self._b:
            torch._foreach_copy_(self.buffers, self._b)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.hparams.items()))
        return f"{type(self).__name__}({args})"
