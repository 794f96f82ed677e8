"""benchmarks/method_table.py: the sweep specs, the rows and sentences of the page and the radius
figure (fast, no Ray, on synthetic results), and one tiny end-to-end run as a subprocess with
its own local Ray (marked ``cluster``: 1-3 min on 2 cores).

Accuracies are not asserted (2 epochs on 300 examples are near chance); what the page says
about them is: one row per method, intervals that contain their mean, verdicts that follow
from the intervals, and no claim the interval does not make.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "method_table.py"
VERDICTS = ("better", "no_difference", "worse")
PNG = b"\x89PNG\r\n\x1a\n"
NUM = r"[+-](?:\d+\.\d+|inf)"
PM = r"(?P<mean>\d\.\d{4}) ± (?P<std>\d\.\d{4}) \(n=(?P<n>\d+)\)"
#: A method's table row: label, baseline, selection metric, test_acc, Δ [CI] (metric), verdict.
ROW = re.compile(
    rf"^\| (?P<label>SAM|ASAM|AMP|AWP) \| (?P<base>ERM|PGD-AT) \| (?P<sel>val_\w+) \| [^|]+ "
    rf"\| [^|]+ \| {PM} \| [^|]+ \| (?P<d>{NUM}) \[(?P<lo>{NUM}), (?P<hi>{NUM})\] "
    rf"\((?P<metric>test_\w+)\) \| (?P<verdict>\w+) \|",
    re.M,
)
ERM_ROW = re.compile(rf"^\| ERM \| — \(the reference\) \| [^|]+ \| — \| — \| {PM} \|", re.M)


@pytest.fixture(scope="module")
def mt():
    return load_benchmark("method_table")


def _specs(mt, tmp_path: Path, **kw):
    sizes = {"epochs": 3, "num_train": 300, "num_samples": 5, "seeds": 4, **kw}
    return {
        m: mt.sweep_spec("mnist1d", m, name=f"mt-{m}", tmp=tmp_path, **sizes) for m in mt.METHODS
    }


def test_every_method_gets_the_same_budget_model_and_seeds(mt, tmp_path: Path) -> None:
    specs = _specs(mt, tmp_path)
    spaces = {m: s.space_name for m, s in specs.items()}
    assert spaces == {"erm": "erm", "sam": "sam", "asam": "asam", "amp": "amp", "awp": "awp"}
    erm = specs["erm"]
    for method, spec in specs.items():
        # only the perturbation (and AWP's PGD) differ from ERM's training spec
        assert spec.train.model_dump(exclude={"perturbation", "adversarial"}) == (
            erm.train.model_dump(exclude={"perturbation", "adversarial"})
        ), method
        assert (spec.num_samples, spec.finalists.top_k, spec.finalists.seeds) == (5, 1, 4)
        assert spec.scheduler.name == "fifo" and spec.searcher.seed == 0
        assert spec.resolved_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
        assert spec.resolved_storage() == str(tmp_path / "ray_results")
    assert erm.train.data.num_train == 300 and erm.train.epochs == 3
    assert specs["asam"].train.perturbation.adaptive is True
    assert specs["sam"].train.perturbation.adaptive is False
    # AWP: PGD-AT in standardised input units, selected on its robust metric; the others clean
    awp = specs["awp"]
    assert awp.train.adversarial is not None and awp.train.adversarial.eps == 0.1
    assert awp.primary == ("val_robust_acc", "max")
    assert all(specs[m].train.adversarial is None for m in ("erm", "sam", "asam", "amp"))
    assert all(specs[m].primary == ("val_acc", "max") for m in ("erm", "sam", "asam", "amp"))
    # ERM has no baseline of its own: it is the baseline
    assert erm.finalists.baseline is False
    assert all(specs[m].finalists.baseline for m in ("sam", "asam", "amp", "awp"))


def test_searched_ranges_leave_out_what_the_space_fixes(mt, tmp_path: Path) -> None:
    specs = _specs(mt, tmp_path)
    ranges = {m: mt.searched_ranges(s) for m, s in specs.items()}
    assert ranges["erm"] == {}
    assert set(ranges["sam"]) == set(ranges["asam"]) == {"perturbation.radius"}
    assert ranges["sam"]["perturbation.radius"] != ranges["asam"]["perturbation.radius"]
    assert set(ranges["amp"]) == {
        "perturbation.radius",
        "perturbation.inner_steps",
        "perturbation.inner_lr",
    }
    # AWP: one proxy step (a constant), so its proxy LR cancels and is not searched
    assert set(ranges["awp"]) == {"perturbation.radius"}


def test_plans_run_erm_alone_only_without_an_erm_baseline(mt, tmp_path: Path) -> None:
    def planned(*argv: str) -> list[tuple[str, str, bool]]:
        args = mt.parse_args(["--epochs", "2", "--num-samples", "2", "--seeds", "2", *argv])
        return [(p.dataset, p.method, p.search) for p in mt.plans(args, tmp_path, "x")]

    assert planned("--methods", "erm,amp") == [("mnist1d", "amp", True)]
    assert planned("--methods", "erm,awp") == [("mnist1d", "awp", True), ("mnist1d", "erm", False)]
    assert planned("--methods", "awp") == [("mnist1d", "awp", True)]
    both = planned("--methods", "sam,erm", "--datasets", "mnist1d,digits")
    assert both == [("mnist1d", "sam", True), ("digits", "sam", True)]
    assert [p[1] for p in planned()] == ["sam", "asam", "amp", "awp"]  # defaults: all five

    args = mt.parse_args(["--datasets", "digits", "--methods", "amp", "--num-train", "5000"])
    (plan,) = mt.plans(args, tmp_path, "x")
    assert plan.spec.train.data.num_train == mt.DIGITS_POOL  # capped at what digits has
    assert plan.spec.train.model.name == "small_cnn"
    assert plan.spec.name == "mt-digits-amp-x"


@pytest.mark.parametrize(
    "argv",
    [["--methods", "erm,amq"], ["--datasets", "cifar10"], ["--seeds", "1"], ["--methods", ""]],
)
def test_bad_flags_are_refused(mt, argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        mt.parse_args(argv)


# -- the page, on synthetic results --------------------------------------------------------------


def _arm(mt, seeds, acc, robust=None, seconds=1.0, passes=100.0):
    n = len(seeds)
    return mt.Arm(
        list(seeds),
        {
            "test_acc": list(acc),
            "test_robust_acc": list(robust) if robust is not None else [math.nan] * n,
            "val_acc": [a - 0.01 for a in acc],
            "val_robust_acc": list(robust) if robust is not None else [math.nan] * n,
            "train_seconds_total": [seconds] * n,
            "closure_passes_total": [passes] * n,
        },
    )


def _result(mt, method, winner, baseline, radius, ranges, metric="test_acc", point=None):
    from sweeps.report import Verdict
    from sweeps.stats import paired_difference, verdict

    key = metric
    a, b = winner.values(key), baseline.values(key)
    diff = paired_difference(a, b)
    v = Verdict(
        metric=metric,
        mode="max",
        winner_config_id="f1",
        winner_run_ids=["r"] * len(a),
        winner_values=a,
        baseline_values=b,
        seeds=winner.seeds,
        diff=diff,
        verdict=verdict(diff, "max"),
        cost_ratio_passes=2.0,
        cost_ratio_seconds=winner.mean_std("train_seconds_total")[0]
        / baseline.mean_std("train_seconds_total")[0],
    )
    searched = [
        mt.SearchPoint(radius=r, val_acc=0.8 + 0.01 * i, val_robust_acc=0.3, diverged=(i == 0))
        for i, r in enumerate((radius / 3, radius, radius * 3))
    ]
    return mt.MethodResult(
        dataset="mnist1d",
        method=method,
        sweep=f"mt-{method}",
        selected_on="val_robust_acc" if method == "awp" else "val_acc",
        test_metric=metric,
        ranges=ranges,
        winner_point={"perturbation.radius": radius, **(point or {})},
        verdict=v,
        winner=winner,
        baseline=baseline,
        search=searched,
        wall_s=90.0,
    )


@pytest.fixture
def results(mt):
    seeds = [1, 2, 3, 4, 5]
    erm = _arm(mt, seeds, [0.80, 0.81, 0.79, 0.80, 0.82], seconds=10.0)
    erm_again = _arm(mt, seeds, [0.80, 0.81, 0.78, 0.80, 0.82], seconds=10.0)  # seed 3 differs
    # about +0.05 on every seed (exactly +0.05 on all would leave the spread unmeasured)
    amp = _arm(mt, seeds, [0.85, 0.865, 0.84, 0.845, 0.87], seconds=30.0)
    sam = _arm(mt, seeds, [0.81, 0.80, 0.80, 0.79, 0.83], seconds=20.0)  # straddles 0
    pgd = _arm(mt, seeds, [0.70] * 5, robust=[0.40, 0.42, 0.41, 0.40, 0.43], seconds=60.0)
    awp = _arm(mt, seeds, [0.69] * 5, robust=[0.30, 0.31, 0.30, 0.32, 0.31], seconds=70.0)
    amp_ranges = {
        "perturbation.radius": (0.005, 0.5),
        "perturbation.inner_steps": (1, 3),
        "perturbation.inner_lr": (0.1, 2.0),
    }
    return [
        _result(
            mt,
            "sam",
            sam,
            erm_again,
            0.05,
            {"perturbation.radius": (0.01, 0.5)},
        ),
        _result(
            mt,
            "amp",
            amp,
            erm,
            0.0051,  # at the lower edge of its range
            amp_ranges,
            point={"perturbation.inner_steps": 2, "perturbation.inner_lr": 0.9},
        ),
        _result(
            mt,
            "awp",
            awp,
            pgd,
            0.005,
            {"perturbation.radius": (5e-4, 5e-2)},
            metric="test_robust_acc",
        ),
    ]


def _meta(mt):
    import datetime

    return mt.Meta(
        started=datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC),
        command="python benchmarks/method_table.py",
        machine="test machine",
        code="abc1234",
        wall_s=600.0,
        load=((0.1, 0.2, 0.3), (1.0, 1.1, 1.2)),
        epochs=30,
        num_samples=16,
        seeds=5,
        num_train=None,
    )


def test_erm_row_is_the_first_erm_baseline_and_repeats_are_compared(mt, results) -> None:
    erm = mt.erm_result(results, "mnist1d")
    assert erm is not None and erm.method == "erm"
    assert erm.winner is results[0].baseline  # SAM comes first among the ERM-baselined
    # SAM's and AMP's ERM baselines differ by 0.01 on seed 3
    assert mt.erm_repeat_spread(results, "mnist1d") == pytest.approx(0.01)
    assert mt.erm_result(results[2:], "mnist1d") is None  # AWP alone: no ERM anywhere
    assert math.isnan(mt.erm_repeat_spread(results[1:], "mnist1d"))


def test_page_rows_and_sentences_claim_only_what_the_intervals_say(mt, results) -> None:
    page = mt.render(
        results,
        _meta(mt),
        methods=["erm", "sam", "amp", "awp"],
        figure="results_radius.png",
        ranges={"amp": results[1].ranges},
    )
    rows = {m["label"]: m for m in ROW.finditer(page)}
    assert set(rows) == {"SAM", "AMP", "AWP"}, page
    assert ERM_ROW.search(page) is not None
    assert re.search(r"^\| PGD-AT \| — \(AWP's baseline\) \|", page, re.M)

    amp, sam, awp = rows["AMP"], rows["SAM"], rows["AWP"]
    assert (amp["base"], amp["sel"], amp["metric"]) == ("ERM", "val_acc", "test_acc")
    assert (awp["base"], awp["sel"], awp["metric"]) == (
        "PGD-AT",
        "val_robust_acc",
        "test_robust_acc",
    )
    assert amp["verdict"] == "better" and float(amp["d"]) == pytest.approx(0.05)
    assert awp["verdict"] == "worse" and float(awp["d"]) == pytest.approx(-0.104)
    assert sam["verdict"] == "no_difference"
    for m in rows.values():
        assert float(m["lo"]) <= float(m["d"]) <= float(m["hi"])
        assert m["n"] == "5"
    assert "| 0.0051 [0.005, 0.5] | K 2, inner_lr 0.9 |" in page
    assert "| 3.00× |" in page  # AMP's 30 s against ERM's 10 s

    assert "**AMP** at radius 0.0051 beat ERM on test_acc" in page
    assert "lower edge of the searched range" in page  # AMP's 0.0051 in [0.005, 0.5]
    assert "**SAM** at radius 0.05 could not be told apart from ERM" in page
    assert "not evidence that the two are equal" in page
    assert "**AWP** at radius 0.005 was worse than plain PGD-AT on test_robust_acc" in page
    assert "Clean test_acc against ERM on the same seeds" in page
    assert "helped: AMP (vs ERM); hurt: AWP (vs PGD-AT)" in page
    assert "The ERM row is the baseline of the SAM sweep" in page
    assert "differ by at most 0.0100 test_acc" in page
    assert "![validation accuracy against radius](results_radius.png)" in page
    for line in ("date: 2026-12-01 12:00 UTC", "machine: test machine", "code: abc1234"):
        assert line in page
    assert "command: `python benchmarks/method_table.py`" in page

    # Without ERM asked for, no ERM row, but the seconds ratio still uses its runs.
    page = mt.render(results[1:2], _meta(mt), methods=["amp"], figure=None, ranges={})
    assert ERM_ROW.search(page) is None and "| 3.00× |" in page
    assert "(no figure written: `--no-write`)" in page


def test_no_verdict_says_so(mt, results) -> None:
    r = results[1]
    r.verdict = None
    text = mt.sentence(r, None)
    assert text.startswith("**AMP**: no verdict") and "says nothing" in text
    assert "no_difference" not in text and "beat" not in text


def test_edge_is_judged_on_the_log_scale(mt, results) -> None:
    r = results[1]  # range [0.005, 0.5]: two decades, the edge band 5% of it
    for radius, edge in (
        (0.0051, "lower"),
        (0.05, None),
        (0.49, "upper"),
        (0.007, None),
        (0.0062, "lower"),
    ):
        r.winner_point = {"perturbation.radius": radius}
        assert mt.at_edge(r) == edge, radius


def test_figure_is_a_png_with_a_robust_panel_for_awp(mt, results, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "radius.png"
    mt.draw_figure(results, path)
    assert path.read_bytes()[:8] == PNG
    from PIL import Image

    with Image.open(path) as im:
        wide = im.size
    mt.draw_figure(results[:2], tmp_path / "clean.png")  # no AWP: one panel
    with Image.open(tmp_path / "clean.png") as im:
        assert im.size[0] < wide[0] and im.size[1] == wide[1]


@pytest.mark.cluster
def test_tiny_run_writes_the_table_and_the_figure(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        FLATSWEEP_STORAGE=str(tmp_path / "storage"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'env.db'}",
    )
    out, fig = tmp_path / "results.md", tmp_path / "results_radius.png"
    args = ["--methods", "erm,amp", "--num-samples", "2", "--epochs", "2", "--seeds", "2"]
    args += ["--num-train", "300", "--out", str(out), "--figure", str(fig)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    page = out.read_text()
    assert (
        proc.stdout.strip() == page.strip()
    )  # stdout is the page alone: Tune's tables go to stderr

    erm = ERM_ROW.search(page)
    assert erm is not None and erm["n"] == "2", page
    rows = {m["label"]: m for m in ROW.finditer(page)}
    assert set(rows) == {"AMP"}, page
    amp = rows["AMP"]
    assert (amp["base"], amp["sel"], amp["metric"], amp["n"]) == ("ERM", "val_acc", "test_acc", "2")
    lo, d, hi = float(amp["lo"]), float(amp["d"]), float(amp["hi"])
    assert math.isfinite(lo) and math.isfinite(hi) and lo <= d <= hi
    assert amp["verdict"] in VERDICTS
    assert "**AMP** at radius " in page and "over 2 paired seeds" in page
    assert "![validation accuracy against radius](results_radius.png)" in page
    assert "2 epochs" in page and "2 trials per method" in page and "300 examples" in page
    assert fig.read_bytes()[:8] == PNG

    # The sweeps wrote under the script's own temp dir, not the environment's stores.
    assert not (tmp_path / "storage").exists() and not (tmp_path / "env.db").exists()
