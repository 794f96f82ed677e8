"""The registered spaces: ``amp``, ``awp``, ``sam`` and ``erm`` (a baseline).

Every range is a module constant with its unit and its source. Radii and inner learning rates
are log-uniform, inner steps an integer. The optimizer knobs (``optim.lr``,
``optim.weight_decay``) are shared by every space and searched only when a sweep asks for them.

The radius scale depends on the model. On a small 1-D CNN for MNIST-1D (3 seeds) AMP at the
paper's ε = 0.5 fell from 90% (ERM) to 62% test accuracy, while ε ≈ 0.01–0.03 matched or beat
ERM, so the default AMP range reaches two decades below the paper's 0.05–0.5.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # trial workers import this package; optuna is only needed by the driver
    import optuna

from search_spaces._core import Range, Ranges, register

# -- shared optimizer knobs (opt-in) -------------------------------------------------------------
LR = Range(0.01, 0.5)  # peak SGD learning rate per batch; both papers use 0.1
WEIGHT_DECAY = Range(1e-5, 1e-3)  # L2 coefficient; AMP paper 1e-4, AWP official 5e-4
OPTIMIZER_RANGES: Ranges = {"optim.lr": LR, "optim.weight_decay": WEIGHT_DECAY}

# -- AMP (Zheng et al., CVPR 2021) ---------------------------------------------------------------
# ε: L2 norm of each parameter tensor's perturbation. Paper default 0.5; the maintainer's advice
# is 0.05–0.5; extended down to 0.005 for small models (see the module docstring).
AMP_RADIUS = Range(0.005, 0.5)
AMP_INNER_STEPS = Range(1, 3, log=False, integer=True)  # ascent steps; official inner_iter = 1
# Inner ascent step size, dimensionless multiplier of the gradient. Official default 1, the
# maintainer's advice "keep near 1"; the paper's VGG16 run used 0.2.
AMP_INNER_LR = Range(0.1, 2.0)

# -- AWP (Wu et al., NeurIPS 2020) ---------------------------------------------------------------
# γ: perturbation size relative to each layer's weight norm (dimensionless). Official default
# 0.01 for PGD-AT (AT_AWP/train_cifar10.py); searched a decade either side of 5e-3.
AWP_RADIUS = Range(5e-4, 5e-2)
AWP_INNER_STEPS = Range(1, 3, log=False, integer=True)  # proxy ascent steps; official 1
AWP_INNER_LR = Range(1e-3, 0.1)  # proxy SGD step; official 0.01. Cancels out when K = 1.

# -- SAM (Foret et al., ICLR 2021) ---------------------------------------------------------------
# ρ: global L2 norm of the ascent step. The paper grid-searches {0.01, 0.02, 0.05, 0.1, 0.2, 0.5}.
SAM_RADIUS = Range(0.01, 0.5)


def _optimizer(trial: optuna.Trial, ranges: Ranges) -> None:
    for name in OPTIMIZER_RANGES:
        if name in ranges:
            ranges[name].suggest(trial, name)


@register(
    "amp",
    {
        "perturbation.radius": AMP_RADIUS,
        "perturbation.inner_steps": AMP_INNER_STEPS,
        "perturbation.inner_lr": AMP_INNER_LR,
    },
)
def amp(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """AMP: ε (radius), K (inner_steps), inner LR; optionally lr and weight decay."""
    ranges["perturbation.radius"].suggest(trial, "perturbation.radius")
    ranges["perturbation.inner_steps"].suggest(trial, "perturbation.inner_steps")
    ranges["perturbation.inner_lr"].suggest(trial, "perturbation.inner_lr")
    _optimizer(trial, ranges)
    return {"perturbation.kind": "amp"}


@register(
    "awp",
    {
        "perturbation.radius": AWP_RADIUS,
        "perturbation.inner_steps": AWP_INNER_STEPS,
        "perturbation.inner_lr": AWP_INNER_LR,
    },
)
def awp(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """AWP: γ (radius), proxy steps, proxy LR (searched only when steps >= 2)."""
    ranges["perturbation.radius"].suggest(trial, "perturbation.radius")
    steps = ranges["perturbation.inner_steps"].suggest(trial, "perturbation.inner_steps")
    fixed: dict[str, Any] = {"perturbation.kind": "awp"}
    if steps >= 2:
        ranges["perturbation.inner_lr"].suggest(trial, "perturbation.inner_lr")
    else:
        # With one proxy step v ∝ g(w): the LR cancels, so searching it would waste trials.
        fixed["perturbation.inner_lr"] = 0.01
    _optimizer(trial, ranges)
    return fixed


@register("sam", {"perturbation.radius": SAM_RADIUS})
def sam(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """SAM: ρ (radius); optionally lr and weight decay."""
    ranges["perturbation.radius"].suggest(trial, "perturbation.radius")
    _optimizer(trial, ranges)
    return {"perturbation.kind": "sam"}


@register("erm", {})
def erm(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """ERM baseline: only the optimizer knobs, when asked for."""
    _optimizer(trial, ranges)
    return {"perturbation.kind": "erm"}
