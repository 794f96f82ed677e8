"""Seed statistics for honest sweep results: paired differences with a t-interval, and verdicts.

A sweep's search stage picks its best configuration on the validation split, so the winner's
search value is biased upwards (selection on noise). The confirmation stage re-trains the winner
and the baseline with the **same** training seeds and compares their test metric seed by seed:
pairing removes the seed-to-seed variation the two share (data order, initialisation), so the
interval on the mean difference is much narrower than one built from two unpaired means.

The interval is the textbook two-sided Student-t interval on the per-seed differences
d_i = a_i - b_i: mean(d) ± t_{(1+c)/2, n-1} · sd(d) / sqrt(n), with sd the sample standard
deviation (ddof = 1). It assumes the differences are independent and roughly normal; with the
handful of seeds a sweep affords, it says how little the data can claim, not more. Where
every seed's difference is the same (a test accuracy moves in steps of one image, so two or
three seeds can differ from the baseline by exactly one step each), ``sd(d)`` is 0 and the
formula gives an interval of zero width: a spread that was not measured, not one that is
small. Such an interval is unbounded here, as with one seed.

The winner compared is the best of several finalists by their validation metric over the
very seeds whose test values are then compared, and a lucky seed lifts a model's validation
and test accuracy together; so the best of ``k`` finalists that are all as good as the
baseline looks better than it more often than the interval's nominal error allows (about
4% instead of 2.5% one-sided for 3 finalists and 3 seeds, simulated). The sweep's interval is
therefore Bonferroni's: each of the ``k`` candidates at ``1 - 0.05 / k``
(:func:`family_confidence`), so that the intervals of all ``k``, the winner's among them,
hold together with probability at least 95% however the winner was picked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

# The t quantile itself (what scipy.stats.t.ppf calls): scipy.special loads in about 0.1 s,
# scipy.stats in about 0.5, and every report and verdict imports this module.
from scipy.special import stdtrit

__all__ = ["Difference", "family_confidence", "mean_std", "paired_difference", "verdict"]


@dataclass(frozen=True)
class Difference:
    """The paired difference a_i - b_i over n seeds and its two-sided t-interval.

    With one seed, or with every seed's difference the same, the spread is unknown, so the
    interval is unbounded: ``ci_low = -inf`` and ``ci_high = inf`` (``std = 0.0``); no verdict
    other than ``no_difference`` can follow from it.
    ``confidence`` is the interval's coverage (0.95 for a 95% interval).
    """

    mean: float
    std: float  # sample std of the per-seed differences (ddof = 1); 0.0 when not estimable
    ci_low: float
    ci_high: float
    n: int  # number of paired seeds
    confidence: float = 0.95


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) of ``values``; the std is 0.0 for one value."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty sequence of numbers, but got {len(x)} values")
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return float(x.mean()), std


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> Difference:
    """The mean of a_i - b_i over paired seeds with its two-sided Student-t interval.

    Args:
        a: per-seed values of the candidate (for example the winner's test accuracy), in seed order.
        b: per-seed values of the reference (the baseline), same seeds, same order.
        confidence: coverage of the interval, strictly between 0 and 1.

    Returns:
        A :class:`Difference`; with one seed, or the same difference on every seed, its
        interval is (-inf, inf).

    Example:
        >>> d = paired_difference([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])
        >>> d.mean, d.std, round(d.ci_low, 4), round(d.ci_high, 4)
        (2.0, 1.0, -0.4841, 4.4841)
    """
    if len(a) != len(b):
        raise ValueError(
            f"a and b must pair one value per seed, but got {len(a)} and {len(b)} values"
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), but got {confidence}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size == 0:
        raise ValueError("a and b must hold at least one paired seed, but got 0 values")
    mean, std = mean_std(d)
    n = int(d.size)
    # No spread to estimate: one seed, or the same difference on every seed (up to rounding:
    # 0.811 - 0.801 and 0.812 - 0.802 differ in their last bits), where the t formula would
    # give an interval of zero width. The interval covers everything.
    if n == 1 or np.allclose(d, d[0], rtol=1e-9, atol=1e-12):
        return Difference(mean, 0.0, -math.inf, math.inf, n, confidence)
    half = float(stdtrit(n - 1, (1.0 + confidence) / 2.0)) * std / math.sqrt(n)
    return Difference(mean, std, mean - half, mean + half, n, confidence)


def family_confidence(k: int, confidence: float = 0.95) -> float:
    """Each interval's coverage for ``k`` intervals that must hold together with probability
    at least ``confidence`` (Bonferroni: ``1 - (1 - confidence) / k``).

    The sweep's verdict compares the best of ``k`` finalists, picked on the seeds it is
    compared on, so its interval is one of ``k`` that hold together (module doc).

    Example:
        >>> family_confidence(1), round(family_confidence(3), 4)
        (0.95, 0.9833)
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, but got {k}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), but got {confidence}")
    return 1.0 - (1.0 - confidence) / k


def verdict(
    diff: Difference, mode: Literal["max", "min"]
) -> Literal["better", "no_difference", "worse"]:
    """Whether the candidate beat the reference, judged by where the whole interval lies.

    For ``mode="max"`` (higher is better, e.g. accuracy) ``better`` needs ``ci_low > 0`` and
    ``worse`` needs ``ci_high < 0``; for ``mode="min"`` (e.g. loss) the signs swap. An interval
    that touches or straddles 0 (or is NaN) is ``no_difference``: the seeds cannot tell the two
    apart, which is not evidence that they are equal.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be one of max, min, but got {mode!r}")
    above, below = diff.ci_low > 0.0, diff.ci_high < 0.0
    if mode == "max":
        return "better" if above else "worse" if below else "no_difference"
    return "better" if below else "worse" if above else "no_difference"
