"""The method table: does SAM, ASAM, AMP or AWP help on MNIST-1D (and digits), and at which radius?

Each regularizer is tuned by the project's honest-results protocol (``sweeps.runner.run_sweep``)
under the same trial budget, on the same model, data, optimizer and schedule:

1. a search of ``--num-samples`` trials over the method's registered space (``search_spaces``:
   SAM ρ, ASAM ρ, AMP ε with its inner steps and inner LR, AWP γ), Optuna TPE (seed 0, 4
   random start-up trials), selected on the validation split. The scheduler is FIFO rather
   than the default ASHA: every trial then runs its full epoch budget, so each one is a point
   of the radius figure at the same training length (an ASHA-stopped trial's value is an
   earlier epoch's);
2. the best config (``finalists.top_k: 1``) and its baseline re-trained with ``--seeds`` fresh
   training seeds, the same seeds for both;
3. the verdict: the winner's test metric minus the baseline's, paired by seed, with a 95%
   Student-t interval (``sweeps.stats``): better, no_difference or worse.

The baseline of SAM, ASAM and AMP is ERM (the perturbation off). AWP is defined on adversarial
batches, so its sweep trains with L∞ PGD (Madry et al., ICLR 2018) and its baseline is plain
PGD-AT, not ERM; it is selected on ``val_robust_acc`` and compared on ``test_robust_acc``, the
AWP paper's (Wu, Xia, Wang, NeurIPS 2020) quantity. MNIST-1D and digits inputs are standardised
(global mean 0, std 1), so the PGD budget is in those input units: ``eps`` 0.1 (a tenth of the
input std), 5 training steps of 0.05 (2.5·eps of travel, the official 10 steps of eps/4 with
half the steps, for CPU cost), PGD-20 for evaluation (the official count), nothing clamped.

ERM has nothing to search (the learning rate, weight decay and schedule are fixed and shared by
every method, and no space here searches them), so its row is not a sweep of its own: it is the
ERM baseline of the first ERM-baselined sweep (SAM, ASAM, AMP in that order), whose seeds every
other method is paired with. Each of those sweeps re-trains the same ERM config on the same
seeds as its own baseline; the page reports how far those repeats differ. Only when no
ERM-baselined method is asked for is ERM trained on its own (``run_sweep(search=False)``).

Costs: ``closure passes`` count forward-backward passes of the perturbation (PGD's attack
passes are not counted, so for AWP against PGD-AT they say 2x); ``seconds`` are the loop's own
training seconds (``train_seconds_total``), measured while two trials share the machine.

The interval covers training-seed noise on one data draw (the one the search selected on); it
says nothing about other draws of the data (``benchmarks/tuning_value.py`` checks that).

    python benchmarks/method_table.py                          # MNIST-1D, all five methods
    python benchmarks/method_table.py --datasets mnist1d,digits
    python benchmarks/method_table.py --methods erm,amp --epochs 2 --num-samples 2 --seeds 2 \\
        --num-train 300 --out /tmp/r.md --figure /tmp/r.png    # a smoke run (the test's)

Defaults (MNIST-1D 4000/1000, cnn1d, 30 epochs, 16 trials per method, 10 seeds) are sized, from
the per-epoch times in ``benchmarks/RESULTS.md``, for about half an hour on 2 idle CPU cores,
AWP's sweep (PGD batches) about half of it; the page records the wall time it took. All sweeps
run under their own names in one temporary MLflow store on a local Ray that this script
starts, and stops, itself. It writes ``docs/results.md`` (``--out``) and the radius figure
``docs/results_radius.png`` (``--figure``), and prints the page; ``--no-write`` prints only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_host.py
from _host import code_state, cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results.md"
FIGURE = ROOT / "docs" / "results_radius.png"
PREFIX = "[method_table]"

METHODS = ("erm", "sam", "asam", "amp", "awp")
DATASETS = ("mnist1d", "digits")
LABELS = {
    "erm": "ERM",
    "sam": "SAM",
    "asam": "ASAM",
    "amp": "AMP",
    "awp": "AWP",
    "pgd_at": "PGD-AT",
}
#: The perturbation each method trains with; its search space follows from it.
PERTURBATIONS: dict[str, dict[str, Any]] = {
    "erm": {"kind": "erm"},
    "sam": {"kind": "sam"},
    "asam": {"kind": "sam", "adaptive": True},
    "amp": {"kind": "amp"},
    "awp": {"kind": "awp"},
}
#: Methods whose sweep baseline is ERM, in the order the ERM row is taken from.
ERM_BASELINED = ("sam", "asam", "amp")
#: What each method's radius is, for the figure's caption.
RADIUS_MEANING = {
    "sam": "SAM ρ: global L2 norm of the ascent step",
    "asam": "ASAM ρ: the same, the ascent scaled elementwise by |w|",
    "amp": "AMP ε: L2 norm of the perturbation of each parameter tensor (absolute)",
    "awp": "AWP γ: perturbation size relative to each layer's weight norm",
}
COLORS = {
    "erm": "#444444",
    "sam": "#1f77b4",
    "asam": "#17becf",
    "amp": "#d62728",
    "awp": "#2ca02c",
    "pgd_at": "#8c564b",
}

# L∞ PGD for AWP, in standardised input units (module docstring).
PGD = {"eps": 0.1, "step_size": 0.05, "steps": 5, "eval_steps": 20, "eval_examples": 1000}
# Shared by every method and dataset: the quickstart's optimizer (SGD, lr per batch of
# batch_size, momentum, L2 coefficient) and a cosine schedule without warm-up.
OPTIM = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
DIGITS_POOL = 1437  # training images of sklearn's digits after its 80/20 split (1797 - 360)
#: Per dataset: model, data (training pool before the 10% validation split) and batch size.
DATA: dict[str, dict[str, Any]] = {
    # Greydanus's MNIST-1D ConvBase (5,210 parameters) on the reference 4000/1000 split.
    "mnist1d": {
        "title": "MNIST-1D",
        "model": {"name": "cnn1d"},
        "data": {"name": "mnist1d", "num_train": 4000, "num_test": 1000},
        "batch_size": 128,
    },
    # sklearn's 8x8 digits (1437 training, 360 test images), this project's small_cnn.
    "digits": {
        "title": "scikit-learn digits",
        "model": {"name": "small_cnn"},
        "data": {"name": "digits"},
        "batch_size": 64,
    },
}
EPOCHS = 30  # per run: ERM on MNIST-1D reaches ~90% test accuracy (quickstart)
NUM_SAMPLES = 16  # search trials per method
SEEDS = 10  # confirmation seeds per arm (>= 5, the minimum)
STARTUP_TRIALS = 4  # TPE's random trials before its model
DPI = 100
# A winning radius this close to a bound (as a share of the log-range) is "at the edge": the
# best radius may then lie outside the searched range.
EDGE = 0.05


# -- machine -------------------------------------------------------------------------------------


def machine() -> str:
    """Platform, CPU, core count and library versions, for the page's header."""
    from importlib import metadata

    import torch

    libs = ", ".join(f"{n} {metadata.version(n)}" for n in ("ray", "optuna", "mlflow"))
    return (
        f"{platform.platform()}; CPU {cpu_model()}, os.cpu_count() {os.cpu_count()}; "
        f"torch {torch.__version__}, {libs}, Python {platform.python_version()}"
    )


# -- the sweeps ----------------------------------------------------------------------------------


def train_spec(dataset: str, *, epochs: int, num_train: int | None) -> dict[str, Any]:
    """The base ``TrainSpec`` (as a dict) every method of ``dataset`` starts from: ERM.

    ``num_train``: the training pool before the validation split; None keeps the dataset's
    (MNIST-1D 4000, digits all 1437); digits is capped at its 1437 images.
    """
    d = DATA[dataset]
    data = dict(d["data"])
    if num_train is not None:
        data["num_train"] = num_train if dataset != "digits" else min(num_train, DIGITS_POOL)
    return {
        "model": d["model"],
        "data": data,
        "optim": dict(OPTIM),
        "schedule": {"name": "cosine"},
        "perturbation": {"kind": "erm"},
        "epochs": epochs,
        "batch_size": d["batch_size"],
        "seed": 0,  # the search's training seed; confirmation seeds are 1..seeds
        "device": "cpu",
    }


def sweep_spec(
    dataset: str,
    method: str,
    *,
    name: str,
    tmp: Path,
    epochs: int,
    num_train: int | None,
    num_samples: int,
    seeds: int,
) -> Any:
    """The validated ``SweepSpec`` of one method on one dataset, its stores under ``tmp``.

    Every method gets the same base spec, trial budget, searcher, scheduler and seeds; only the
    perturbation (and so the space) differs, plus PGD-AT and the robust metric for AWP.
    """
    from sweeps.spec import SweepSpec, check_space

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, but got {method!r}")
    train = train_spec(dataset, epochs=epochs, num_train=num_train)
    train["perturbation"] = dict(PERTURBATIONS[method])
    if method == "awp":
        train["adversarial"] = dict(PGD)
    spec = SweepSpec.model_validate(
        {
            "name": name,
            "train": train,
            "searcher": {"sampler": "tpe", "seed": 0, "n_startup_trials": STARTUP_TRIALS},
            "scheduler": {"name": "fifo"},
            "num_samples": num_samples,
            "resources": {"cpu": 1, "gpu": 0},
            "metric": "val_robust_acc" if method == "awp" else "val_acc",
            "mode": "max",
            # ERM alone (no search): its runs are the one "finalist", with nothing to pair.
            "finalists": {"top_k": 1, "seeds": seeds, "baseline": method != "erm"},
            "storage_path": str(tmp / "ray_results"),
            "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        }
    )
    check_space(spec)
    return spec


@dataclass(frozen=True)
class Plan:
    """One sweep to run: which method on which dataset, and whether it searches."""

    dataset: str
    method: str
    spec: Any  # SweepSpec
    search: bool = True


def plans(args: argparse.Namespace, tmp: Path, stamp: str) -> list[Plan]:
    """The sweeps to run, in order: per dataset, each requested method but ERM, then ERM on
    its own only when no ERM-baselined method is requested (module docstring)."""
    out = []
    for dataset in args.datasets:
        methods = [m for m in args.methods if m != "erm"]
        if "erm" in args.methods and not any(m in ERM_BASELINED for m in methods):
            methods.append("erm")
        for method in methods:
            spec = sweep_spec(
                dataset,
                method,
                name=f"mt-{dataset}-{method}-{stamp}",
                tmp=tmp,
                epochs=args.epochs,
                num_train=args.num_train,
                num_samples=args.num_samples,
                seeds=args.seeds,
            )
            out.append(Plan(dataset, method, spec, search=method != "erm"))
    return out


def run_plans(todo: Sequence[Plan]) -> dict[tuple[str, str], float]:
    """Run every sweep on one local Ray of this process's own; return wall seconds per sweep.

    ``run_sweep`` starts Ray with ``address="local"`` when none is initialised here; this
    function shuts down only a Ray that it saw start, never one that was already running.
    """
    import ray
    import yaml

    from sweeps.runner import run_sweep

    ours = not ray.is_initialized()
    # An inherited RAY_ADDRESS would make run_sweep join that cluster instead of its own Ray.
    address = os.environ.pop("RAY_ADDRESS", None) if ours else None
    walls: dict[tuple[str, str], float] = {}
    # Tune prints its experiment tables on stdout; this script's stdout is the page alone.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            for i, plan in enumerate(todo, start=1):
                name = plan.spec.name
                what = "search + confirmation" if plan.search else "confirmation only"
                print(f"{PREFIX} sweep {i}/{len(todo)}: {name} ({what})", flush=True)
                text = yaml.safe_dump(plan.spec.model_dump(mode="json"), sort_keys=False)
                t0 = time.perf_counter()
                result = run_sweep(plan.spec, text, progress=False, search=plan.search)
                walls[(plan.dataset, plan.method)] = time.perf_counter() - t0
                if result.report_dir:  # the sweep's own report, already in the temp store
                    shutil.rmtree(result.report_dir, ignore_errors=True)
                print(f"{PREFIX} {name}: {walls[(plan.dataset, plan.method)]:.0f} s", flush=True)
        finally:
            if ours and ray.is_initialized():
                ray.shutdown()
            if address is not None:
                os.environ["RAY_ADDRESS"] = address
    return walls


# -- what the sweeps left ------------------------------------------------------------------------

#: Per-run metrics read from the confirmation runs.
RUN_METRICS = (
    "test_acc",
    "test_robust_acc",
    "val_acc",
    "val_robust_acc",
    "train_seconds_total",
    "closure_passes_total",
)


@dataclass
class Arm:
    """The finished confirmation runs of one config: ``metrics[key][i]`` belongs to
    ``seeds[i]`` (seeds ascending); a metric a run did not report is NaN."""

    seeds: list[int]
    metrics: dict[str, list[float]]

    def values(self, key: str) -> list[float]:
        return [v for v in self.metrics.get(key, []) if math.isfinite(v)]

    def mean_std(self, key: str) -> tuple[float, float] | None:
        """Mean and sample std (ddof 1) of ``key`` over seeds; None when no run reported it."""
        from sweeps.stats import mean_std

        values = self.values(key)
        return mean_std(values) if values else None

    def by_seed(self, key: str) -> dict[int, float]:
        values = self.metrics.get(key, [])
        return {s: v for s, v in zip(self.seeds, values, strict=False) if math.isfinite(v)}


def paired(a: Arm, b: Arm, key: str) -> Any:
    """``a - b`` on ``key`` over the seeds both have (``sweeps.stats.Difference``), or None."""
    from sweeps.stats import paired_difference

    x, y = a.by_seed(key), b.by_seed(key)
    common = sorted(set(x) & set(y))
    return paired_difference([x[s] for s in common], [y[s] for s in common]) if common else None


def seconds_ratio(a: Arm | None, b: Arm | None) -> float:
    """Mean training seconds of ``a`` over ``b``'s (NaN when either is missing)."""
    if a is None or b is None:
        return math.nan
    x, y = a.mean_std("train_seconds_total"), b.mean_std("train_seconds_total")
    return x[0] / y[0] if x and y and y[0] > 0 else math.nan


@dataclass(frozen=True)
class SearchPoint:
    """One search-stage trial: its radius and last-epoch validation metrics."""

    radius: float
    val_acc: float
    val_robust_acc: float = math.nan
    diverged: bool = False


@dataclass
class MethodResult:
    """One method on one dataset: its sweep's winner, baseline, verdict and search trials."""

    dataset: str
    method: str  # erm | sam | asam | amp | awp
    sweep: str  # the sweep's name ("" for ERM read from another sweep's baseline)
    selected_on: str  # the search metric ("" for ERM: nothing searched)
    test_metric: str  # the verdict's metric: test_acc, or test_robust_acc for AWP
    ranges: dict[str, tuple[float, float]]  # searched (low, high); fixed values left out
    winner_point: dict[str, Any]  # the winner's searched values, by dotted name
    verdict: Any  # sweeps.report.Verdict, or None (ERM, or no finalist and baseline finished)
    winner: Arm | None  # ERM: its own runs
    baseline: Arm | None  # ERM for SAM/ASAM/AMP, PGD-AT for AWP; None for ERM
    search: list[SearchPoint] = field(default_factory=list)
    wall_s: float = math.nan

    @property
    def label(self) -> str:
        return LABELS[self.method]

    @property
    def baseline_label(self) -> str:
        return "PGD-AT" if self.method == "awp" else "ERM"

    @property
    def radius(self) -> float:
        r = self.winner_point.get("perturbation.radius")
        return float(r) if isinstance(r, int | float) else math.nan


def _arm(runs: Sequence[Any]) -> Arm | None:
    """The FINISHED runs among ``runs`` (one per seed) as an ``Arm``, or None."""
    from sweeps import tracking

    by_seed = {
        int(r.data.tags[tracking.TAG_SEED]): r
        for r in runs
        if r.info.status == "FINISHED" and tracking.TAG_SEED in r.data.tags
    }
    if not by_seed:
        return None
    seeds = sorted(by_seed)
    return Arm(
        seeds,
        {k: [float(by_seed[s].data.metrics.get(k, math.nan)) for s in seeds] for k in RUN_METRICS},
    )


def searched_ranges(spec: Any) -> dict[str, tuple[float, float]]:
    """The ranges the sweep's space really searches, by dotted name.

    A range with low == high is a constant (AWP's one proxy step), and AWP's proxy LR is only
    searched from two proxy steps on (``search_spaces.spaces.awp``: with one it cancels out).
    """
    ranges = spec.ranges()
    out = {k: (r.low, r.high) for k, r in ranges.items() if r.low < r.high}
    steps = ranges.get("perturbation.inner_steps")
    if spec.train.perturbation.kind == "awp" and steps is not None and steps.high < 2:
        out.pop("perturbation.inner_lr", None)
    return out


def collect(plan: Plan, wall_s: float) -> MethodResult:
    """Read one sweep's search points, winner, baseline and verdict back from its store."""
    from mlflow.tracking import MlflowClient

    from sweeps import tracking
    from trainers import test_metric_for

    spec = plan.spec
    client = MlflowClient(spec.resolved_tracking_uri())
    sweep = tracking.find_sweep(client, spec.name)
    if sweep is None:
        raise SystemExit(f"{PREFIX} sweep {spec.name!r} is not in {spec.resolved_tracking_uri()}")
    metric = spec.primary[0]
    ranges = searched_ranges(spec) if plan.search else {}
    search = []
    for run in tracking.children(client, sweep, "search"):
        point = tracking.searched_values(run)
        m = run.data.metrics
        if run.info.status != "FINISHED" or "perturbation.radius" not in point:
            continue
        search.append(
            SearchPoint(
                radius=float(point["perturbation.radius"]),
                val_acc=float(m.get("val_acc", math.nan)),
                val_robust_acc=float(m.get("val_robust_acc", math.nan)),
                diverged=run.data.tags.get(tracking.TAG_DIVERGED) == "1",
            )
        )
    verdict = tracking.compute_verdict(client, sweep)
    config = verdict.winner_config_id if verdict is not None else "f1"
    finalists = [
        r
        for r in tracking.children(client, sweep, "finalist")
        if r.data.tags.get(tracking.TAG_CONFIG) == config
    ]
    winner = _arm(finalists)
    point: dict[str, Any] = {}
    if finalists and plan.search:
        values = tracking.searched_values(finalists[0])
        point = {k: values[k] for k in ranges if k in values}
    return MethodResult(
        dataset=plan.dataset,
        method=plan.method,
        sweep=spec.name,
        selected_on=metric if plan.search else "",
        test_metric=test_metric_for(metric) or metric,
        ranges=ranges,
        winner_point=point,
        verdict=verdict,
        winner=winner,
        baseline=_arm(tracking.children(client, sweep, "baseline")),
        search=sorted(search, key=lambda p: p.radius),
        wall_s=wall_s,
    )


def erm_result(results: Sequence[MethodResult], dataset: str) -> MethodResult | None:
    """ERM's row for ``dataset``: its own runs if it ran alone, else the ERM baseline of the
    first ERM-baselined sweep (module docstring)."""
    own = [r for r in results if r.dataset == dataset and r.method == "erm"]
    if own:
        return own[0]
    for method in ERM_BASELINED:
        for r in results:
            if r.dataset == dataset and r.method == method and r.baseline is not None:
                return MethodResult(
                    dataset=dataset,
                    method="erm",
                    sweep="",
                    selected_on="",
                    test_metric="test_acc",
                    ranges={},
                    winner_point={},
                    verdict=None,
                    winner=r.baseline,
                    baseline=None,
                    wall_s=math.nan,
                )
    return None


def erm_repeat_spread(results: Sequence[MethodResult], dataset: str) -> float:
    """Largest |difference| of ERM test_acc on one seed between the ERM-baselined sweeps'
    baselines (the same config and seed trained again); NaN with fewer than two sweeps."""
    arms = [
        r.baseline
        for r in results
        if r.dataset == dataset and r.method in ERM_BASELINED and r.baseline is not None
    ]
    if len(arms) < 2:
        return math.nan
    spread = 0.0
    for seed in set(arms[0].seeds):
        values = [a.by_seed("test_acc")[seed] for a in arms if seed in a.by_seed("test_acc")]
        if len(values) > 1:
            spread = max(spread, max(values) - min(values))
    return spread


# -- the page ------------------------------------------------------------------------------------


def _pm(arm: Arm | None, key: str) -> str:
    """``mean ± std (n=N)`` of ``key`` over the arm's seeds, or a dash."""
    if arm is None or not arm.values(key):
        return "—"
    mean, std = arm.mean_std(key) or (math.nan, math.nan)
    return f"{mean:.4f} ± {std:.4f} (n={len(arm.values(key))})"


def _num(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "—"


def _ratio(x: float) -> str:
    return f"{x:.2f}×" if math.isfinite(x) else "—"


def _signed(x: float) -> str:
    return f"{x:+.4f}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf")


def _interval(d: Any) -> str:
    return f"{_signed(d.mean)} [{_signed(d.ci_low)}, {_signed(d.ci_high)}]"


_SHORT = {
    "perturbation.radius": "radius",
    "perturbation.inner_steps": "K",
    "perturbation.inner_lr": "inner_lr",
}


def _value(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def at_edge(r: MethodResult) -> str | None:
    """ "lower" or "upper" when the winning radius is within ``EDGE`` of that end of its
    (log) range, else None."""
    low, high = r.ranges.get("perturbation.radius", (math.nan, math.nan))
    x = r.radius
    if not (math.isfinite(x) and 0 < low < high):
        return None
    span = math.log(high / low)
    if math.log(x / low) <= EDGE * span:
        return "lower"
    if math.log(high / x) <= EDGE * span:
        return "upper"
    return None


def table(results: Sequence[MethodResult], erm: MethodResult | None) -> list[str]:
    """The markdown table of one dataset: one row per method, plus PGD-AT under AWP."""
    rows = [
        "| method | compared with | selected on | winning radius [searched range] "
        "| other searched values | test_acc, mean ± std | test_robust_acc (PGD-20) "
        "| Δ vs its baseline [95% CI] | verdict | cost vs its baseline: passes / seconds "
        "| seconds vs ERM |",
        "|---|---|---|---|---|---:|---:|---|---|---:|---:|",
    ]
    erm_arm = erm.winner if erm is not None else None
    for r in results:
        if r.method == "erm":
            rows.append(
                f"| ERM | — (the reference) | — (nothing searched) | — | — "
                f"| {_pm(r.winner, 'test_acc')} | — | — | — | — | {_ratio(1.0)} |"
            )
            continue
        low, high = r.ranges.get("perturbation.radius", (math.nan, math.nan))
        radius = f"{_num(r.radius)} [{_num(low)}, {_num(high)}]"
        others = ", ".join(
            f"{_SHORT.get(k, k)} {_value(v)}"
            for k, v in r.winner_point.items()
            if k != "perturbation.radius"
        )
        v = r.verdict
        delta = f"{_interval(v.diff)} ({v.metric})" if v is not None else "—"
        cost = (
            f"{_ratio(v.cost_ratio_passes)} / {_ratio(v.cost_ratio_seconds)}"
            if v is not None
            else "—"
        )
        robust = _pm(r.winner, "test_robust_acc") if r.method == "awp" else "—"
        rows.append(
            f"| {r.label} | {r.baseline_label} | {r.selected_on} | {radius} | {others or '—'} "
            f"| {_pm(r.winner, 'test_acc')} | {robust} | {delta} "
            f"| {v.verdict if v is not None else 'no verdict'} | {cost} "
            f"| {_ratio(seconds_ratio(r.winner, erm_arm))} |"
        )
        if r.method == "awp":
            rows.append(
                f"| PGD-AT | — (AWP's baseline) | — (nothing searched) | — | — "
                f"| {_pm(r.baseline, 'test_acc')} | {_pm(r.baseline, 'test_robust_acc')} | — "
                f"| — | — | {_ratio(seconds_ratio(r.baseline, erm_arm))} |"
            )
    return rows


def sentence(r: MethodResult, erm: MethodResult | None) -> str:
    """What one row says, in words, claiming no more than its interval."""
    if r.method == "erm":
        return (
            f"**ERM** is the reference: test_acc {_pm(r.winner, 'test_acc')} over its seeds. It "
            "has no hyperparameter to tune here: the learning rate, weight decay and schedule "
            "are fixed and shared by every method."
        )
    v = r.verdict
    if v is None:
        return (
            f"**{r.label}**: no verdict; no winner and {r.baseline_label} pair of runs finished "
            "on a common seed, so this run says nothing about it."
        )
    d = v.diff
    base = "plain PGD-AT" if r.method == "awp" else "ERM"
    said = {
        "better": f"beat {base}",
        "worse": f"was worse than {base}",
        "no_difference": f"could not be told apart from {base}",
    }[v.verdict]
    text = (
        f"**{r.label}** at radius {_num(r.radius)} {said} on {v.metric}: "
        f"Δ = {_signed(d.mean)}, 95% CI [{_signed(d.ci_low)}, {_signed(d.ci_high)}] "
        f"over {d.n} paired seeds"
    )
    if v.verdict == "no_difference":
        text += " (the interval contains 0: not evidence that the two are equal)"
    text += f", for {_ratio(v.cost_ratio_seconds)} {base}'s training seconds."
    edge = at_edge(r)
    if edge is not None:
        text += (
            f" The winning radius lies at the {edge} edge of the searched range, so a better "
            "one may lie outside it."
        )
    if r.method == "awp" and erm is not None and erm.winner is not None:
        clean = [
            (label, paired(arm, erm.winner, "test_acc"))
            for label, arm in (("AWP", r.winner), ("PGD-AT", r.baseline))
            if arm is not None
        ]
        parts = [f"{label} {_interval(c)}" for label, c in clean if c is not None]
        if parts:
            text += (
                " Clean test_acc against ERM on the same seeds (Δ [95% CI]): "
                + "; ".join(parts)
                + "."
            )
    return text


def summary(results: Sequence[MethodResult]) -> str:
    """One line: which methods the intervals say helped, hurt, or could not be told apart."""
    groups: dict[str, list[str]] = {"better": [], "worse": [], "no_difference": []}
    for r in results:
        if r.method != "erm" and r.verdict is not None:
            groups[r.verdict.verdict].append(f"{r.label} (vs {r.baseline_label})")
    parts = []
    if groups["better"]:
        parts.append(f"helped: {', '.join(groups['better'])}")
    if groups["worse"]:
        parts.append(f"hurt: {', '.join(groups['worse'])}")
    if groups["no_difference"]:
        parts.append(f"not distinguishable from the baseline: {', '.join(groups['no_difference'])}")
    return "; ".join(parts) if parts else "no method reached a verdict"


def draw_figure(results: Sequence[MethodResult], path: Path) -> None:
    """Validation accuracy against radius (log x), one colour per method, one row per dataset;
    with AWP a second panel of its search objective, ``val_robust_acc``. Diverged trials are
    left out; the ERM (and PGD-AT) confirmation runs' mean ± std is drawn as a band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(r.dataset for r in results))
    robust = any(r.method == "awp" for r in results)
    cols = 2 if robust else 1
    fig = Figure(figsize=(6.4 * cols, 4.4 * len(datasets)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global backend state
    axes = fig.subplots(len(datasets), cols, squeeze=False)

    def band(ax: Any, arm: Arm | None, key: str, color: str, label: str) -> None:
        ms = arm.mean_std(key) if arm is not None else None
        if ms is None:
            return
        ax.axhline(ms[0], color=color, ls="--", lw=1.2, label=f"{label} (mean ± std)")
        ax.axhspan(ms[0] - ms[1], ms[0] + ms[1], color=color, alpha=0.12, lw=0)

    def points(ax: Any, r: MethodResult, key: str, label: str) -> None:
        pts = [p for p in r.search if not p.diverged and math.isfinite(getattr(p, key))]
        dropped = len(r.search) - len(pts)
        note = f", {dropped} diverged" if dropped else ""
        ax.plot(
            [p.radius for p in pts],
            [getattr(p, key) for p in pts],
            "o",
            color=COLORS[r.method],
            alpha=0.8,
            label=f"{label} ({len(pts)} trials{note})",
        )
        if math.isfinite(r.radius):
            ax.axvline(r.radius, color=COLORS[r.method], ls=":", lw=1.2)

    for row, dataset in enumerate(datasets):
        here = [r for r in results if r.dataset == dataset]
        title = DATA[dataset]["title"]
        ax = axes[row][0]
        for r in here:
            if r.method != "erm":
                points(
                    ax, r, "val_acc", r.label + (" (PGD-AT, clean)" if r.method == "awp" else "")
                )
        erm = erm_result(results, dataset)
        band(ax, erm.winner if erm else None, "val_acc", COLORS["erm"], "ERM")
        ax.set(
            xscale="log",
            xlabel="radius (each method's own: see caption)",
            ylabel="val_acc (last epoch)",
            title=f"{title}: search trials; dotted = winning radius",
        )
        ax.legend(fontsize=8, loc="lower left")
        ax.grid(alpha=0.3, which="both")
        if robust:
            ax = axes[row][1]
            for r in here:
                if r.method == "awp":
                    points(ax, r, "val_robust_acc", "AWP")
                    band(ax, r.baseline, "val_robust_acc", COLORS["pgd_at"], "PGD-AT")
            ax.set(
                xscale="log",
                xlabel="AWP γ (relative to each layer's weight norm)",
                ylabel="val_robust_acc (PGD-20, last epoch)",
                title=f"{title}: AWP's search objective",
            )
            ax.legend(fontsize=8, loc="lower left")
            ax.grid(alpha=0.3, which="both")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)


@dataclass(frozen=True)
class Meta:
    """How the page was made: when, where, with what code, command and settings."""

    started: datetime.datetime
    command: str
    machine: str
    code: str
    wall_s: float
    load: tuple[Sequence[float], Sequence[float]]  # 1/5/15-min load average before and after
    epochs: int
    num_samples: int
    seeds: int
    num_train: int | None


def _load(load: Sequence[float]) -> str:
    return "/".join(f"{v:.2f}" for v in load)


def _data_line(dataset: str, meta: Meta) -> str:
    d = DATA[dataset]
    pool = train_spec(dataset, epochs=meta.epochs, num_train=meta.num_train)["data"].get(
        "num_train"
    )
    pool_text = pool if pool is not None else DIGITS_POOL
    test = d["data"].get("num_test", 360)
    return (
        f"{d['title']}: model `{d['model']['name']}`, a training pool of {pool_text} examples "
        f"(10% held out, stratified, for validation), {test} test examples, batch "
        f"{d['batch_size']}"
    )


def render(
    results: Sequence[MethodResult],
    meta: Meta,
    *,
    methods: Sequence[str],
    figure: str | None,
    ranges: dict[str, dict[str, tuple[float, float]]],
) -> str:
    """The whole page as markdown.

    Args:
        results: every sweep's result (ERM's row is derived from them when it did not run).
        meta: how the page was made.
        methods: the methods asked for: one row each (AWP's brings PGD-AT's).
        figure: the figure's path relative to the page, or None when none was written.
        ranges: each method's searched ranges, for the settings list.
    """
    datasets = list(dict.fromkeys(r.dataset for r in results))
    lines = [
        "# Does SAM, ASAM, AMP or AWP help here, and at which radius?",
        "",
        "Written by `benchmarks/method_table.py`; never edited by hand. Each regularizer is tuned "
        "by the same sweep protocol with the same trial budget, its winner re-trained with fresh "
        "seeds next to its baseline, and the test-set difference reported with its 95% interval, "
        "whatever it says. The search selects on the validation split only; the test set decides "
        "nothing. The interval covers training-seed noise on this one data draw, not other draws "
        "of the data.",
        "",
        f"- date: {meta.started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {meta.machine}",
        f"- code: {meta.code}",
        f"- command: `{meta.command}`",
        f"- wall: {meta.wall_s / 60:.1f} min in all; 1/5/15-min load average before "
        f"{_load(meta.load[0])}, after {_load(meta.load[1])} (2 trials run at a time; seconds "
        "ratios are only as good as the machine was quiet)",
        *(f"- data: {_data_line(d, meta)}" for d in datasets),
        f"- training (every method, every run): SGD lr {OPTIM['lr']} per batch, momentum "
        f"{OPTIM['momentum']}, weight decay {OPTIM['weight_decay']}, cosine schedule, "
        f"{meta.epochs} epochs, fp32, 1 CPU thread per trial",
        f"- search: {meta.num_samples} trials per method (Optuna TPE, seed 0, "
        f"{STARTUP_TRIALS} random start-up trials; FIFO, so every trial runs all its epochs), "
        "selected on val_acc (AWP: val_robust_acc); the best config and its baseline re-trained "
        f"with the same {meta.seeds} fresh seeds (training seeds 1–{meta.seeds}); Δ = winner − "
        "baseline on the test set, paired by seed, 95% Student-t interval; the verdict is "
        "better/worse only when the whole interval lies on one side of 0",
    ]
    for method in methods:
        if method in ranges and ranges[method]:
            spaces = ", ".join(
                f"{_SHORT.get(k, k)} [{_num(lo)}, {_num(hi)}]"
                for k, (lo, hi) in ranges[method].items()
            )
            lines.append(f"- {LABELS[method]} searched: {spaces}")
    if "awp" in methods:
        lines.append(
            f"- AWP and its baseline PGD-AT train on L∞ PGD batches: eps {PGD['eps']} in "
            f"standardised input units (inputs have std 1), {PGD['steps']} steps of "
            f"{PGD['step_size']} with a random start; robust accuracy is PGD-{PGD['eval_steps']} "
            "(whole test set; the first 1000 validation examples per epoch). AWP takes one proxy "
            "step (inner_lr then cancels), as in the paper."
        )
    lines.append(
        "- cost: closure passes (the perturbation's forward-backward passes; PGD's attack passes "
        "not counted) and the loop's training seconds, both relative to the baseline; 'seconds "
        "vs ERM' relative to the ERM row"
    )
    for dataset in datasets:
        here = [r for r in results if r.dataset == dataset]
        erm = erm_result(results, dataset)
        rows = [erm] if erm is not None and "erm" in methods else []
        rows += [r for r in here if r.method != "erm"]
        lines += ["", f"## {DATA[dataset]['title']}", "", *table(rows, erm), ""]
        spread = erm_repeat_spread(results, dataset)
        source = next(
            (r.label for m in ERM_BASELINED for r in here if r.method == m and r.baseline),
            None,
        )
        if erm is not None and source is not None and "erm" in methods:
            text = (
                f"The ERM row is the baseline of the {source} sweep; each ERM-baselined method is "
                "paired with its own sweep's ERM baseline (the same config on the same seeds)"
            )
            if math.isfinite(spread):
                text += f"; those repeats differ by at most {spread:.4f} test_acc on one seed"
            lines += [text + ".", ""]
        lines += ["What it says:", ""]
        lines += [f"- {sentence(r, erm)}" for r in rows]
        lines += ["", f"In short, on {DATA[dataset]['title']}: {summary(here)}."]
        walls = ", ".join(
            f"{r.label} {r.wall_s / 60:.1f} min" for r in here if math.isfinite(r.wall_s)
        )
        if walls:
            lines += ["", f"Sweep wall times: {walls}."]
    lines += ["", "## Validation accuracy against radius", ""]
    if figure is None:
        lines.append("(no figure written: `--no-write`)")
    else:
        meaning = "; ".join(RADIUS_MEANING[m] for m in methods if m in RADIUS_MEANING)
        lines += [
            f"![validation accuracy against radius]({figure})",
            "",
            "Every search trial's last-epoch validation accuracy against its radius, on the same "
            "model and data; a dotted line marks each method's winning radius, the dashed line "
            "and band the ERM confirmation runs' mean ± std. The radii are not on one scale: "
            f"{meaning}. Search values are selected points (TPE samples more where it did well) "
            "and one seed each, so the figure shows where each method works, not by how much.",
        ]
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------------


def _at_least(low: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, but got {value}")
        return value

    return parse


def _names(allowed: Sequence[str], what: str) -> Any:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"{what} must be a comma-separated list of {', '.join(allowed)}, but got {text!r}"
            )
        return list(dict.fromkeys(names))

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--datasets",
        type=_names(DATASETS, "--datasets"),
        default=["mnist1d"],
        help="comma-separated: mnist1d, digits (default mnist1d)",
    )
    p.add_argument(
        "--methods",
        type=_names(METHODS, "--methods"),
        default=list(METHODS),
        help=f"comma-separated subset of {', '.join(METHODS)} (default all)",
    )
    p.add_argument(
        "--num-samples",
        type=_at_least(1),
        default=NUM_SAMPLES,
        help=f"search trials per method (default {NUM_SAMPLES})",
    )
    p.add_argument(
        "--epochs", type=_at_least(1), default=EPOCHS, help=f"epochs per run (default {EPOCHS})"
    )
    p.add_argument(
        "--seeds",
        type=_at_least(2),
        default=SEEDS,
        help=f"confirmation seeds per arm, >= 2 for an interval (default {SEEDS})",
    )
    p.add_argument(
        "--num-train",
        type=_at_least(20),
        default=None,
        help="training pool before the validation split (default: MNIST-1D 4000, digits all "
        f"{DIGITS_POOL}; digits is capped at {DIGITS_POOL})",
    )
    p.add_argument("--out", type=Path, default=OUT, help="the markdown page to write")
    p.add_argument("--figure", type=Path, default=FIGURE, help="the radius figure (PNG)")
    p.add_argument("--no-write", action="store_true", help="print the page; write no file")
    p.add_argument("--keep", action="store_true", help="keep the temporary sweep directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[MethodResult]:
    """Run every sweep, print the page and write it with its figure; return the results."""
    args = parse_args(argv)
    shown = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "benchmarks/method_table.py", *shown])
    started = datetime.datetime.now(datetime.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="method_table-"))
    try:
        todo = plans(args, tmp, f"{started:%Y%m%d-%H%M%S}")
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        walls = run_plans(todo)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()
        results = [collect(p, walls[(p.dataset, p.method)]) for p in todo]
    finally:
        if args.keep:
            print(f"{PREFIX} kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = Meta(
        started=started,
        command=command,
        machine=machine(),
        code=code_state(),
        wall_s=wall,
        load=(load_before, load_after),
        epochs=args.epochs,
        num_samples=args.num_samples,
        seeds=args.seeds,
        num_train=args.num_train,
    )
    ranges = {p.method: searched_ranges(p.spec) for p in todo if p.search}
    figure = None
    if not args.no_write:
        draw_figure(results, args.figure)
        figure = os.path.relpath(args.figure.resolve(), args.out.resolve().parent)
    text = render(results, meta, methods=args.methods, figure=figure, ranges=ranges)
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"{PREFIX} wrote {args.out} and {args.figure}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
