"""AMP: Zheng, Zhang, Mao, "Regularizing Neural Networks via Adversarial Model Perturbation",
CVPR 2021. Official code: hiyouga/AMP-Regularizer (``amp.py``). Semantics:
``docs/algorithms.md``.

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

BatchNorm: the official optimizer lets every closure call update the running statistics, the
last at w + δ; that is ``bn_update="all_passes"``. The default ``"first_pass"`` keeps those of
the unperturbed pass (see ``_base``).
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.perturbations._base import Perturbation
from trainers.spec import AMPSpec, BNUpdate

_DEFAULT = AMPSpec()  # defaults and bounds are declared once, in the spec


class AMP(Perturbation[AMPSpec]):
    """Adversarial Model Perturbation; ``1 + inner_steps`` closure calls per step.

    Args:
        model: the model whose parameters are perturbed.
        radius: ε, the L2 radius of each parameter tensor's perturbation (>= 0).
        inner_steps: ascent steps K (>= 1).
        inner_lr: ascent step size, a multiplier of the gradient (> 0).
        bn_update: ``"first_pass"`` or ``"all_passes"`` (official), see ``_base``.
    """

    kind = "amp"

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
        self._delta: list[torch.Tensor] = []

    @property
    def perturbed_calls(self) -> int:
        return self.spec.inner_steps

    def _move(self, step: int) -> None:
        assert self._w is not None
        g = self._grads()
        if step == 0:
            self._delta = torch._foreach_mul(g, self.spec.inner_lr)
        else:
            torch._foreach_add_(self._delta, g, alpha=self.spec.inner_lr)
        # Project each tensor back into its own ε-ball; min(1, ·) leaves a short δ exact.
        norms = torch._foreach_norm(self._delta)
        torch._foreach_add_(norms, 1e-12)
        factors = torch._foreach_reciprocal(norms)
        torch._foreach_mul_(factors, self.spec.radius)
        torch._foreach_clamp_max_(factors, 1.0)
        torch._foreach_mul_(self._delta, factors)
        # p = w + δ, computed from the saved w so no rounding accumulates across steps.
        torch._foreach_copy_(self.params, self._w)
        torch._foreach_add_(self.params, self._delta)
