"""Flatness diagnostics: the top eigenvalue of the loss Hessian at the current weights.

The largest Hessian eigenvalue is the usual number for how sharp a minimum is (Keskar et al.,
ICLR 2017, tie sharp minima to large positive Hessian eigenvalues; Foret et al., SAM, ICLR 2021,
report it for SAM against SGD): a flat-minima method such as AMP or SAM should leave it lower
than ERM does. It is computed as PyHessian does
(Yao, Gholami, Keutzer & Mahoney, "PyHessian: Neural Networks Through the Lens of the Hessian",
IEEE BigData 2020; amirgholami/PyHessian ``hessian.eigenvalues``): power iteration on exact
Hessian-vector products, ``Hv = d(g . v)/dw`` by double backward, never forming the Hessian.

Choices, each with its reason:

- The loss is the mean cross-entropy of ``model(batch_x)`` against ``batch_y`` on one fixed
  batch, as one training step sees it; the Hessian is taken with respect to every parameter that
  requires a gradient.
- Every module is put in eval mode while measuring: BatchNorm then normalises with its running
  statistics, so the loss is a function of the weights alone (in train mode it would also depend
  on the batch through the batch statistics, and every forward pass would move the running
  statistics), and dropout is off, so the Hessian is deterministic. Each module's own
  train/eval flag is restored afterwards (PyHessian leaves the model in eval mode). Weights,
  buffers and ``.grad`` are not written: ``torch.autograd.grad`` returns the derivatives
  instead of accumulating them (PyHessian's ``loss.backward(create_graph=True)`` fills
  ``.grad``).
- One forward pass and one backward pass with ``create_graph=True`` build the gradient graph
  once; each iteration backpropagates through it again (``retain_graph``), as PyHessian does.
- Plain power iteration converges to the eigenvalue of largest *magnitude*. Away from a minimum
  that can be a negative one; the top (most positive) eigenvalue is then found by a second power
  iteration on the shifted operator ``H - lambda I``, whose eigenvalues are all >= 0 with the
  largest at ``lambda_max - lambda``. PyHessian returns the largest-magnitude one as is.
- Convergence is PyHessian's rule: stop once the Rayleigh quotient ``v . Hv`` changes by less
  than ``tol`` relative to its previous value (``|new - old| / (|old| + 1e-6) < tol``, its
  default tol 1e-3), or after ``iters`` iterations (PyHessian: 100; 20 here by default).

Why not a library: ``hessian-eigenthings`` 1.0.0a5 installs and agrees with this on torch 2.14.1,
but its power iteration exists only in that alpha pre-release (its 0.x API was removed), and
``curvlinops-for-pytorch`` 3.0.1 provides only the Hessian-vector operator while bringing six
packages (backpack-for-pytorch, unfoldNd, einops, einconv, linear_operator, opt-einsum); neither
handles eval mode or the negative case, which is most of what this module does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["hessian_top_eigenvalue"]

Vector = list[torch.Tensor]  # one tensor per parameter, the parameters' shapes


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    # Summed in float64 so a many-million-entry product does not lose digits to fp32.
    return math.fsum(float(torch.sum(x.double() * y.double())) for x, y in zip(a, b, strict=True))


def _normalized(v: Sequence[torch.Tensor]) -> Vector:
    norm = math.sqrt(_dot(v, v))
    if norm == 0.0:
        return list(v)
    return [x / norm for x in v]


def _power_iteration(
    matvec: Callable[[Vector], Vector], v0: Vector, iters: int, tol: float
) -> float:
    """The dominant (largest-magnitude) eigenvalue of a symmetric operator (Rayleigh quotient)."""
    v = _normalized(v0)
    estimate = math.nan
    for _ in range(iters):
        hv = matvec(v)
        previous, estimate = estimate, _dot(v, hv)  # Rayleigh quotient v.Hv with |v| = 1
        if not math.isnan(previous) and abs(estimate - previous) / (abs(previous) + 1e-6) < tol:
            break
        v = _normalized(hv)
        if _dot(v, v) == 0.0:  # Hv = 0: v lies in the null space and 0 is the estimate
            break
    return estimate


def _top_eigenvalue(
    matvec: Callable[[Vector], Vector], v0: Vector, iters: int, tol: float
) -> float:
    """The largest (most positive) eigenvalue of a symmetric operator by power iteration."""
    dominant = _power_iteration(matvec, v0, iters, tol)
    if dominant >= 0.0:
        return dominant

    # The dominant eigenvalue is negative, so it is the smallest; shifting by it makes every
    # eigenvalue non-negative and the largest one dominant.
    def shifted(v: Vector) -> Vector:
        return [h - dominant * x for h, x in zip(matvec(v), v, strict=True)]

    return _power_iteration(shifted, v0, iters, tol) + dominant


def hessian_top_eigenvalue(
    model: nn.Module,
    batch_x: torch.Tensor,
    batch_y: torch.Tensor,
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
) -> float:
    """The top eigenvalue of the Hessian of the mean cross-entropy loss on one batch.

    Args:
        model: a classifier returning logits; measured at its current weights, with every module
            in eval mode (BatchNorm on running statistics, dropout off). Its weights, buffers,
            ``.grad`` and each module's train/eval flag are as before when this returns.
        batch_x: the inputs, on the model's device.
        batch_y: the integer class labels, on the model's device.
        iters: at most this many power iterations (Hessian-vector products), per phase; a
            second phase runs only if the largest-magnitude eigenvalue is negative.
        tol: stop once the estimate changes by less than this fraction between two iterations.
        seed: seeds the random start vector (drawn on the CPU, so the result does not depend on
            the device's generator).

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        >>> hessian_top_eigenvalue(model, x, y) >= 0.0  # CE is convex in a linear model
        True
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, but got {iters=}")
    if not tol > 0.0:
        raise ValueError(f"tol must be > 0, but got {tol=}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameters that require a gradient")

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(model(batch_x), batch_y)
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        # A parameter outside the graph, or one the gradient does not depend on (the loss is
        # linear in it), has a zero row and column in the Hessian: it is left out of v.
        pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
        live = [(p, g) for p, g in pairs if g.requires_grad]
        if not live:
            return 0.0
        live_params = [p for p, _ in live]
        live_grads = [g for _, g in live]

        def hvp(v: Vector) -> Vector:
            hv = torch.autograd.grad(
                live_grads,
                live_params,
                grad_outputs=v,
                retain_graph=True,
                allow_unused=True,
                materialize_grads=True,
            )
            return [h.detach() for h in hv]

        generator = torch.Generator(device="cpu").manual_seed(seed)
        v0 = [
            torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
            for p in live_params
        ]
        return _top_eigenvalue(hvp, v0, iters, tol)
    finally:
        for module, training in modes:
            module.training = training
