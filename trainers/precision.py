"""Mixed precision: ``bf16`` and ``fp16`` autocast, ``fp32`` plain.

fp16 needs loss scaling. ``torch.amp.GradScaler.unscale_`` may run once per optimizer step,
but SAM, AMP and AWP call backward ``1 + K`` times per step and need *unscaled* gradients
between the calls (AMP adds ``inner_lr · g`` to its perturbation). ``LossScaler`` therefore
unscales after every backward with the same fused kernels GradScaler uses
(``_amp_foreach_non_finite_check_and_unscale_``, ``_amp_update_scale_``) and GradScaler's
defaults (init 2¹⁶, growth ×2 every 2000 clean steps, backoff ×0.5). A step whose gradients
overflowed in any closure call is skipped, as GradScaler skips it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """Autocast to ``precision`` on ``device``; a no-op for fp32."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=DTYPES[precision]):
        yield


class LossScaler:
    """Dynamic loss scaling that tolerates several backward passes per optimizer step."""

    def __init__(
        self,
        device: torch.device,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        self.scale = torch.full((), init_scale, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros((), dtype=torch.int32, device=device)
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval

    def backward(self, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
        """``(scale · loss).backward()``, then unscale the grads in place and note overflow."""
        (loss.float() * self.scale).backward()
        grads = [p.grad for p in params if p.grad is not None]
        torch._amp_foreach_non_finite_check_and_unscale_(
            grads, self.found_inf, self.scale.reciprocal()
        )

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Step unless any backward this step overflowed; update the scale. Syncs once."""
        ok = not bool(self.found_inf.item())
        if ok:
            optimizer.step()
        torch._amp_update_scale_(
            self.scale,
            self.growth_tracker,
            self.found_inf,
            self.growth_factor,
            self.backoff_factor,
            self.growth_interval,
        )
        self.found_inf.zero_()
        return ok

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"scale": self.scale.cpu(), "growth_tracker": self.growth_tracker.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.scale.copy_(state["scale"])
        self.growth_tracker.copy_(state["growth_tracker"])
