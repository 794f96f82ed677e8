"""SAM: Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization",
ICLR 2021; ASAM: Kwon et al., ICML 2021. Reference code: davda54/sam. Semantics:
``docs/algorithms.md``.

    e = rho · g(w) / (‖g(w)‖₂ + 1e-12)              (norm over all parameters together)
    ASAM: e = rho · |w|² ⊙ g / (‖ |w| ⊙ g ‖₂ + 1e-12)
    .grad = g(w + e)

Like davda54/sam we climb to w + e and take the gradient there, and restore w by assignment
from a saved copy. Unlike it we never step the optimizer (see ``_base``).

BatchNorm: davda54/sam leaves the running statistics to the user; its example
(``bypass_bn.py``) freezes them during the second pass, which is ``bn_update="first_pass"``,
the default here.
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.perturbations._base import Perturbation
from trainers.spec import BNUpdate, SAMSpec

_DEFAULT = SAMSpec()  # defaults and bounds are declared once, in the spec


class SAM(Perturbation[SAMSpec]):
    """Sharpness-Aware Minimization; two closure calls per step.

    Args:
        model: the model whose parameters are perturbed.
        radius: rho, the global L2 norm of the ascent step (>= 0).
        adaptive: ASAM, the ascent scaled elementwise by |w|.
        bn_update: ``"first_pass"`` or ``"all_passes"``, see ``_base``.
    """

    kind = "sam"

    def __init__(
        self,
        model: nn.Module,
        *,
        radius: float = _DEFAULT.radius,
        adaptive: bool = _DEFAULT.adaptive,
        bn_update: BNUpdate = _DEFAULT.bn_update,
    ) -> None:
        super().__init__(model, radius=radius, adaptive=adaptive, bn_update=bn_update)

    def _move(self, step: int) -> None:
        assert self._w is not None
        g = self._grads()
        if self.spec.adaptive:
            # |w| ⊙ g, its global norm, then e = rho · |w| ⊙ (|w| ⊙ g) / norm
            abs_w = torch._foreach_abs(self._w)
            scaled = torch._foreach_mul(abs_w, g)
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
            e = torch._foreach_mul(scaled, abs_w)
        else:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g)))
            e = g
        # climb to the local maximum w + e(w)
        scale = self.spec.radius / (norm + 1e-12)
        torch._foreach_add_(self.params, torch._foreach_mul(e, scale))
