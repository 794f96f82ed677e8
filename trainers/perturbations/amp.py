"""AMP: Zheng, Zhang, Mao, "Regularizing Neural Networks via Adversarial Model Perturbation",
CVPR 2021. Official code: hiyouga/AMP-Regularizer (``amp.py``).

With g the most recent gradient and a perturbation δ_p per parameter *tensor* p (δ_p = 0):

    repeat inner_steps times:
        δ_p ← δ_p + inner_lr · g_p
        δ_p ← δ_p · min(1, ε / (‖δ_p‖₂ + 1e-12))     (the ε-ball is per tensor, not global)
        p   = w_p + δ_p;  g ← g(w + δ)
    .grad = g(w + δ)

``radius`` is ε (paper default 0.5), ``inner_steps`` is the official ``inner_iter`` (default 1),
``inner_lr`` the inner learning rate (default 1). Deviations from the official code: the
weights are restored by copy (the official optimizer subtracts δ, which rounds), and the
optimizer step is left to the caller (the official ``AMP`` class is an optimizer). The
official gradient-norm clipping inside every closure belongs to the caller's closure
(``optim.grad_clip_norm`` in the training loop).
"""

from __future__ import annotations

import torch

from trainers.perturbations._base import Closure, Perturbation


class AMP(Perturbation):
    """Adversarial Model Perturbation; ``1 + inner_steps`` closure calls per step."""

    kind = "amp"
    defaults = {"radius": 0.5, "inner_steps": 1, "inner_lr": 1.0}

    @property
    def closure_calls(self) -> int:
        return 1 + self.hparams["inner_steps"]

    def backward(self, closure: Closure) -> torch.Tensor:
        loss = closure()
        self._snapshot()
        eps, lr = self.hparams["radius"], self.hparams["inner_lr"]
        delta: list[torch.Tensor] | None = None
        for _ in range(self.hparams["inner_steps"]):
            with torch.no_grad():
                g = self._grads()
                if delta is None:
                    delta = torch._foreach_mul(g, lr)
                else:
                    torch._foreach_add_(delta, g, alpha=lr)
                # Project each tensor back into its own ε-ball; min(1, ·) leaves short δ exact.
                norms = torch._foreach_norm(delta)
                torch._foreach_add_(norms, 1e-12)
                factors = torch._foreach_reciprocal(norms)
                torch._foreach_mul_(factors, eps)
                torch._foreach_clamp_max_(factors, 1.0)
                torch._foreach_mul_(delta, factors)
                # p = w + δ, computed from the saved w so no rounding accumulates across steps.
                torch._foreach_copy_(self.params, self._w)
                torch._foreach_add_(self.params, delta)
            closure()
        self._restore()
        return loss
