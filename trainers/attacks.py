"""L∞ PGD (Madry et al., ICLR 2018) as used by the AWP official code for training and eval.

Inputs arrive normalised, ``x = (pixel - mean) / std``. With per-channel ``mean``/``std`` the
budget ``eps`` is in pixel units of [0, 1] images (8/255) and the adversarial pixel is clamped
to [0, 1], as the official code does; without them (1-D signals, synthetic tensors) ``eps`` is
in input units and nothing is clamped.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    random_start: bool = True,
) -> torch.Tensor:
    """Return adversarial inputs (normalised like ``x``, detached) maximising cross-entropy.

    The model's mode is left as the caller set it: the official code attacks in train mode
    during training and in eval mode for evaluation. Parameter gradients are left untouched.
    """
    if eps == 0:
        return x.detach()
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if std is not None and mean is not None:
        std = std.to(x.device, x.dtype).view(shape)
        mean = mean.to(x.device, x.dtype).view(shape)
        lo, hi = (0 - mean) / std, (1 - mean) / std
        eps_t, alpha = eps / std, step_size / std  # pixel budgets in normalised units
    else:
        lo = hi = None
        eps_t = torch.full((), eps, device=x.device, dtype=x.dtype)
        alpha = torch.full((), step_size, device=x.device, dtype=x.dtype)
    delta = torch.zeros_like(x)
    if random_start:
        delta = (torch.rand_like(x) * 2 - 1) * eps_t
    for _ in range(steps):
        delta = _project(x, delta, eps_t, lo, hi).requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = delta.detach() + alpha * grad.sign()
    return (x + _project(x, delta, eps_t, lo, hi)).detach()


def _project(
    x: torch.Tensor,
    delta: torch.Tensor,
    eps: torch.Tensor,
    lo: torch.Tensor | None,
    hi: torch.Tensor | None,
) -> torch.Tensor:
    delta = torch.maximum(torch.minimum(delta, eps), -eps)
    if lo is not None and hi is not None:
        delta = torch.maximum(torch.minimum(x + delta, hi), lo) - x
    return delta.detach()
