"""The perturbation contract shared by ERM, SAM, AMP and AWP (``docs/algorithms.md``).

A perturbation computes a gradient; it never steps the optimizer. The training loop reads
``loss = perturbation.backward(closure)`` where plain training reads ``loss.backward()``, so
LR schedulers, gradient clipping and fp16 loss scaling stay exactly as in plain training (the
flaw of wrapping the optimizer, as davda54/sam does, is that all three had to reach through it).

``closure()`` zeroes the gradients, runs forward and backward at the model's *current* weights
on the current batch and returns the detached loss. After ``backward``:

* the return value is the loss at the unperturbed weights (the first closure call);
* every parameter is bit-identical to before: weights are restored by copy from a snapshot,
  never by subtracting the perturbation (which would round);
* ``.grad`` holds the method's gradient as defined in ``docs/algorithms.md``.

``backward`` is a template: closure at w, snapshot, then for each of the method's
``perturbed_calls`` a hook :meth:`Perturbation._move` sets the weights from the last gradient
and the snapshot and the closure runs there, then restore by copy. Subclasses write the hook.

BatchNorm running statistics (``bn_update``):

* ``"first_pass"`` (default): only the first, unperturbed pass of a step updates them. Buffers
  are snapshotted after that pass and restored by copy after the perturbed passes, so a model
  evaluated in eval mode sees the statistics plain training would have produced.
* ``"all_passes"``: every closure call updates them (the last at the perturbed weights) and
  nothing is restored, as the official AMP optimizer does.

In train mode BatchNorm normalises with batch statistics, so neither policy changes a gradient.

fp16 steps skipped for overflow (``found_inf``): when a closure's backward overflows, the loss
scaler flags the step and the caller will skip it, but ``.grad`` stays inf, so the next
:meth:`Perturbation._move` sets non-finite weights (AMP, SAM: inf · a clip factor of 0 = NaN)
and the next pass runs there. Its gradient goes with the skipped step and the weights are
restored by copy, but under ``"all_passes"`` its forward would write NaN into the running
statistics for good. Given the scaler's flag, ``backward`` also snapshots the buffers under
``"all_passes"`` and, if the flag is set after the last pass, restores them: a skipped step
keeps the statistics of its unperturbed pass, as ``"first_pass"`` always does. The choice is
made on the device (``torch.where``), so it costs no host sync; fp32 and bf16 pass no flag
and run exactly as before.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from trainers.spec import BasePerturbationSpec, BNUpdate, parse_perturbation

Closure = Callable[[], torch.Tensor]
S = TypeVar("S", bound=BasePerturbationSpec)


class Perturbation(ABC, Generic[S]):
    """Base class: a subclass sets ``kind`` and implements :meth:`_move` (and usually
    :attr:`perturbed_calls`); its keyword-only constructor arguments are its spec's fields.
    """

    kind: ClassVar[str]

    def __init__(self, model: nn.Module, **hparams: Any) -> None:
        # Bounds and defaults live in the spec model only; this is the one place they are checked.
        self.spec: S = parse_perturbation({"kind": self.kind, **hparams})  # type: ignore[assignment]
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
    def bn_update(self) -> BNUpdate:
        return self.spec.bn_update

    @property
    def perturbed_calls(self) -> int:
        """Closure calls after the first (at w): SAM 1, AMP and AWP ``inner_steps``."""
        return 1

    @property
    def closure_calls(self) -> int:
        """Closure calls per ``backward``: ERM 1, SAM 2, AMP and AWP ``1 + inner_steps``."""
        return 1 + self.perturbed_calls

    def backward(self, closure: Closure, *, found_inf: torch.Tensor | None = None) -> torch.Tensor:
        """Fill ``.grad`` with the method's gradient; return the unperturbed loss.

        Args:
            closure: zeroes the gradients, runs forward and backward at the current weights
                and returns the detached loss.
            found_inf: with fp16 loss scaling, the scaler's overflow flag (a 0-dim tensor, > 0
                once any backward of this step overflowed). If it is set after the last pass
                the step will be skipped, and the BatchNorm buffers are put back to those of
                the unperturbed pass under either ``bn_update`` (see the module docstring).
        """
        loss = closure()  # at w: the loss returned, g(w) in .grad, BN statistics updated
        if self.perturbed_calls == 0:
            return loss  # nothing moved, nothing to restore
        # all_passes keeps every pass's statistics, unless the step is about to be skipped.
        skip_flag = None if self._keeps_first_pass_stats else found_inf
        self._snapshot(buffers=self._keeps_first_pass_stats or skip_flag is not None)
        for step in range(self.perturbed_calls):
            with torch.no_grad():
                self._move(step)
            closure()
        self._restore()
        if skip_flag is not None:
            self._restore_buffers_if(skip_flag > 0)
        return loss

    @abstractmethod
    def _move(self, step: int) -> None:
        """Set the parameters for perturbed call ``step`` (0-based), under ``no_grad``.

        ``.grad`` holds the gradient of the previous call (``step == 0``: g(w)); the weights
        w are in ``self._w``. The parameters may be anywhere when this is called.
        """

    # -- snapshot / restore (multi-tensor, no per-tensor Python loop of kernels) --------------

    def _grads(self) -> list[torch.Tensor]:
        # A parameter without a gradient (unused this step) contributes a zero gradient.
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]

    @property
    def _keeps_first_pass_stats(self) -> bool:
        return self.bn_update == "first_pass"

    @torch.no_grad()
    def _snapshot(self, *, buffers: bool) -> None:
        if self._w is None:
            self._w = [torch.empty_like(p) for p in self.params]
            self._b = [torch.empty_like(b) for b in self.buffers]
        torch._foreach_copy_(self._w, self.params)
        if self._b and buffers:
            torch._foreach_copy_(self._b, self.buffers)

    @torch.no_grad()
    def _restore_weights(self) -> None:
        assert self._w is not None
        torch._foreach_copy_(self.params, self._w)

    @torch.no_grad()
    def _restore(self) -> None:
        self._restore_weights()
        if self._b and self._keeps_first_pass_stats:
            torch._foreach_copy_(self.buffers, self._b)

    @torch.no_grad()
    def _restore_buffers_if(self, skipped: torch.Tensor) -> None:
        # A select, not a blend: the buffers may hold NaN, and NaN · 0 is NaN. On the device,
        # so fp16 steps pay no host sync for it (the scaler syncs once, when it steps).
        assert self._b is not None
        for b, saved in zip(self.buffers, self._b, strict=True):
            torch.where(skipped, saved, b, out=b)

    def __repr__(self) -> str:
        fields = self.spec.model_dump(exclude={"kind", "warmup_epochs"})
        args = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        return f"{type(self).__name__}({args})"
