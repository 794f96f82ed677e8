"""The end-of-sweep report: a confirmed verdict, hyperparameter importance and a few figures.

A search stage ranks configurations on the validation split, so the best search value is biased
upwards by the selection itself. The only claim this report makes is the confirmation stage's:
the winner and the baseline re-trained on the same seeds, compared on the test metric by the
paired difference and its t-interval (:mod:`sweeps.stats`). Without that stage it says so and
claims nothing.

The sweeps package loads the runs from MLflow and hands them here as plain dataclasses
(:class:`SweepRecord`, :class:`TrialRecord`, :class:`Verdict`), so this module imports neither
MLflow nor Ray and is tested on synthetic records. ``write_report`` writes ``report.md`` (plain
markdown that MLflow's artifact viewer renders, images referenced by relative file name) and
small PNG figures drawn with matplotlib's Agg canvas (no pyplot, so no global backend state).

Hyperparameter importance uses Optuna's fANOVA evaluator (Hutter, Hoos, Leyton-Brown, "An
Efficient Approach for Assessing Hyperparameter Importance", ICML 2014) on an in-memory study
rebuilt from the search trials; importances are fractions of the objective's variance that a
random forest attributes to each parameter, and are only as good as that forest's fit.
Deviation from Optuna's default evaluator, above ``IMPORTANCE_FULL_DEPTH_TRIALS`` trials only:
its trees (64 of them, ``max_depth`` 64) grow about a leaf per trial, and the marginal variances
walk each tree once per split value of the parameter, so the cost grows with the square of the
trials: 17 s at 1000 trials and 109 s at 3000 on a noisy objective (2-core Xeon), all spent in
the driver after the last trial. Beyond 256 trials the trees stop at depth 8 (at most 256
leaves): 1.6 s at 1000 trials and 2.4 s at 3000, with importances within 0.02 of the full-depth
ones at 300, 1000 and 3000 trials of a known objective; the report names the depth it used.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sweeps.stats import Difference, mean_std

if TYPE_CHECKING:  # optuna and matplotlib load only when a report is drawn (the CLI stays fast)
    from matplotlib.figure import Figure

__all__ = [
    "SweepRecord",
    "TrialRecord",
    "Verdict",
    "format_verdict_table",
    "import_dependencies",
    "verdict_metrics",
    "write_report",
]

RADIUS = "perturbation.radius"
INNER_LR = "perturbation.inner_lr"
HESSIAN = "diag.hessian_lmax"
REPORT = "report.md"
REPORT_HTML = "report.html"  # the same, self-contained: what the MLflow artifact view shows
# Every figure this module may write; a figure skipped on a rerun is removed so that the
# directory never holds a stale picture of an earlier sweep state.
FIG_IMPORTANCE = "importance.png"
FIG_RADIUS = "objective_vs_radius.png"
FIG_CONTOUR = "contour_radius_inner_lr.png"
FIG_CURVES = "val_curves.png"
FIGURES = (FIG_IMPORTANCE, FIG_RADIUS, FIG_CONTOUR, FIG_CURVES)
DPI = 100  # small files: the report is an MLflow artifact, viewed in a browser
MIN_IMPORTANCE_TRIALS = 4  # fewer points than this cannot fit a forest worth reading
#: Up to this many trials fANOVA keeps Optuna's default trees (depth 64: on this few trials
#: at most this many leaves, as many as a depth-8 tree holds); above it the trees stop at
#: depth ``IMPORTANCE_CAPPED_DEPTH`` (module doc: the default's cost grows with trials squared).
IMPORTANCE_FULL_DEPTH_TRIALS = 256
IMPORTANCE_CAPPED_DEPTH = 8


@dataclass
class TrialRecord:
    """One MLflow child run of a sweep, as the sweeps package loaded it."""

    run_id: str
    run_name: str
    stage: str  # "search" | "finalist" | "baseline"
    status: str  # MLflow status: FINISHED | FAILED | KILLED
    params: dict[str, Any]  # searched hyperparameters by dotted name, numbers already parsed
    metrics: dict[str, float]  # last value of every metric, e.g. val_acc, test_acc
    history: dict[str, list[tuple[int, float]]]  # per-epoch (epoch, value) series by metric
    config_id: str | None = None  # finalists: the search config they confirm; baseline: "baseline"
    seed: int | None = None  # training seed of finalist and baseline runs
    # stopped by the scheduler (ASHA) before its last epoch: its value is an earlier epoch's
    stopped_early: bool = False


@dataclass
class Verdict:
    """The confirmation stage's result: the winner against the baseline on shared seeds."""

    metric: str  # the test metric reported, e.g. "test_acc"
    mode: str  # "max" | "min"
    winner_config_id: str
    winner_run_ids: list[str]
    winner_values: list[float]  # per seed, in seed order
    baseline_values: list[float]  # per seed, same seeds, same order
    seeds: list[int]
    diff: Difference
    verdict: str  # better | no_difference | worse
    cost_ratio_passes: float  # winner closure passes / baseline's
    cost_ratio_seconds: float  # winner measured training seconds / baseline's
    # config id -> why it was left out: a finalist with a seed that diverged, ran out of
    # memory or failed cannot win; baseline seeds without a result are left out of the pairs
    excluded: dict[str, str] = field(default_factory=dict)
    # how many finalists the winner was picked from: its interval is at 95% jointly over them
    chosen_from: int = 1


def interval_name(v: Verdict) -> str:
    """What the verdict's interval is, in a few words: ``95% interval``, or for a winner picked
    from k finalists ``98.3% interval (95% jointly over 3 finalists)``."""
    name = f"{_pct(v.diff.confidence)} interval"
    if v.chosen_from > 1:
        joint = 1.0 - (1.0 - v.diff.confidence) * v.chosen_from
        name += f" ({_pct(joint)} jointly over {v.chosen_from} finalists)"
    return name


@dataclass
class SweepRecord:
    """Everything the report needs about one sweep."""

    name: str
    search_metric: str  # e.g. "val_acc"
    mode: str
    searched: dict[str, dict]  # dotted name -> {"low", "high", "log", "integer"}
    trials: list[TrialRecord]
    verdict: Verdict | None  # None when the finalist stage was off or did not finish


# -- formatting --------------------------------------------------------------------------------


def _num(x: float) -> str:
    """A metric value with 4 significant digits (accuracies, losses and eigenvalues alike)."""
    return f"{x:.4g}" if math.isfinite(x) else str(float(x))


def _signed(x: float) -> str:
    return f"{x:+.4g}" if math.isfinite(x) else str(float(x))


def _ratio(x: float) -> str:
    return f"{x:.2f}x" if math.isfinite(x) else "n/a"


def _pm(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return f"{_num(mean)} ± {_num(std)}"


def _pct(confidence: float) -> str:
    return f"{confidence * 100:.3g}%"


def _cell(text: object) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text: object) -> str:
    return f"`{_cell(text).replace('`', '')}`"


def _interval(d: Difference) -> str:
    return f"[{_signed(d.ci_low)}, {_signed(d.ci_high)}]"


def _verdict_rule(mode: str) -> str:
    side = "above" if mode == "max" else "below"
    return f"better when the whole interval lies {side} 0, worse when it lies on the other side"


def format_verdict_table(v: Verdict) -> str:
    """A few plain-text lines the CLI prints at the end of a sweep (no markdown, no colour)."""
    seeds = ", ".join(str(s) for s in v.seeds)
    rows = [
        ("winner", v.winner_config_id, _pm(v.winner_values)),
        ("baseline", "", _pm(v.baseline_values)),
        (
            "delta",
            "",
            f"{_signed(v.diff.mean)}  {interval_name(v)} {_interval(v.diff)}  -> {v.verdict}",
        ),
        (
            "cost",
            "",
            f"{_ratio(v.cost_ratio_passes)} closure passes, {_ratio(v.cost_ratio_seconds)} seconds",
        ),
    ]
    width = max(len(r[1]) for r in rows)
    lines = [f"{v.metric} ({v.mode}), {len(v.seeds)} paired seeds [{seeds}]"]
    lines += [f"  {label:<9}{cfg:<{width}}  {text}".rstrip() for label, cfg, text in rows]
    lines += [f"  excluded {cid}: {why}" for cid, why in v.excluded.items()]
    return "\n".join(lines)


def verdict_metrics(v: Verdict) -> dict[str, float]:
    """The parent run's ``final.*`` metrics for MLflow, with ``<m>`` the test metric.

    Keys: ``final.winner.<m>.mean``, ``final.winner.<m>.std``, ``final.baseline.<m>.mean``,
    ``final.baseline.<m>.std``, ``final.delta.<m>.mean``, ``final.delta.<m>.ci_low``,
    ``final.delta.<m>.ci_high``, ``final.delta.<m>.confidence`` (the interval's coverage:
    0.95 jointly over the finalists, ``1 - 0.05 / k`` each), ``final.winner.cost_ratio``
    (closure passes) and ``final.winner.cost_ratio_seconds``. An interval bound that is not
    finite (one seed, or the same difference on every seed) is
    left out rather than logged: MLflow's SQL store clamps infinity to ±1.8e308, which reads as
    a measurement, while a missing bound cannot be misread.
    """
    m = v.metric
    w_mean, w_std = mean_std(v.winner_values)
    b_mean, b_std = mean_std(v.baseline_values)
    out = {
        f"final.winner.{m}.mean": w_mean,
        f"final.winner.{m}.std": w_std,
        f"final.baseline.{m}.mean": b_mean,
        f"final.baseline.{m}.std": b_std,
        f"final.delta.{m}.mean": float(v.diff.mean),
        f"final.delta.{m}.confidence": float(v.diff.confidence),
        "final.winner.cost_ratio": float(v.cost_ratio_passes),
        "final.winner.cost_ratio_seconds": float(v.cost_ratio_seconds),
    }
    for bound, x in (("ci_low", v.diff.ci_low), ("ci_high", v.diff.ci_high)):
        if math.isfinite(x):
            out[f"final.delta.{m}.{bound}"] = float(x)
    return out


# -- report sections ---------------------------------------------------------------------------
# Each section returns its markdown lines and the figures it drew, by file name.

Section = tuple[list[str], dict[str, "Figure"]]


def _search_trials(record: SweepRecord) -> list[TrialRecord]:
    """Search trials that ran every epoch with a finite search metric (an early-stopped trial's
    value is an earlier epoch's, which would bias the importance and radius figures)."""
    return [
        t
        for t in record.trials
        if t.stage == "search"
        and t.status == "FINISHED"
        and not t.stopped_early
        and math.isfinite(t.metrics.get(record.search_metric, math.nan))
    ]


def _overview(record: SweepRecord) -> list[str]:
    search = [t for t in record.trials if t.stage == "search"]
    full = sum(t.status == "FINISHED" and not t.stopped_early for t in search)
    stopped = sum(t.status == "FINISHED" and t.stopped_early for t in search)
    counts = {
        "FAILED": sum(t.status == "FAILED" for t in search),
        "KILLED": sum(t.status == "KILLED" for t in search),
    }
    status = f"{full} ran every epoch, {stopped} stopped early by the scheduler" + "".join(
        f", {n} {s}" for s, n in counts.items() if n
    )
    searched = ", ".join(_code(p) for p in record.searched) or "nothing"
    return [
        f"# Sweep {_code(record.name)}",
        "",
        f"Search: {len(search)} trials ({status}), objective {_code(record.search_metric)} "
        f"({record.mode}) on the validation split, searched {searched}. Values from the search "
        "stage are selected on that split and biased upwards; only the confirmation below is a "
        "result.",
        "",
    ]


def _verdict_section(record: SweepRecord) -> list[str]:
    v = record.verdict
    lines = ["## Verdict", ""]
    if v is None:
        return lines + [
            "No confirmation stage ran (it was off, or it did not finish), so this report makes "
            "no claim that any configuration beats the baseline.",
            "",
        ]
    d, m, conf = v.diff, _code(v.metric), _pct(v.diff.confidence)
    picked = (
        f"The winner {_code(v.winner_config_id)}, the finalist with the best mean validation "
        f"metric of the {v.chosen_from} re-trained on the same {len(v.seeds)} seeds as the "
        "baseline, was"
        if v.chosen_from > 1
        else f"The winner {_code(v.winner_config_id)} and the baseline were re-trained on the "
        f"same {len(v.seeds)} seeds and"
    )
    lines += [
        f"{picked} compared with the baseline on the test metric {m} ({v.mode}) by the paired "
        f"difference winner − baseline and its two-sided {conf} Student-t interval "
        f"({_verdict_rule(v.mode)}).",
        "",
        "| | value |",
        "|---|---|",
        f"| winner {_code(v.winner_config_id)}, {m} mean ± std | {_pm(v.winner_values)} |",
        f"| baseline, {m} mean ± std | {_pm(v.baseline_values)} |",
        f"| difference winner − baseline, mean | {_signed(d.mean)} |",
        f"| {conf} interval of the difference | {_interval(d)} |",
        f"| verdict | **{v.verdict}** |",
        f"| cost ratio, closure passes (winner / baseline) | {_ratio(v.cost_ratio_passes)} |",
        f"| cost ratio, training seconds (winner / baseline) | {_ratio(v.cost_ratio_seconds)} |",
        "",
    ]
    if v.chosen_from > 1:
        lines += [
            f"The interval is at {conf} so that the {v.chosen_from} finalists' intervals hold "
            f"at 95% jointly (Bonferroni): the winner was picked on the very seeds it is "
            "compared on, and a lucky seed lifts validation and test accuracy together, so a "
            "95% interval for the best of several would claim an effect by chance too often.",
            "",
        ]
    if d.n == 1:
        lines += ["With one seed the spread is unknown: the interval is unbounded.", ""]
    elif not math.isfinite(d.ci_low):
        lines += [
            "Every seed's difference was the same, so their spread is unknown (not zero): "
            "the interval is unbounded. More seeds can tell.",
            "",
        ]
    if v.excluded:
        lines += [
            "Left out: a finalist with a seed that diverged, ran out of memory or failed cannot "
            "win (on the seeds it survived it would look better than it is), and a baseline "
            "seed without a result has no pair.",
            "",
        ]
        lines += [f"- {_code(cid)}: {why}" for cid, why in v.excluded.items()] + [""]
    lines += [
        f"Per seed ({m}):",
        "",
        "| seed | winner | baseline | winner − baseline |",
        "|---|---|---|---|",
    ]
    for s, w, b in zip(v.seeds, v.winner_values, v.baseline_values, strict=True):
        lines.append(f"| {s} | {_num(w)} | {_num(b)} | {_signed(w - b)} |")
    lines.append("")
    lines += _other_finalists(record, v)
    return lines


def _other_finalists(record: SweepRecord, v: Verdict) -> list[str]:
    """Per-seed test values of the finalist configs that did not win (from their runs)."""
    groups: dict[str, list[TrialRecord]] = {}
    for t in record.trials:
        if t.stage == "finalist" and t.config_id not in (None, v.winner_config_id):
            groups.setdefault(str(t.config_id), []).append(t)
    if not groups:
        return []
    lines = [
        f"Other finalists ({_code(v.metric)} per seed; not compared, shown for context):",
        "",
        "| config | per seed | mean ± std |",
        "|---|---|---|",
    ]
    for cfg, runs in groups.items():
        runs.sort(key=lambda t: (t.seed is None, t.seed if t.seed is not None else 0))
        cells, values = [], []
        for t in runs:
            x = t.metrics.get(v.metric)
            if t.status == "FINISHED" and x is not None and math.isfinite(x):
                cells.append(f"{t.seed}: {_num(x)}")
                values.append(x)
            else:
                cells.append(f"{t.seed}: {_cell(t.status)}")
        summary = _pm(values) if values else "n/a"
        lines.append(f"| {_code(cfg)} | {', '.join(cells)} | {summary} |")
    return lines + [""]


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO lines ("A new study created in memory") and restore the level."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _distributions(record: SweepRecord, trials: list[TrialRecord]) -> dict[str, Any]:
    """Optuna distributions of the searched parameters.

    The bounds are widened to the values the trials actually hold, so a range overridden after
    the search (or a rounding in the tracking store) cannot make ``create_trial`` refuse a point.
    """
    from optuna.distributions import FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, r in record.searched.items():
        seen = [float(t.params[name]) for t in trials if name in t.params]
        low, high = min([float(r["low"]), *seen]), max([float(r["high"]), *seen])
        log = bool(r.get("log", False))
        if r.get("integer", False):
            out[name] = IntDistribution(int(math.floor(low)), int(math.ceil(high)), log=log)
        else:
            out[name] = FloatDistribution(low, high, log=log)
    return out


def _study(record: SweepRecord, trials: list[TrialRecord]) -> Any:
    """An in-memory Optuna study holding the search trials as COMPLETE trials."""
    import optuna
    from optuna.distributions import IntDistribution

    dists = _distributions(record, trials)
    frozen = []
    for t in trials:
        params = {}
        for k, dist in dists.items():
            if k in t.params:
                x = t.params[k]
                params[k] = int(round(float(x))) if isinstance(dist, IntDistribution) else float(x)
        frozen.append(
            optuna.trial.create_trial(
                value=float(t.metrics[record.search_metric]),
                params=params,
                distributions={k: dists[k] for k in params},
            )
        )
    with _quiet_optuna():
        study = optuna.create_study(direction="maximize" if record.mode == "max" else "minimize")
        study.add_trials(frozen)
    return study


def _importance_section(record: SweepRecord, trials: list[TrialRecord]) -> Section:
    lines = ["## Hyperparameter importance", ""]
    # fANOVA assesses the parameters every trial holds (a conditional parameter drops out).
    common = [p for p in record.searched if all(p in t.params for t in trials)]
    if len(common) < 2 or len(trials) < MIN_IMPORTANCE_TRIALS:
        why = (
            f"only {len(common)} searched parameter(s) present in every trial"
            if len(common) < 2
            else f"only {len(trials)} FINISHED search trial(s) with a finite "
            f"{_code(record.search_metric)}, fewer than {MIN_IMPORTANCE_TRIALS}"
        )
        return lines + [
            f"Skipped: importance needs at least 2 parameters and "
            f"{MIN_IMPORTANCE_TRIALS} trials, and there are {why}.",
            "",
        ], {}
    values = [t.metrics[record.search_metric] for t in trials]
    if max(values) == min(values):
        return lines + [
            f"Skipped: every search trial has the same {_code(record.search_metric)} "
            f"({_num(values[0])}), so there is no variance to attribute.",
            "",
        ], {}

    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    capped = len(trials) > IMPORTANCE_FULL_DEPTH_TRIALS
    # The report names the evaluator from the arguments it really got.
    kwargs = {"seed": 0, **({"max_depth": IMPORTANCE_CAPPED_DEPTH} if capped else {})}
    name = f"FanovaImportanceEvaluator({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    with _quiet_optuna():
        importances = optuna.importance.get_param_importances(
            _study(record, trials), evaluator=FanovaImportanceEvaluator(**kwargs), params=common
        )
    dropped = ", ".join(_code(p) for p in record.searched if p not in common)
    lines += [
        f"Evaluator: Optuna `{name}` (fANOVA, Hutter et al. 2014) on "
        f"{_code(record.search_metric)} of the {len(trials)} search trials that ran every epoch "
        "(their last value; a trial the scheduler stopped early would give an earlier epoch's, "
        "so those are left out). "
        "Importances are fractions of the objective's variance and sum to 1; with few trials "
        "the random forest behind them fits poorly, so read them as a rough ranking."
        + (
            f" Above {IMPORTANCE_FULL_DEPTH_TRIALS} trials the forest's trees stop at depth "
            f"{IMPORTANCE_CAPPED_DEPTH} (Optuna's default, 64, costs time in the square of the "
            "trials)."
            if capped
            else ""
        )
        + (
            f" Left out, because some trials do not hold them (conditional): {dropped}."
            if dropped
            else ""
        ),
        "",
        "| parameter | importance |",
        "|---|---|",
    ]
    lines += [f"| {_code(p)} | {x:.3f} |" for p, x in importances.items()]
    lines += ["", f"![hyperparameter importance]({FIG_IMPORTANCE})", ""]

    fig = _figure(5.0, 0.5 + 0.45 * len(importances))
    ax = fig.add_subplot()
    names = list(importances)[::-1]  # most important on top
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance of {record.search_metric} (fANOVA)")
    ax.set_xlim(0, 1)
    return lines, {FIG_IMPORTANCE: fig}


def _radius_section(record: SweepRecord, trials: list[TrialRecord]) -> Section:
    lines = ["## Objective against radius", ""]
    points = [
        (float(t.params[RADIUS]), t.metrics[record.search_metric])
        for t in trials
        if RADIUS in t.params
    ]
    if RADIUS not in record.searched or not points:
        why = "was not searched" if RADIUS not in record.searched else "is in no FINISHED trial"
        return lines + [f"Skipped: {_code(RADIUS)} {why}.", ""], {}
    fig = _figure(5.0, 3.5)
    ax = fig.add_subplot()
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=18, color="tab:blue")
    if all(p[0] > 0 for p in points):
        ax.set_xscale("log")
    ax.set_xlabel(RADIUS)
    ax.set_ylabel(record.search_metric)
    ax.set_title(f"{len(points)} search trials", fontsize=10)
    ax.grid(alpha=0.3)
    return lines + [
        f"{_code(record.search_metric)} of each FINISHED search trial against "
        f"{_code(RADIUS)} (log axis).",
        "",
        f"![objective against radius]({FIG_RADIUS})",
        "",
    ], {FIG_RADIUS: fig}


def _contour_section(record: SweepRecord, trials: list[TrialRecord]) -> Section:
    lines = ["## Radius × inner learning rate", ""]
    missing = [p for p in (RADIUS, INNER_LR) if p not in record.searched]
    if missing:
        names = " and ".join(_code(p) for p in missing)
        verb = "were" if len(missing) > 1 else "was"
        return lines + [f"Skipped: {names} {verb} not searched, so there is no contour.", ""], {}
    pts = [
        (float(t.params[RADIUS]), float(t.params[INNER_LR]), t.metrics[record.search_metric])
        for t in trials
        if RADIUS in t.params and INNER_LR in t.params
    ]
    if not pts:
        return lines + ["Skipped: no FINISHED trial holds both parameters.", ""], {}

    import numpy as np
    from matplotlib.tri import Triangulation

    # Interpolate in the space the sampler searched: log10 for log-uniform ranges, so the
    # triangles are not stretched across decades.
    logs = [bool(record.searched[p].get("log", False)) for p in (RADIUS, INNER_LR)]
    xyz = np.array(pts, dtype=float)
    for i, log in enumerate(logs):
        if log and (xyz[:, i] > 0).all():
            xyz[:, i] = np.log10(xyz[:, i])
        else:
            logs[i] = False
    try:
        tri = Triangulation(xyz[:, 0], xyz[:, 1])
    except (ValueError, RuntimeError):  # < 3 distinct or collinear points: no triangles
        tri = None
    fig = _figure(5.0, 4.0)
    ax = fig.add_subplot()
    if tri is not None:
        filled = ax.tricontourf(tri, xyz[:, 2], levels=12, cmap="viridis")
        fig.colorbar(filled, ax=ax, label=record.search_metric)
        ax.scatter(xyz[:, 0], xyz[:, 1], s=14, c="white", edgecolors="black", linewidths=0.5)
    else:
        points = ax.scatter(xyz[:, 0], xyz[:, 1], c=xyz[:, 2], cmap="viridis", s=24)
        fig.colorbar(points, ax=ax, label=record.search_metric)
    # Pad the limits so the trials on the edge of the searched box stay visible.
    for lim, col in ((ax.set_xlim, xyz[:, 0]), (ax.set_ylim, xyz[:, 1])):
        pad = 0.04 * (col.max() - col.min()) or 0.1
        lim(col.min() - pad, col.max() + pad)
    ax.set_xlabel(("log10 " if logs[0] else "") + RADIUS)
    ax.set_ylabel(("log10 " if logs[1] else "") + INNER_LR)
    if tri is None:
        text = (
            f"{_code(record.search_metric)} of the {len(pts)} FINISHED search trials: too few "
            "distinct points to interpolate a contour, so only the trials are drawn."
        )
    else:
        text = (
            f"{_code(record.search_metric)} interpolated linearly between the {len(pts)} "
            f"FINISHED search trials (white dots){', on log10 axes' if any(logs) else ''}; the "
            "colours between dots are an interpolation, not measurements."
        )
    return lines + [
        text,
        "",
        f"![radius x inner lr contour]({FIG_CONTOUR})",
        "",
    ], {FIG_CONTOUR: fig}


def _curves_section(record: SweepRecord) -> Section:
    metric = record.search_metric
    lines = ["## Validation curves", ""]
    runs = [
        t for t in record.trials if t.stage in ("finalist", "baseline") and t.history.get(metric)
    ]
    if not runs:
        return lines + [
            f"Skipped: no finalist or baseline run logged a {_code(metric)} history.",
            "",
        ], {}
    from matplotlib.ticker import MaxNLocator

    winner = record.verdict.winner_config_id if record.verdict else None
    configs = sorted({str(t.config_id) for t in runs}, key=lambda c: (c != winner, c))
    palette = [f"tab:{c}" for c in ("blue", "orange", "green", "red", "purple", "brown", "pink")]
    colours, i = {}, 0
    for c in configs:
        if c == "baseline":
            colours[c] = "black"
        else:
            colours[c] = palette[i % len(palette)]
            i += 1
    fig = _figure(5.5, 3.8)
    ax = fig.add_subplot()
    labelled: set[str] = set()
    for t in runs:
        cfg = str(t.config_id)
        series = sorted(t.history[metric])
        label = None
        if cfg not in labelled:
            labelled.add(cfg)
            label = f"{cfg} (winner)" if cfg == winner else cfg
        ax.plot(
            [e for e, _ in series],
            [x for _, x in series],
            color=colours[cfg],
            linestyle="--" if cfg == "baseline" else "-",
            linewidth=1.2,
            alpha=0.8,
            label=label,
        )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return lines + [
        f"{_code(metric)} per epoch of the {len(runs)} finalist and baseline runs, one line per "
        "run, one colour per config (baseline dashed black).",
        "",
        f"![val curves]({FIG_CURVES})",
        "",
    ], {FIG_CURVES: fig}


def _diagnostics_section(record: SweepRecord) -> list[str]:
    lines = ["## Flatness diagnostics (diagnostic, not an objective)", ""]
    v = record.verdict
    if v is None:
        return lines + ["Skipped: no confirmation stage ran, so there is nothing to compare.", ""]
    winner_ids = set(v.winner_run_ids)
    groups = {
        f"winner {_code(v.winner_config_id)}": [t for t in record.trials if t.run_id in winner_ids],
        "baseline": [
            t for t in record.trials if t.stage == "baseline" and (t.seed in v.seeds or not v.seeds)
        ],
    }
    lines += [
        f"{_code(HESSIAN)}: the largest Hessian eigenvalue logged by each run (a sharpness "
        "measure: lower is flatter). Neither the search nor the verdict uses it.",
        "",
        f"| runs | {_code(HESSIAN)} mean ± std | runs reporting it |",
        "|---|---|---|",
    ]
    for label, runs in groups.items():
        values = [
            t.metrics[HESSIAN]
            for t in runs
            if HESSIAN in t.metrics and math.isfinite(t.metrics[HESSIAN])
        ]
        summary = _pm(values) if values else "n/a"
        lines.append(f"| {label} | {summary} | {len(values)} of {len(runs)} |")
    return lines + [""]


# -- writing -------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: no pyplot, so no global state and no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in the same directory and ``os.replace`` it, so
    a reader (or an MLflow artifact upload) never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# What drawing a report imports beyond a sweep driver's own modules: about 1.3 s and 100 MB
# in a driver on the 2-core development machine (fANOVA's scikit-learn and SciPy through
# Optuna, Matplotlib), against 0.4 s for the report's own work. Imported lazily, so that the
# CLI starts quickly.
DEPENDENCIES = (
    "optuna.importance",
    "matplotlib.backends.backend_agg",
    "matplotlib.figure",
    "matplotlib.ticker",
    "matplotlib.tri",
    "markdown_it",
)


_IMPORTING = threading.Lock()


def import_dependencies() -> None:
    """Import what :func:`write_report` imports when it draws, ahead of it.

    A sweep's driver calls this on a background thread while its last trials leave a slot
    idle, so the end of the sweep does not wait for these imports (``sweeps.runner``).
    """
    import importlib

    with _IMPORTING:
        for name in DEPENDENCIES:
            importlib.import_module(name)


def write_report(record: SweepRecord, out_dir: Path) -> list[Path]:
    """Write ``report.md`` and its PNG figures into ``out_dir``; return the paths, report first.

    Every file is replaced atomically. Figures are written before ``report.md`` so that the
    report never references a missing file, and a figure of this module's that the current
    record no longer produces is removed.

    Args:
        record: the sweep, as loaded by the sweeps package.
        out_dir: the folder to write into (created when missing).

    Returns:
        ``[out_dir / "report.md", *figures]``.
    """
    # An import_dependencies still running on another thread finishes first: two threads
    # importing one package tree at once can meet in CPython's per-module import locks.
    with _IMPORTING:
        pass
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = _search_trials(record)
    lines = _overview(record) + _verdict_section(record)
    figures: dict[str, Figure] = {}
    for section in (
        _importance_section(record, trials),
        _radius_section(record, trials),
        _contour_section(record, trials),
        _curves_section(record),
    ):
        lines += section[0]
        figures.update(section[1])
    lines += _diagnostics_section(record)

    paths = []
    for name, fig in figures.items():
        path = out_dir / name
        _atomic_write(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=DPI))
        paths.append(path)
    for name in FIGURES:
        if name not in figures:
            with contextlib.suppress(FileNotFoundError):
                (out_dir / name).unlink()
    report = out_dir / REPORT
    text = "\n".join(lines).rstrip() + "\n"
    _atomic_write(report, lambda f: f.write(text.encode("utf-8")))
    html = out_dir / REPORT_HTML
    page = _html(record.name, text, out_dir)
    _atomic_write(html, lambda f: f.write(page.encode("utf-8")))
    return [report, html, *paths]


def _html(title: str, markdown: str, folder: Path) -> str:
    """``report.md`` as one self-contained HTML page, its figures embedded as data URIs.

    MLflow 3.17's artifact view renders markdown but leaves relative images as text; it
    shows an HTML artifact in a sandboxed frame, where only embedded images display.
    """
    import base64
    import html as html_lib

    from markdown_it import MarkdownIt

    def inline(src: str) -> str:
        path = folder / src
        if "/" in src or not src.endswith(".png") or not path.is_file():
            return src
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")

    md = MarkdownIt("commonmark").enable("table")
    tokens = md.parse(markdown)
    for token in tokens:
        for child in token.children or []:
            if child.type == "image":
                child.attrSet("src", inline(str(child.attrGet("src") or "")))
    body = md.renderer.render(tokens, md.options, {})
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>"
        f"{html_lib.escape(title)}</title><style>{style}</style></head><body>{body}</body></html>\n"
    )
