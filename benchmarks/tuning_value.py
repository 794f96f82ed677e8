"""Tuning value: does a sweep's verdict against ERM hold on data draws the sweep never saw?

A sweep (``sweeps.runner.run_sweep``) searches on the validation split, re-trains its top-K
configurations ("finalists") and the baseline (perturbation off: ERM) with the same fresh
training seeds, and records on its MLflow parent run the winner's test metric minus the
baseline's, paired by seed, with a 95% Student-t interval (``final.delta.<m>.*``) and a verdict
(``flatsweep.verdict``: better | no_difference | worse). That interval covers training-seed
noise only: every finalist and baseline run trains and is tested on the *same* data draw, the
one the search also selected the winner on. Whether the regularizer is worth tuning is a claim
about the method on this kind of data, so here it is checked on data the sweep never touched.

Protocol (honest-results issue, section 5):

1. run the sweep (``SPEC``, default ``examples/quickstart.yaml``) in a temporary directory with
   its own SQLite tracking store and Tune storage, on a local Ray that ``run_sweep`` starts;
2. read its verdict and the winner run's full ``TrainSpec`` (tag ``flatsweep.train_spec``);
3. on each of ``--draws`` fresh data draws i = 0, 1, ... (``data.seed = 1000 + i``, training
   ``seed = i``, everything else identical) train the winner's spec and the same spec with its
   perturbation replaced by ``{kind: erm}``, and pair the two test metrics by draw;
4. report the sweep's own interval next to the fresh-draw paired difference with its 95%
   t-interval (``sweeps.stats.paired_difference``), both verdicts, the cost ratio of the winner
   to ERM (closure passes and measured training seconds) and the wall time.

The baseline is the sweep's own, perturbation off: when the sweep also tuned the optimizer
(``space.optimizer``), its baseline had its own optimizer search, and that baseline's optimizer
is kept here instead of the winner's. For AWP the winner's PGD adversarial training stays on in
the baseline (plain PGD-AT), as in the sweep.

A fresh data draw means new examples only for generated datasets (MNIST-1D regenerated from
``data.seed``, synthetic); for a fixed dataset (CIFAR, SVHN, digits) ``data.seed`` only re-carves
the validation (and, for digits, the test) split, and the section says so.

    python benchmarks/tuning_value.py                                  # the quickstart sweep
    python benchmarks/tuning_value.py SPEC --draws 8
    python benchmarks/tuning_value.py --epochs 2 --num-samples 2 --top-k 1 --seeds 2 --draws 2

``--epochs``, ``--num-samples``, ``--top-k`` and ``--seeds`` shrink the spec for a quick run.
The section is printed and appended to ``benchmarks/RESULTS.md`` (``--results`` elsewhere,
``--no-record`` nowhere) with the date (UTC), the machine and the exact command.
"""

from __future__ import annotations

import argparse
import datetime
import json
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
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
DEFAULT_SPEC = ROOT / "examples" / "quickstart.yaml"
INTRO = (
    "# Benchmark results\n\n"
    "Measurements appended by the scripts in `benchmarks/`, newest last; never edited by hand.\n"
)
#: ``data.seed`` of fresh draw i is FRESH_DATA_SEED + i: far from the small seeds specs use, so
#: no draw is the sweep's own.
FRESH_DATA_SEED = 1000
#: Datasets that ``data.seed`` regenerates as a whole (new examples, test set included).
GENERATED = {"mnist1d", "synthetic"}
PREFIX = "[tuning_value]"


# -- machine -------------------------------------------------------------------------------------


def machine() -> str:
    """Platform, CPU, core count and library versions, for the results section."""
    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{platform.platform()}; CPU {cpu_model()}, os.cpu_count() {os.cpu_count()}{gpu}; "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def fmt_load(load: Sequence[float]) -> str:
    return "/".join(f"{v:.2f}" for v in load)


# -- the sweep -----------------------------------------------------------------------------------


def shrink(
    spec: Any,
    *,
    epochs: int | None = None,
    num_samples: int | None = None,
    top_k: int | None = None,
    seeds: int | None = None,
) -> Any:
    """``spec`` (a ``SweepSpec``) with fewer epochs, search trials, finalists or seeds.

    With fewer epochs, multistep milestones at or past the last epoch are dropped and the
    scheduler's ``grace_period`` and ``max_t`` are capped at the epochs, so the spec stays
    valid and every trial can still run its whole budget. The result is validated again.
    """
    from sweeps.spec import SweepSpec

    raw = spec.model_dump(mode="json")
    if epochs is not None:
        milestones = [m for m in spec.train.schedule.milestones if m < epochs]
        train = spec.train.with_overrides({"epochs": epochs, "schedule.milestones": milestones})
        raw["train"] = train.model_dump(mode="json")
        for key in ("grace_period", "max_t"):
            if raw["scheduler"].get(key) is not None:
                raw["scheduler"][key] = min(raw["scheduler"][key], epochs)
    if num_samples is not None:
        raw["num_samples"] = num_samples
    if top_k is not None:
        raw["finalists"]["top_k"] = top_k
    if seeds is not None:
        raw["finalists"]["seeds"] = seeds
    return SweepSpec.model_validate(raw)


def isolate(spec: Any, tmp: Path, name: str) -> Any:
    """``spec`` renamed, with its Tune storage and SQLite tracking store under ``tmp``."""
    from sweeps.spec import with_name

    spec = with_name(spec, name)
    return spec.model_copy(
        update={
            "storage_path": str(tmp / "ray_results"),
            "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        }
    )


def baseline_of(winner: Any, sweep_baseline: Any | None = None) -> Any:
    """The winner's ``TrainSpec`` with the perturbation off (``{kind: erm}``; PGD-AT kept).

    When the sweep tuned the baseline's optimizer on its own (``space.optimizer``), its
    baseline run's optimizer (``sweep_baseline.optim``) replaces the winner's.
    """
    spec = winner.with_overrides({"perturbation": {"kind": "erm"}})
    if sweep_baseline is not None and sweep_baseline.optim != winner.optim:
        spec = spec.with_overrides({"optim": sweep_baseline.optim.model_dump(mode="json")})
    return spec


def fresh_draw(spec: Any, i: int) -> Any:
    """``spec`` on fresh draw ``i``: data.seed FRESH_DATA_SEED + i, training seed i."""
    return spec.with_overrides({"data.seed": FRESH_DATA_SEED + i, "seed": i})


@dataclass(frozen=True)
class SweepVerdict:
    """What the sweep recorded on its parent run about the winner against the baseline."""

    metric: str  # the test metric compared, e.g. "test_acc"
    mode: str  # max | min
    verdict: str  # better | no_difference | worse
    mean: float  # final.delta.<m>.mean
    ci_low: float  # -inf when the sweep left the bound out (one seed)
    ci_high: float
    winner_mean: float
    winner_std: float
    baseline_mean: float
    baseline_std: float
    cost_ratio: float  # closure passes, winner / baseline
    cost_ratio_seconds: float
    seeds: list[int]  # the confirmation stage's training seeds
    winner_run_id: str
    winner_config_id: str
    winner_point: dict[str, Any]  # the winner's searched values
    winner: Any  # its TrainSpec
    baseline: Any  # the TrainSpec compared against it on the fresh draws


def read_verdict(tracking_uri: str, name: str) -> SweepVerdict:
    """The verdict of sweep ``name`` and the specs to re-train, read back from MLflow."""
    from mlflow.tracking import MlflowClient

    from sweeps import tracking
    from trainers import TrainSpec, test_metric_for

    client = MlflowClient(tracking_uri)
    sweep = tracking.find_sweep(client, name)
    if sweep is None:
        raise SystemExit(f"{PREFIX} sweep {name!r} is not in {tracking_uri}")
    tags, metrics = sweep.parent.data.tags, sweep.parent.data.metrics
    if tracking.TAG_VERDICT not in tags:
        raise SystemExit(
            f"{PREFIX} sweep {name!r} recorded no verdict (no finalist and baseline finished "
            "their epochs): nothing to check on fresh draws"
        )
    metric, mode = sweep.objectives[0]
    m = test_metric_for(metric) or metric
    winner_run = client.get_run(tags[tracking.TAG_WINNER])
    winner = TrainSpec.model_validate(json.loads(winner_run.data.tags[tracking.TAG_SPEC]))
    baselines = tracking.children(client, sweep, "baseline")
    sweep_baseline = (
        TrainSpec.model_validate(json.loads(baselines[0].data.tags[tracking.TAG_SPEC]))
        if baselines
        else None
    )
    seeds = sorted({int(r.data.tags[tracking.TAG_SEED]) for r in baselines})
    nan = math.nan
    return SweepVerdict(
        metric=m,
        mode=mode,
        verdict=tags[tracking.TAG_VERDICT],
        mean=metrics.get(f"final.delta.{m}.mean", nan),
        # A bound the sweep left out is one it could not bound: one seed, no spread.
        ci_low=metrics.get(f"final.delta.{m}.ci_low", -math.inf),
        ci_high=metrics.get(f"final.delta.{m}.ci_high", math.inf),
        winner_mean=metrics.get(f"final.winner.{m}.mean", nan),
        winner_std=metrics.get(f"final.winner.{m}.std", nan),
        baseline_mean=metrics.get(f"final.baseline.{m}.mean", nan),
        baseline_std=metrics.get(f"final.baseline.{m}.std", nan),
        cost_ratio=metrics.get("final.winner.cost_ratio", nan),
        cost_ratio_seconds=metrics.get("final.winner.cost_ratio_seconds", nan),
        seeds=seeds,
        winner_run_id=winner_run.info.run_id,
        winner_config_id=tags.get("flatsweep.winner_config_id", "?"),
        winner_point=tracking.searched_values(winner_run),
        winner=winner,
        baseline=baseline_of(winner, sweep_baseline),
    )


def run_sweep_here(spec: Any) -> tuple[Any, float]:
    """Run ``spec`` on a local Ray of this process's own; return the result and wall seconds.

    ``run_sweep`` starts Ray with ``address="local"`` when none is initialised here; this
    function shuts down only a Ray that it saw start, never one that was already running.
    """
    import ray
    import yaml

    from sweeps.runner import run_sweep

    ours = not ray.is_initialized()
    # An inherited RAY_ADDRESS would make run_sweep join that cluster instead of its own Ray.
    address = os.environ.pop("RAY_ADDRESS", None) if ours else None
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    t0 = time.perf_counter()
    try:
        result = run_sweep(spec, text, progress=False)
    finally:
        wall = time.perf_counter() - t0
        if ours and ray.is_initialized():
            ray.shutdown()  # frees the cores for the fresh-draw runs
        if address is not None:
            os.environ["RAY_ADDRESS"] = address
    return result, wall


# -- fresh draws ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One training run on a fresh draw: its test metric (NaN unless it finished) and cost."""

    status: str
    value: float
    seconds: float  # wall seconds of fit(): data generation (first run of a draw) included
    train_seconds: float  # the loop's own training time (train_seconds_total): comparable
    passes: float  # closure_passes_total: forward-backward passes


@dataclass
class Draw:
    index: int
    data_seed: int
    seed: int
    runs: dict[str, Run] = field(default_factory=dict)  # "winner" | "erm"

    @property
    def paired(self) -> bool:
        return all(math.isfinite(r.value) for r in self.runs.values()) and len(self.runs) == 2


def train_once(spec: Any, metric: str) -> Run:
    """``trainers.fit(spec)``; a run that diverged or stopped has no test metric (NaN)."""
    from trainers import fit

    t0 = time.perf_counter()
    result = fit(spec)
    seconds = time.perf_counter() - t0
    final = result.final if result.status == "finished" else {}
    return Run(
        status=result.status,
        value=float(final.get(metric, math.nan)),
        seconds=seconds,
        train_seconds=float(final.get("train_seconds_total", math.nan)),
        passes=float(final.get("closure_passes_total", math.nan)),
    )


def run_draws(v: SweepVerdict, draws: int) -> list[Draw]:
    """Train the winner and ERM on each fresh draw, in an order alternating by draw so that a
    drift in machine load does not always hit the same arm's seconds."""
    out = []
    for i in range(draws):
        draw = Draw(i, FRESH_DATA_SEED + i, i)
        arms = [("winner", v.winner), ("erm", v.baseline)]
        for arm, spec in arms if i % 2 == 0 else arms[::-1]:
            draw.runs[arm] = train_once(fresh_draw(spec, i), v.metric)
        w, e = draw.runs["winner"], draw.runs["erm"]
        print(
            f"{PREFIX} draw {i + 1}/{draws} (data.seed {draw.data_seed}, seed {i}): winner "
            f"{v.metric} {w.value:.4f} ({w.status}, {w.seconds:.1f} s), ERM {e.value:.4f} "
            f"({e.status}, {e.seconds:.1f} s)",
            file=sys.stderr,
        )
        out.append(draw)
    return out


@dataclass(frozen=True)
class Fresh:
    """The fresh-draw comparison: paired difference, verdict, and per-arm summaries."""

    diff: Any  # sweeps.stats.Difference
    verdict: str
    winner_mean: float
    winner_std: float
    erm_mean: float
    erm_std: float
    cost_ratio: float  # closure passes, winner / ERM, over the paired draws
    cost_ratio_seconds: float  # train_seconds_total, winner / ERM
    unpaired: list[int]  # draws left out: a run that did not finish has no test metric


def compare(draws: Sequence[Draw], mode: str) -> Fresh:
    """Winner minus ERM, paired by draw, with its 95% t-interval and verdict."""
    from sweeps.stats import mean_std, paired_difference, verdict

    paired = [d for d in draws if d.paired]
    if not paired:
        raise SystemExit(f"{PREFIX} no fresh draw has both runs finished: no comparison")
    w = [d.runs["winner"].value for d in paired]
    e = [d.runs["erm"].value for d in paired]
    diff = paired_difference(w, e)

    def ratio(key: str) -> float:
        a = mean_std([getattr(d.runs["winner"], key) for d in paired])[0]
        b = mean_std([getattr(d.runs["erm"], key) for d in paired])[0]
        return a / b if b and math.isfinite(b) else math.nan

    return Fresh(
        diff=diff,
        verdict=verdict(diff, mode),  # type: ignore[arg-type]
        winner_mean=mean_std(w)[0],
        winner_std=mean_std(w)[1],
        erm_mean=mean_std(e)[0],
        erm_std=mean_std(e)[1],
        cost_ratio=ratio("passes"),
        cost_ratio_seconds=ratio("train_seconds"),
        unpaired=[d.index for d in draws if not d.paired],
    )


# -- the record ----------------------------------------------------------------------------------


def interval(low: float, high: float) -> str:
    return f"[{low:+.4f}, {high:+.4f}]"


def span(values: Sequence[int]) -> str:
    """``0–3`` for a run of consecutive integers, else the list."""
    v = sorted(values)
    if v and v == list(range(v[0], v[-1] + 1)):
        return str(v[0]) if len(v) == 1 else f"{v[0]}–{v[-1]}"
    return ", ".join(map(str, v))


def describe_point(point: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(point.items())
    )


def section(
    *,
    started: datetime.datetime,
    command: str,
    spec_path: Path,
    spec: Any,
    v: SweepVerdict,
    draws: Sequence[Draw],
    fresh: Fresh,
    walls: dict[str, float],
    load: tuple[Sequence[float], Sequence[float]],
) -> str:
    """The markdown section: notes, the two comparisons side by side, and the draws."""
    m, train = v.metric, spec.train
    data = train.data
    d_seeds = [d.data_seed for d in draws]
    if data.name in GENERATED:
        freshness = f"{data.name} regenerated from data.seed: examples the sweep never saw"
    else:
        freshness = (
            f"**{data.name} is a fixed dataset: data.seed only re-carves its splits, so the "
            "fresh draws share examples with the sweep's; this checks seed and split noise, "
            "not new data**"
        )
    agree = "agree" if v.verdict == fresh.verdict else "**disagree**"
    point = describe_point(v.winner_point) or "no searched values"
    optim = " and the sweep's own baseline optimizer" if v.baseline.optim != v.winner.optim else ""
    t_seeds = span(range(len(draws)))
    shown = spec_path.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    notes = [
        f"machine: {machine()}",
        f"code: {code_state()}",
        f"command: `{command}`",
        f"spec: `{shown}` run as sweep `{spec.name}`: {data.name} "
        f"{data.num_train}/{data.num_test} (data.seed {data.seed}), {train.model.name}, "
        f"{train.perturbation.kind}, {train.epochs} epochs, batch {train.batch_size}, device "
        f"{train.device}; {spec.num_samples} search trials ({spec.searcher.sampler}, "
        f"{spec.scheduler.name}) on {spec.primary[0]} ({spec.primary[1]}); top "
        f"{spec.finalists.top_k} finalists × {spec.finalists.seeds} seeds",
        f"winner: {v.winner_config_id} ({point}); baseline: the same TrainSpec with "
        f"perturbation {{kind: erm}}{optim}",
        f"fresh draws: data.seed {span(d_seeds)} ({freshness}); training seed {t_seeds}; the "
        "winner and ERM on the same draw and seed are one pair",
        f"wall: sweep {walls['sweep']:.1f} s (incl. Ray start-up), fresh draws "
        f"{walls['fresh']:.1f} s, total {walls['total']:.1f} s",
        f"load (1/5/15 min): before {fmt_load(load[0])}, after {fmt_load(load[1])}",
        f"**verdict**: the sweep says **{v.verdict}**, the fresh draws say **{fresh.verdict}** "
        f"({agree})",
    ]
    if fresh.unpaired:
        notes.append(
            f"**draws {fresh.unpaired} left out: a run did not finish (diverged), so it has no "
            f"{m}; the fresh comparison covers {fresh.diff.n} of {len(draws)} draws**"
        )
    rows = [
        f"| comparison | pairs | winner {m} mean ± std | ERM {m} mean ± std | Δ mean "
        "| 95% t-interval | verdict |",
        "|---|---:|---:|---:|---:|---|---|",
        f"| sweep confirmation: data.seed {data.seed}, training seeds {span(v.seeds)} "
        f"| {len(v.seeds)} | {v.winner_mean:.4f} ± {v.winner_std:.4f} "
        f"| {v.baseline_mean:.4f} ± {v.baseline_std:.4f} | {v.mean:+.4f} "
        f"| {interval(v.ci_low, v.ci_high)} | {v.verdict} |",
        f"| fresh data draws: data.seed {span(d_seeds)}, training seeds {t_seeds} "
        f"| {fresh.diff.n} | {fresh.winner_mean:.4f} ± "
        f"{fresh.winner_std:.4f} | {fresh.erm_mean:.4f} ± {fresh.erm_std:.4f} "
        f"| {fresh.diff.mean:+.4f} | {interval(fresh.diff.ci_low, fresh.diff.ci_high)} "
        f"| {fresh.verdict} |",
    ]
    cost = [
        "| winner / ERM cost | closure passes | training seconds |",
        "|---|---:|---:|",
        f"| sweep confirmation | {v.cost_ratio:.2f} | {v.cost_ratio_seconds:.2f} |",
        f"| fresh data draws | {fresh.cost_ratio:.2f} | {fresh.cost_ratio_seconds:.2f} |",
    ]
    per_draw = [
        f"| draw | data.seed | seed | winner {m} | ERM {m} | Δ | winner train s | ERM train s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in draws:
        w, e = d.runs["winner"], d.runs["erm"]
        delta = f"{w.value - e.value:+.4f}" if d.paired else "—"
        per_draw.append(
            f"| {d.index} | {d.data_seed} | {d.seed} | {w.value:.4f} | {e.value:.4f} | {delta} "
            f"| {w.train_seconds:.1f} | {e.train_seconds:.1f} |"
        )
    title = "tuning_value: the sweep's verdict against fresh data draws"
    return (
        f"## {title} — {started:%Y-%m-%d %H:%M} UTC\n\n"
        + "".join(f"- {n}\n" for n in notes)
        + "\n"
        + "\n".join(rows)
        + "\n\n"
        + "\n".join(cost)
        + "\n\n"
        + "\n".join(per_draw)
        + "\n"
    )


def append(path: Path, text: str) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(INTRO)
    with path.open("a") as f:
        f.write(f"\n{text}")


# -- main ----------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, but got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("spec", nargs="?", type=Path, default=DEFAULT_SPEC, help="sweep spec YAML")
    p.add_argument("--draws", type=_positive, default=4, help="fresh data draws (default 4)")
    p.add_argument("--epochs", type=_positive, help="train.epochs (default: the spec's)")
    p.add_argument("--num-samples", type=_positive, help="search trials (default: the spec's)")
    p.add_argument("--top-k", type=_positive, help="finalists.top_k (default: the spec's)")
    p.add_argument("--seeds", type=_positive, help="finalists.seeds (default: the spec's)")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file to append to")
    p.add_argument("--no-record", action="store_true", help="print only; append nothing")
    p.add_argument("--keep", action="store_true", help="keep the temporary sweep directory")
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> Any:
    """The spec to run: loaded, shrunk by the flags, and checked to end in a verdict."""
    from sweeps.spec import SpecError, load_spec

    try:
        spec = shrink(
            load_spec(args.spec),
            epochs=args.epochs,
            num_samples=args.num_samples,
            top_k=args.top_k,
            seeds=args.seeds,
        )
    except (SpecError, ValueError) as e:
        raise SystemExit(f"{PREFIX} {args.spec}: {e}") from None
    if spec.finalists.top_k < 1 or not spec.finalists.baseline:
        raise SystemExit(
            f"{PREFIX} finalists.top_k must be >= 1 and finalists.baseline true for a verdict, "
            f"but got top_k={spec.finalists.top_k}, baseline={spec.finalists.baseline} "
            "(--top-k sets top_k)"
        )
    return spec


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the sweep and the fresh draws, print the section and append it; return the numbers."""
    args = parse_args(argv)
    spec = load(args)
    command = shlex.join(
        sys.orig_argv if argv is None else ["python", "benchmarks/tuning_value.py", *argv]
    )
    started = datetime.datetime.now(datetime.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="tuning_value-"))
    try:
        spec = isolate(spec, tmp, f"{spec.name[:40]}-tv-{started:%Y%m%d-%H%M%S}")
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        result, sweep_wall = run_sweep_here(spec)
        v = read_verdict(result.tracking_uri, spec.name)
        t1 = time.perf_counter()
        draws = run_draws(v, args.draws)
        walls = {"sweep": sweep_wall, "fresh": time.perf_counter() - t1}
        walls["total"] = time.perf_counter() - t0
        fresh = compare(draws, v.mode)
        text = section(
            started=started,
            command=command,
            spec_path=args.spec,
            spec=spec,
            v=v,
            draws=draws,
            fresh=fresh,
            walls=walls,
            load=(load_before, os.getloadavg()),
        )
    finally:
        if args.keep:
            print(f"{PREFIX} kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(text)
    if not args.no_record:
        append(args.results, text)
    return {"sweep": v, "fresh": fresh, "draws": draws, "walls": walls}


if __name__ == "__main__":
    main()
