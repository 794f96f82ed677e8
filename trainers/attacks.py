"""Attacks: L∞ PGD for training and evaluation, and AutoAttack for a final evaluation.

- ``pgd``: L∞ PGD (Madry et al., ICLR 2018) as used by the AWP official code for training and
  evaluation.
- ``autoattack_accuracy``: AutoAttack (Croce & Hein, "Reliable evaluation of adversarial
  robustness with an ensemble of diverse parameter-free attacks", ICML 2020), the "standard"
  L∞ version that RobustBench reports: APGD-CE, APGD-T, FAB-T and Square, each run only on the
  examples the previous ones did not break. It is ``torchattacks.AutoAttack`` set to the
  official fra31/auto-attack ``set_version("standard")`` budgets, which torchattacks' own
  "standard" does not use: 100 iterations for APGD-CE, APGD-T and FAB-T (torchattacks: 10),
  9 target classes for APGD-T and FAB-T (torchattacks: n_classes - 1) and Square's query
  schedule not rescaled (``resc_schedule=False``; torchattacks: True). torchattacks is pinned
  at 3.3.0, whose APGD, APGD-T, FAB and Square are 3.5.1's (one method renamed since): 3.4.0
  onwards require requests~=2.25.1, which no environment with this project's MLflow can hold.

Inputs arrive normalised, ``x = (pixel - mean) / std``. With per-channel ``mean``/``std`` the
budget ``eps`` is in pixel units of [0, 1] images (8/255) and the adversarial pixel is clamped
to [0, 1], as the official code does; without them (1-D signals, synthetic tensors) ``eps`` is
in input units and nothing is clamped. AutoAttack needs them (it attacks [0, 1] images).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    import torchattacks

#: fra31/auto-attack ``set_version("standard")`` (the RobustBench evaluation), L∞.
AUTOATTACK_STEPS = 100  # iterations of APGD-CE, APGD-T and FAB-T, one restart each
AUTOATTACK_TARGET_CLASSES = 9  # classes APGD-T and FAB-T target (fewer if the data has fewer)
AUTOATTACK_SQUARE_QUERIES = 5000  # Square's query budget, one restart


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

    Deviation: each step follows the sign of the gradient of the *summed* cross-entropy
    (computed in fp32), where the AWP official ``attack_pgd`` backpropagates the batch mean.
    Scaling a loss by a positive constant leaves the sign of its gradient unchanged, so in
    fp32 and bf16 the attack is the official one up to rounding (bit for bit on the tests'
    CPU batches). The reason is fp16 autocast, which has no loss scaling here: the mean's
    per-example logit gradients, (p - y) / batch, underflow to zero in fp16 for confident
    examples (batch 128, median p_max 0.9998: 99% of the input-gradient entries were zero),
    so their sign is 0 and PGD cannot move them. The sum's are p - y, at most 1 in magnitude:
    batch times larger, still far from fp16's overflow. Examples more confident still
    (1 - p_max below about 1e-5) can underflow even so, as in any fp16 backward pass.
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
        # Summed in fp32, not averaged: fp16 backward keeps per-example gradients (docstring).
        loss = F.cross_entropy(model(x + delta).float(), y, reduction="sum")
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


class _Pixels(nn.Module):
    """``model`` on [0, 1] pixels: normalises them per channel first, as the loaders do.

    RobustBench's convention (the model owns its normalisation). torchattacks'
    ``set_normalization_used`` would do the same inside the attack, but in torchattacks 3.3.0
    ``Square.normalize`` (its L2 step normaliser) shadows the base class's input normaliser.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        device = next(model.parameters()).device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def build_autoattack(
    model: nn.Module, *, eps: float, num_classes: int, seed: int
) -> torchattacks.AutoAttack:
    """``torchattacks.AutoAttack`` (L∞, standard) set to RobustBench's standard budgets.

    ``model`` takes [0, 1] pixels; the attack returns adversarial pixels in [0, 1] within
    ``eps`` of its input. ``seed`` fixes every sub-attack's random start; torchattacks
    reseeds torch's global generators with it (``autoattack_accuracy`` restores them).
    """
    if num_classes < 4:
        raise ValueError(
            "autoattack num_classes must be >= 4 (APGD-T's targeted DLR loss compares the four"
            f" largest logits), but got {num_classes}"
        )
    import torchattacks

    attack = torchattacks.AutoAttack(
        model, norm="Linf", eps=eps, version="standard", n_classes=num_classes, seed=seed
    )
    parts = attack._autoattack.attacks  # torchattacks keeps the four sub-attacks here
    kinds = (torchattacks.APGD, torchattacks.APGDT, torchattacks.FAB, torchattacks.Square)
    if len(parts) != len(kinds) or not all(map(isinstance, parts, kinds)):
        raise RuntimeError(
            "torchattacks.AutoAttack no longer holds APGD, APGDT, FAB, Square in that order, but"
            f" {[type(a).__name__ for a in parts]}; pin the torchattacks of pyproject.toml"
        )
    apgd_ce, apgd_t, fab_t, square = parts
    for a in (apgd_ce, apgd_t, fab_t):
        a.steps = AUTOATTACK_STEPS
    targets = min(AUTOATTACK_TARGET_CLASSES, num_classes - 1)
    apgd_t.n_target_classes = fab_t.n_target_classes = targets
    square.n_queries = AUTOATTACK_SQUARE_QUERIES
    square.rescale_schedule = False
    return attack


def autoattack_accuracy(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    eps: float,
    num_classes: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    seed: int = 0,
    examples: int | None = None,
) -> float:
    """Accuracy under standard L∞ AutoAttack (RobustBench's evaluation, Croce & Hein 2020) on
    the first ``examples`` of ``loader`` (None: all), in eval mode and fp32.

    ``loader`` yields images normalised with the per-channel ``mean``/``std``; each batch is
    de-normalised to [0, 1] pixels and attacked within ``eps`` in pixel units, and the model
    still sees normalised inputs. An example counts only if the model classifies it correctly
    and none of the four attacks changes that, so the result is at most the clean accuracy on
    the same examples. Slow: each robust example costs about 2,000 forward-backward passes and
    up to 5,000 forward passes. Torch's random generators and the parameters'
    ``requires_grad`` and ``.grad`` are as before the call; the model is left in eval mode.
    """
    if mean is None or std is None:
        raise ValueError(
            "autoattack needs images with a per-channel mean and std (it attacks [0, 1]"
            f" pixels), but got mean={mean}, std={std}"
        )
    # Eval mode on the wrapper too: torchattacks restores the mode it finds after each batch.
    pixels = _Pixels(model, mean, std).eval()
    device = pixels.mean.device
    # Parameters need no gradient for an attack on the input; FAB calls .backward(), which
    # would otherwise accumulate into .grad.
    trainable = [p for p in model.parameters() if p.requires_grad]
    correct, n = 0, 0
    # torchattacks reseeds the global generators with ``seed``: fork them so the training
    # stream (saved in checkpoints) is the same with and without this evaluation.
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.autocast(device.type, enabled=False):
        try:
            for p in trainable:
                p.requires_grad_(False)
            attack = build_autoattack(pixels, eps=eps, num_classes=num_classes, seed=seed)
            for x, y in loader:
                if examples is not None:
                    if n >= examples:
                        break
                    x, y = x[: examples - n], y[: examples - n]
                # uint8 / 255 pixels, up to float rounding of the normalisation
                x01 = (x.float() * pixels.std + pixels.mean).clamp(0, 1)
                x_adv = attack(x01, y)
                with torch.no_grad():
                    correct += int((pixels(x_adv).argmax(1) == y).sum())
                n += len(y)
        finally:
            for p in trainable:
                p.requires_grad_(True)
    return correct / max(n, 1)
