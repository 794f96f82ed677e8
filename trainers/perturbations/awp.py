"""AWP: Wu, Xia, Wang, "Adversarial Weight Perturbation Helps Robust Generalization",
NeurIPS 2020. Official code: csdongxian/AWP (``AT_AWP/utils_awp.py``, ``train_cifar10.py``).
Semantics: ``docs/algorithms.md``.

The closure computes the loss on the adversarial batch (PGD, done by the training loop).

1. A proxy copy of the model takes ``inner_steps`` steps of plain SGD *ascent* with step
   ``inner_lr`` (no momentum, no weight decay); every parameter moves, biases and BatchNorm
   affine parameters included. The first of these closure calls is at w; its loss is returned.
2. For each weight with ndim > 1 (conv and linear weights), d = θ_proxy − w and
   v = ‖w‖₂ · d / (‖d‖₂ + 1e-20): the perturbation is relative to each layer's weight norm.
3. w ← w + γ·v on those weights only (γ = ``radius``); ``.grad`` = g(w + γ·v); restore w.

The paper and the official code take one proxy step; ``inner_steps >= 2`` is this project's
extension, with no reference. With ``inner_steps = 1`` ``inner_lr`` cancels out of v (v ∝ g(w)).

Deviations from the official code, all documented:

* The proxy is the model itself, moved in place and restored by copy: the same weights and
  buffers in train mode, without keeping a second model in memory.
* Tensors are paired by parameter name (the official code zips two state dicts by position).
* The optimizer steps at w, not at w + γ·v followed by subtracting γ·v as the official code
  does, so weight decay acts at w; the two differ by lr · wd · γ · v, negligible but not zero.
* BatchNorm running statistics. Official: the proxy's are thrown away, and each iteration also
  runs a clean train-mode forward pass before the perturbed one, so the model's statistics see
  the unperturbed and the perturbed weights. The default ``bn_update="first_pass"`` is the
  closest here: it keeps those of the unperturbed pass and drops the proxy's and the perturbed
  pass's. ``"all_passes"`` keeps every pass's, the proxy's included.
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.perturbations._base import Perturbation
from trainers.spec import AWPSpec, BNUpdate

_DEFAULT = AWPSpec()  # defaults and bounds are declared once, in the spec


class AWP(Perturbation[AWPSpec]):
    """Adversarial Weight Perturbation; ``1 + inner_steps`` closure calls per step.

    Args:
        model: the model whose parameters are perturbed.
        radius: γ, the perturbation's size relative to each layer's weight norm (>= 0).
        inner_steps: proxy ascent steps (>= 1; the official code takes 1).
        inner_lr: the proxy's SGD step (> 0).
        bn_update: ``"first_pass"`` (closest to the official code) or ``"all_passes"``.
    """

    kind = "awp"

    def __init__(
        self,
        model: nn.Module,
        *,
        radius: float = _DEFAULT.radius,
        inner_steps: int = _DEFAULT.inner_steps,
        inner_lr: float = _DEFAULT.inner_lr,
        bn_update: BNUpdate = _DEFAULT.bn_update,
    ) -> None:
        super().__init__(
            model, radius=radius, inner_steps=inner_steps, inner_lr=inner_lr, bn_update=bn_update
        )
        # The official selection: state-dict entries named "...weight" with more than one dim.
        names = {id(p): n for n, p in model.named_parameters()}
        self._perturbed = [
            i for i, p in enumerate(self.params) if p.ndim > 1 and "weight" in names[id(p)]
        ]

    @property
    def perturbed_calls(self) -> int:
        return self.spec.inner_steps

    def _move(self, step: int) -> None:
        assert self._w is not None
        # proxy ascent: θ ← θ + inner_lr · g(θ) on every parameter
        torch._foreach_add_(self.params, self._grads(), alpha=self.spec.inner_lr)
        if step < self.spec.inner_steps - 1:
            return  # the next call is another proxy step, at θ
        sel = self._perturbed
        theta = [self.params[i] for i in sel]
        w = [self._w[i] for i in sel]
        d = torch._foreach_sub(theta, w)
        d_norm = torch._foreach_norm(d)
        torch._foreach_add_(d_norm, 1e-20)
        w_norm = torch._foreach_norm(w)
        scale = torch._foreach_div(w_norm, d_norm)
        torch._foreach_mul_(scale, self.spec.radius)
        torch._foreach_mul_(d, scale)  # d is now γ·v
        # Back to w (the proxy's other parameters are thrown away), then w + γ·v; the last
        # call is at the perturbed weights.
        self._restore_weights()
        torch._foreach_add_(theta, d)
