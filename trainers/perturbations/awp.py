"""AWP: Wu, Xia, Wang, "Adversarial Weight Perturbation Helps Robust Generalization",
NeurIPS 2020. Official code: csdongxian/AWP (``AT_AWP/utils_awp.py``, ``train_cifar10.py``).

The closure computes the loss on the adversarial batch (PGD, done by the training loop).

1. A proxy copy of the model takes ``inner_steps`` steps of plain SGD *ascent* with step
   ``inner_lr`` (no momentum, no weight decay); every parameter moves, biases and BatchNorm
   affine parameters included. The first of these closure calls is at w; its loss is returned.
2. For each weight with ndim > 1 (conv and linear weights), d = θ_proxy − w and
   v = ‖w‖₂ · d / (‖d‖₂ + 1e-20): the perturbation is relative to each layer's weight norm.
3. w ← w + γ·v on those weights only (γ = ``radius``); ``.grad`` = g(w + γ·v); restore w.

Deviations from the official code, all documented:

* The proxy is the model itself, moved in place and restored by copy: the same weights and
  buffers in train mode, without keeping a second model in memory. Its BatchNorm running
  statistics are thrown away, as the official proxy's are.
* Tensors are paired by parameter name (the official code zips two state dicts by position).
* The optimizer steps at w, not at w + γ·v followed by subtracting γ·v as the official code
  does, so weight decay acts at w; the two differ by lr · wd · γ · v, negligible but not zero.
* Running statistics come from the unperturbed pass (see ``_base``); the official model's
  come from the perturbed pass.

With ``inner_steps = 1`` ``inner_lr`` cancels out of v (v ∝ g(w)); it matters for K ≥ 2.
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.perturbations._base import Closure, Perturbation


class AWP(Perturbation):
    """Adversarial Weight Perturbation; ``1 + inner_steps`` closure calls per step."""

    kind = "awp"
    defaults = {"radius": 0.01, "inner_steps": 1, "inner_lr": 0.01}

    def __init__(self, model: nn.Module, **hparams: object) -> None:
        super().__init__(model, **hparams)
        # The official selection: state-dict entries named "...weight" with more than one dim.
        names = {id(p): n for n, p in model.named_parameters()}
        self._perturbed = [
            i for i, p in enumerate(self.params) if p.ndim > 1 and "weight" in names[id(p)]
        ]

    @property
    def closure_calls(self) -> int:
        return 1 + self.hparams["inner_steps"]

    def backward(self, closure: Closure) -> torch.Tensor:
        loss = closure()
        self._snapshot()
        lr, gamma = self.hparams["inner_lr"], self.hparams["radius"]
        for k in range(self.hparams["inner_steps"]):
            if k > 0:
                closure()
            with torch.no_grad():
                # proxy ascent: θ ← θ + inner_lr · g(θ) on every parameter
                torch._foreach_add_(self.params, self._grads(), alpha=lr)
        with torch.no_grad():
            sel = self._perturbed
            theta = [self.params[i] for i in sel]
            w = [self._w[i] for i in sel]
            d = torch._foreach_sub(theta, w)
            d_norm = torch._foreach_norm(d)
            torch._foreach_add_(d_norm, 1e-20)
            w_norm = torch._foreach_norm(w)
            scale = torch._foreach_div(w_norm, d_norm)
            torch._foreach_mul_(scale, gamma)
            torch._foreach_mul_(d, scale)  # d is now γ·v
            # Back to w (the proxy's other parameters and buffers are thrown away), then w + γ·v.
            self._restore()
            torch._foreach_add_(theta, d)
        closure()
        self._restore()
        return loss
