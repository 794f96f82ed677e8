"""The registered spaces: ``amp``, ``awp``, ``sam``, ``asam`` and ``erm`` (a baseline).

Every range is a module constant with its unit and its source. Radii and inner learning rates
are log-uniform, inner steps an integer. The optimizer knobs (``optim.lr``,
``optim.weight_decay``) are shared by every space and searched only when a sweep asks for them.
Each space is registered with the perturbation kind it searches; ``asam`` searches kind ``sam``
with ``adaptive: true``.

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
# Proxy ascent steps: fixed at 1, as in the paper and the official code. K >= 2 is this
# project's extension with no reference; a sweep opts in with a range override such as
# ``perturbation.inner_steps: [1, 3]``, and then the proxy LR below is searched too.
AWP_INNER_STEPS = Range(1, 1, log=False, integer=True)
AWP_INNER_LR = Range(1e-3, 0.1)  # proxy SGD step; official 0.01. Cancels out when K = 1.
AWP_INNER_LR_FIXED = 0.01  # used when K = 1: the official value, recorded though it cancels

# -- SAM (Foret et al., ICLR 2021) ---------------------------------------------------------------
# ρ: global L2 norm of the ascent step. The paper grid-searches {0.01, 0.02, 0.05, 0.1, 0.2, 0.5}.
SAM_RADIUS = Range(0.01, 0.5)

# -- ASAM (Kwon et al., ICML 2021) ---------------------------------------------------------------
# ρ of the ascent scaled elementwise by |w|, so about an order of magnitude above SAM's: the
# paper's CIFAR runs used ρ of about 0.5–2 (0.5 for CIFAR-10, 1.0 for CIFAR-100 with SGD).
ASAM_RADIUS = Range(0.1, 3.0)


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
    kind="amp",
)
def amp(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """AMP: ε (radius), K (inner_steps), inner LR; optionally lr and weight decay."""
    ranges["perturbation.radius"].suggest(trial, "perturbation.radius")
    ranges["perturbation.inner_steps"].suggest(trial, "perturbation.inner_steps")
    ranges["perturbation.inner_lr"].suggest(trial, "perturbation.inner_lr")
    _optimizer(trial, ranges)
    return {}


@register(
    "awp",
    {
        "perturbation.radius": AWP_RADIUS,
        "perturbation.inner_steps": AWP_INNER_STEPS,
        "perturbation.inner_lr": AWP_INNER_LR,
    },
    kind="awp",
)
def awp(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """AWP: γ (radius); proxy steps fixed at 1 unless overridden, proxy LR only when >= 2."""
    ranges["perturbation.radius"].suggest(trial, "perturbation.radius")
    steps = ranges["perturbation.inner_steps"].suggest(trial, "perturbation.inner_steps")
    fixed: dict[str, Any] = {}
    if steps >= 2:
        ranges["perturbation.inner_lr"].suggest(trial, "perturbation.inner_lr")
    else:
        # With one proxy step v ∝ g(w): the LR cancels, so searching it would waste trials.
        fixed["perturbation.inner_lr"] = AWP_INNER_LR_FIXED
    _optimizer(trial, ranges)
    return fixed


@register("sam", {"perturbation.radius": SAM_RADIUS}, kind="sam")
def sam(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """SAM: ρ (radius); optionally lr and weight decay. Plain SAM: ASAM is the ``asam`` space."""
    ranges["perturbation.radius"].suggest(trial, "perturbation.radius")
    _optimizer(trial, ranges)
    # SAM's radius range is wrong for ASAM, so the space states which one it searches.
    return {"perturbation.adaptive": False}


@register("asam", {"perturbation.radius": ASAM_RADIUS}, kind="sam")
def asam(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """ASAM (SAM with adaptive=true): ρ (radius); optionally lr and weight decay."""
    ranges["perturbation.radius"].suggest(trial, "perturbation.radius")
    _optimizer(trial, ranges)
    return {"perturbation.adaptive": True}


@register("erm", {}, kind="erm")
def erm(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """ERM baseline: only the optimizer knobs, when asked for."""
    _optimizer(trial, ranges)
    return {}
