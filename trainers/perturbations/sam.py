"""SAM: Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization",
ICLR 2021; ASAM: Kwon et al., ICML 2021. Reference code: davda54/sam.

    e = rho · g(w) / (‖g(w)‖₂ + 1e-12)              (norm over all parameters together)
    ASAM: e = rho · |w|² ⊙ g / (‖ |w| ⊙ g ‖₂ + 1e-12)
    .grad = g(w + e)

Like davda54/sam we climb to w + e and take the gradient there, and restore w by assignment
from a saved copy. Unlike it we never step the optimizer (see ``_base``).
"""

from __future__ import annotations

import torch

from trainers.perturbations._base import Closure, Perturbation


class SAM(Perturbation):
    """Hyperparameters: ``radius`` (rho, default 0.05), ``adaptive`` (ASAM, default false)."""

    kind = "sam"
    defaults = {"radius": 0.05, "adaptive": False}

    @property
    def closure_calls(self) -> int:
        return 2

    def backward(self, closure: Closure) -> torch.Tensor:
        loss = closure()
        self._snapshot()
        rho = self.hparams["radius"]
        with torch.no_grad():
            g = self._grads()
            if self.hparams["adaptive"]:
                # |w| ⊙ g, its global norm, then e = rho · |w| ⊙ (|w| ⊙ g) / norm
                abs_w = torch._foreach_abs(self._w)
                scaled = torch._foreach_mul(abs_w, g)
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
                e = torch._foreach_mul(scaled, abs_w)
            else:
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g)))
                e = g
            # climb to the local maximum w + e(w)
            scale = rho / (norm + 1e-12)
            torch._foreach_add_(self.params, torch._foreach_mul(e, scale))
        closure()
        self._restore()
        return loss
