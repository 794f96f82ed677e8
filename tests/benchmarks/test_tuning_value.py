"""benchmarks/tuning_value.py: the spec shrinking and fresh-draw specs (fast, no Ray), and one
tiny end-to-end run as a subprocess with its own local Ray (marked ``cluster``: ~1.5 min).

Accuracies are not asserted (a 2-epoch run on 400 examples is near chance); the structure of
the report is: both intervals, both verdicts, one row per draw, and nothing recorded.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "tuning_value.py"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
VERDICTS = ("better", "no_difference", "worse")
NUM = r"[+-](?:\d+\.\d+|inf)"
ROW = re.compile(
    rf"^\| (?P<label>sweep confirmation|fresh data draws)[^|]*\| (?P<pairs>\d+) \|[^|]*\|[^|]*"
    rf"\| (?P<mean>[+-]\d+\.\d+) \| \[(?P<low>{NUM}), (?P<high>{NUM})\] \| (?P<verdict>\w+) \|$",
    re.M,
)

TINY = """\
name: tv-tiny
train:
  model: {name: cnn1d}
  data: {name: mnist1d, num_train: 400, num_test: 200}
  optim: {lr: 0.1}
  schedule: {name: multistep, milestones: [2, 4], gamma: 0.1}
  perturbation: {kind: amp}
  epochs: 6
  batch_size: 100
  device: cpu
space:
  ranges: {perturbation.radius: [0.002, 0.2]}
scheduler: {name: asha, grace_period: 4, max_t: 6}
num_samples: 6
resources: {cpu: 1, gpu: 0}
finalists: {top_k: 3, seeds: 3}
"""


@pytest.fixture(scope="module")
def tv():
    return load_benchmark("tuning_value")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_shrink_keeps_the_schedule_and_scheduler_valid(tv, tiny: Path) -> None:
    from sweeps.spec import load_spec

    spec = load_spec(tiny)
    small = tv.shrink(spec, epochs=2, num_samples=2, top_k=1, seeds=2)

    assert small.train.epochs == 2
    assert small.train.schedule.milestones == []  # 2 and 4 are not inside 1..1
    assert small.scheduler.grace_period == 2 and small.scheduler.max_t == 2
    assert (small.num_samples, small.finalists.top_k, small.finalists.seeds) == (2, 1, 2)
    # everything else as the spec had it, and the original untouched
    assert small.train.perturbation == spec.train.perturbation
    assert small.train.data == spec.train.data and small.space == spec.space
    assert spec.train.epochs == 6 and spec.train.schedule.milestones == [2, 4]

    kept = tv.shrink(spec, epochs=3)
    assert kept.train.schedule.milestones == [2] and kept.scheduler.grace_period == 3
    assert tv.shrink(spec) == spec


def test_isolate_renames_and_moves_storage_and_tracking(tv, tiny: Path, tmp_path: Path) -> None:
    from sweeps.spec import load_spec

    spec = tv.isolate(load_spec(tiny), tmp_path, "tv-tiny-tv-x")
    assert spec.name == "tv-tiny-tv-x"
    assert spec.resolved_storage() == str(tmp_path / "ray_results")
    assert spec.resolved_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_fresh_draws_change_only_the_data_and_training_seeds(tv) -> None:
    from trainers import TrainSpec

    winner = TrainSpec.model_validate(
        {
            "model": {"name": "cnn1d"},
            "data": {"name": "mnist1d", "num_train": 400, "num_test": 200, "seed": 0},
            "optim": {"lr": 0.05, "weight_decay": 1e-3},
            "perturbation": {"kind": "amp", "radius": 0.02, "inner_steps": 2, "inner_lr": 0.5},
            "epochs": 3,
            "seed": 2,
            "num_threads": 1,
        }
    )
    erm = tv.baseline_of(winner)
    assert erm.perturbation.kind == "erm" and not hasattr(erm.perturbation, "radius")
    assert erm.model_dump(exclude={"perturbation"}) == winner.model_dump(exclude={"perturbation"})

    for i in (0, 3):
        w, e = tv.fresh_draw(winner, i), tv.fresh_draw(erm, i)
        assert (w.data.seed, w.seed) == (e.data.seed, e.seed) == (1000 + i, i)
        assert w.model_dump(exclude={"data", "seed"}) == winner.model_dump(exclude={"data", "seed"})
        assert w.data.model_dump(exclude={"seed"}) == winner.data.model_dump(exclude={"seed"})

    # A sweep that tuned the baseline's optimizer on its own: its baseline keeps that optimizer.
    tuned = erm.with_overrides({"optim.lr": 0.2, "seed": 7})
    assert tv.baseline_of(winner, tuned).optim.lr == 0.2
    assert tv.baseline_of(winner, tuned).seed == winner.seed


def test_compare_pairs_by_draw_and_leaves_out_unfinished_runs(tv) -> None:
    def draw(i: int, w: float, e: float):
        d = tv.Draw(i, 1000 + i, i)
        d.runs = {
            "winner": tv.Run("finished" if math.isfinite(w) else "diverged", w, 1.0, 2.0, 20.0),
            "erm": tv.Run("finished", e, 0.5, 1.0, 10.0),
        }
        return d

    fresh = tv.compare([draw(0, 0.8, 0.7), draw(1, 0.9, 0.7), draw(2, math.nan, 0.7)], "max")
    assert fresh.diff.n == 2 and fresh.diff.mean == pytest.approx(0.15)
    assert fresh.unpaired == [2]
    assert fresh.cost_ratio == pytest.approx(2.0) and fresh.cost_ratio_seconds == pytest.approx(2)
    assert fresh.verdict in VERDICTS
    with pytest.raises(SystemExit, match="no fresh draw"):
        tv.compare([draw(0, math.nan, 0.7)], "max")


def test_refuses_a_spec_that_gives_no_verdict(tv, tiny: Path, tmp_path: Path) -> None:
    off = tmp_path / "off.yaml"
    off.write_text(TINY.replace("top_k: 3", "top_k: 0"))
    with pytest.raises(SystemExit, match=r"finalists.top_k must be >= 1.*top_k=0"):
        tv.load(tv.parse_args([str(off)]))
    assert tv.load(tv.parse_args([str(off), "--top-k", "1"])).finalists.top_k == 1
    with pytest.raises(SystemExit):
        tv.parse_args([str(tiny), "--draws", "0"])


@pytest.mark.cluster
def test_tiny_run_prints_both_intervals_and_records_nothing(tiny: Path, tmp_path: Path) -> None:
    before = hashlib.sha256(RESULTS.read_bytes()).hexdigest() if RESULTS.exists() else None
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        FLATSWEEP_STORAGE=str(tmp_path / "storage"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'env.db'}",
    )
    args = ["--epochs", "2", "--num-samples", "2", "--top-k", "1", "--seeds", "2", "--draws", "2"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tiny), *args, "--no-record"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = proc.stdout

    rows = {m["label"]: m for m in ROW.finditer(out)}
    assert set(rows) == {"sweep confirmation", "fresh data draws"}, out
    assert rows["sweep confirmation"]["pairs"] == "2"  # --seeds 2
    assert rows["fresh data draws"]["pairs"] == "2"  # --draws 2
    for m in rows.values():
        low, mean, high = float(m["low"]), float(m["mean"]), float(m["high"])
        assert math.isfinite(low) and math.isfinite(high) and low <= mean <= high
        assert m["verdict"] in VERDICTS
    said = re.search(r"the sweep says \*\*(\w+)\*\*, the fresh draws say \*\*(\w+)\*\*", out)
    assert said is not None
    assert said.groups() == (
        rows["sweep confirmation"]["verdict"],
        rows["fresh data draws"]["verdict"],
    )
    # one row per fresh draw: data.seed 1000 + i, training seed i
    draws = re.findall(r"^\| (\d+) \| (\d+) \| (\d+) \| \d", out, re.M)
    assert draws == [("0", "1000", "0"), ("1", "1001", "1")]
    assert ", 2 epochs," in out and "top 1 finalists × 2 seeds" in out  # the spec shrunk
    assert "os.cpu_count()" in out and "torch " in out and "wall: sweep " in out

    # --no-record: RESULTS.md untouched; the sweep wrote under its own temp dir, not the env's
    after = hashlib.sha256(RESULTS.read_bytes()).hexdigest() if RESULTS.exists() else None
    assert after == before
    assert not (tmp_path / "storage").exists() and not (tmp_path / "env.db").exists()
