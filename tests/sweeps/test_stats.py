"""sweeps.stats: the paired t-interval against hand-computed values, and every verdict."""

from __future__ import annotations

import math

import pytest

from sweeps.stats import Difference, family_confidence, mean_std, paired_difference, verdict

T_975_DF2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (tables)


def test_paired_difference_matches_hand_computation() -> None:
    # differences [1, 2, 3]: mean 2, sample sd 1, half width t(0.975, 2) * 1 / sqrt(3)
    d = paired_difference([1.5, 4.0, 3.25], [0.5, 2.0, 0.25])
    half = T_975_DF2 / math.sqrt(3)
    assert d.n == 3
    assert d.mean == pytest.approx(2.0)
    assert d.std == pytest.approx(1.0)
    assert d.ci_low == pytest.approx(2.0 - half, rel=1e-9)
    assert d.ci_high == pytest.approx(2.0 + half, rel=1e-9)
    assert d.confidence == 0.95


@pytest.mark.parametrize("n", [2, 3, 5, 10, 31])
@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_the_half_width_is_scipys_student_t_quantile(n: int, confidence: float) -> None:
    from scipy import stats

    d = paired_difference([float(i * i) for i in range(n)], [0.0] * n, confidence)
    t = stats.t.ppf((1.0 + confidence) / 2.0, df=n - 1)
    assert d.ci_high - d.mean == pytest.approx(t * d.std / math.sqrt(n), rel=1e-12)


def test_confidence_widens_the_interval() -> None:
    a, b = [1.0, 2.0, 3.0, 5.0], [0.0, 0.5, 1.0, 1.0]
    narrow, wide = paired_difference(a, b, 0.8), paired_difference(a, b, 0.99)
    assert narrow.mean == wide.mean
    assert wide.ci_low < narrow.ci_low < narrow.mean < narrow.ci_high < wide.ci_high


def test_pairing_removes_shared_seed_variation() -> None:
    # Seeds move both runs together (0.70-0.90); the per-seed gap stays near 0.01: a tight
    # interval above 0, where two unpaired means would overlap.
    base = [0.80, 0.90, 0.85, 0.70]
    gaps = [0.010, 0.012, 0.009, 0.011]
    d = paired_difference([x + g for x, g in zip(base, gaps, strict=True)], base)
    assert d.mean == pytest.approx(0.0105)
    assert 0.0 < d.ci_low < d.ci_high < 0.013
    assert verdict(d, "max") == "better"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([0.902, 0.904], [0.900, 0.902]),  # one image of 500 better on each of 2 seeds
        ([0.811, 0.912, 0.713], [0.801, 0.902, 0.703]),  # equal gaps up to rounding
        ([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]),  # identical runs
    ],
)
def test_the_same_difference_on_every_seed_gives_an_unbounded_interval(
    a: list[float], b: list[float]
) -> None:
    # A test accuracy moves in steps of one image, so a few seeds can all differ by the same
    # step: the t formula's zero-width interval would claim a certainty nothing measured.
    d = paired_difference(a, b)
    assert d.n == len(a) and d.std == 0.0
    assert d.mean == pytest.approx(a[0] - b[0])
    assert d.ci_low == -math.inf and d.ci_high == math.inf
    assert verdict(d, "max") == verdict(d, "min") == "no_difference"


def test_family_confidence_is_bonferronis() -> None:
    assert family_confidence(1) == 0.95
    assert family_confidence(3) == pytest.approx(1 - 0.05 / 3)
    assert family_confidence(4, 0.9) == pytest.approx(0.975)
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"k must be at least 1, but got {bad}"):
            family_confidence(bad)
    with pytest.raises(ValueError, match="confidence must be between 0 and 1"):
        family_confidence(2, 1.0)


def test_one_seed_gives_an_unbounded_interval() -> None:
    d = paired_difference([0.9], [0.8])
    assert d.n == 1 and d.mean == pytest.approx(0.1) and d.std == 0.0
    assert d.ci_low == -math.inf and d.ci_high == math.inf
    assert verdict(d, "max") == verdict(d, "min") == "no_difference"


def test_mismatched_lengths_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match=r"one value per seed, but got 3 and 2 values") as e:
        paired_difference([1, 2, 3], [1, 2])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="at least one paired seed"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="confidence must be between 0 and 1"):
        paired_difference([1, 2], [0, 1], confidence=95)


def _diff(low: float, high: float) -> Difference:
    return Difference(mean=(low + high) / 2, std=1.0, ci_low=low, ci_high=high, n=3)


@pytest.mark.parametrize(
    ("low", "high", "mode", "expected"),
    [
        (0.1, 0.3, "max", "better"),
        (-0.3, -0.1, "max", "worse"),
        (-0.1, 0.3, "max", "no_difference"),
        (0.0, 0.3, "max", "no_difference"),  # touching 0 is not "whole interval above"
        (-0.3, -0.1, "min", "better"),
        (0.1, 0.3, "min", "worse"),
        (-0.1, 0.3, "min", "no_difference"),
        (-0.3, 0.0, "min", "no_difference"),
    ],
)
def test_verdict(low: float, high: float, mode: str, expected: str) -> None:
    assert verdict(_diff(low, high), mode) == expected  # type: ignore[arg-type]


def test_verdict_refuses_unknown_mode_and_nan_is_no_difference() -> None:
    with pytest.raises(ValueError, match="mode must be one of max, min, but got 'maximize'"):
        verdict(_diff(0.1, 0.2), "maximize")  # type: ignore[arg-type]
    nan = Difference(math.nan, math.nan, math.nan, math.nan, 3)
    assert verdict(nan, "max") == verdict(nan, "min") == "no_difference"


def test_mean_std() -> None:
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        mean_std([])
