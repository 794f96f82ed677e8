"""sweeps.report on synthetic records (no MLflow, no Ray): files, numbers, skipped sections."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps.report import (
    FIGURES,
    SweepRecord,
    TrialRecord,
    Verdict,
    format_verdict_table,
    verdict_metrics,
    write_report,
)
from sweeps.stats import mean_std, paired_difference, verdict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = [0, 1, 2]
SEARCHED = {
    "perturbation.radius": {"low": 0.005, "high": 0.5, "log": True, "integer": False},
    "perturbation.inner_steps": {"low": 1, "high": 3, "log": False, "integer": True},
    "perturbation.inner_lr": {"low": 0.1, "high": 2.0, "log": True, "integer": False},
}


def _search_trials(n: int, with_inner_lr: bool = True) -> list[TrialRecord]:
    """Search trials whose val_acc depends on the radius only (peak near 0.02)."""
    trials = []
    for i in range(n):
        radius = 0.005 * (100 ** (((i * 7) % n) / (n - 1)))  # spread over the log range
        params: dict[str, float | int] = {
            "perturbation.radius": radius,
            "perturbation.inner_steps": 1 + i % 3,
        }
        if with_inner_lr:
            params["perturbation.inner_lr"] = 0.1 * (20 ** (((i * 3) % n) / (n - 1)))
        val = 0.9 - 0.05 * (math.log10(radius) - math.log10(0.02)) ** 2
        trials.append(
            TrialRecord(
                run_id=f"s{i}",
                run_name=f"search-{i}",
                stage="search",
                status="FINISHED",
                params=params,
                metrics={"val_acc": val, "test_acc": val - 0.01},
                history={"val_acc": [(1, val - 0.2), (2, val - 0.05), (3, val)]},
            )
        )
    trials.append(TrialRecord("f0", "search-failed", "search", "FAILED", {}, {}, {}))
    return trials


def _confirm_runs(config_id: str, stage: str, test: list[float], lmax: float) -> list[TrialRecord]:
    return [
        TrialRecord(
            run_id=f"{config_id}-seed{s}",
            run_name=f"{config_id}-seed{s}",
            stage=stage,
            status="FINISHED",
            params={},
            metrics={"val_acc": x + 0.01, "test_acc": x, "diag.hessian_lmax": lmax + s},
            history={"val_acc": [(e, x - 0.3 / e) for e in (1, 2, 3, 4)]},
            config_id=config_id,
            seed=s,
        )
        for s, x in zip(SEEDS, test, strict=True)
    ]


WINNER = [0.912, 0.905, 0.921]
BASELINE = [0.899, 0.896, 0.903]


def _verdict(winner: list[float] = WINNER, baseline: list[float] = BASELINE) -> Verdict:
    diff = paired_difference(winner, baseline)
    return Verdict(
        metric="test_acc",
        mode="max",
        winner_config_id="cfg-3",
        winner_run_ids=[f"cfg-3-seed{s}" for s in SEEDS[: len(winner)]],
        winner_values=winner,
        baseline_values=baseline,
        seeds=SEEDS[: len(winner)],
        diff=diff,
        verdict=verdict(diff, "max"),
        cost_ratio_passes=2.0,
        cost_ratio_seconds=1.8734,
    )


def _record(
    n_search: int = 12, with_inner_lr: bool = True, with_verdict: bool = True
) -> SweepRecord:
    searched = dict(SEARCHED)
    if not with_inner_lr:
        del searched["perturbation.inner_lr"]
    trials = (
        _search_trials(n_search, with_inner_lr)
        + _confirm_runs("cfg-3", "finalist", WINNER, 10.0)
        + _confirm_runs("cfg-7", "finalist", [0.90, 0.897, 0.91], 12.0)
        + _confirm_runs("baseline", "baseline", BASELINE, 20.0)
    )
    return SweepRecord(
        name="amp-demo",
        search_metric="val_acc",
        mode="max",
        searched=searched,
        trials=trials,
        verdict=_verdict() if with_verdict else None,
    )


def _images(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def _section(text: str, heading: str) -> str:
    return text.split(f"## {heading}")[1].split("\n## ")[0]


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], str]:
    """The complete record's report, written once for the tests that only read it."""
    paths = write_report(_record(), tmp_path_factory.mktemp("report"))
    return paths, paths[0].read_text()


def test_writes_report_and_valid_pngs(full_report: tuple[list[Path], str]) -> None:
    paths, _ = full_report
    out_dir = paths[0].parent
    assert paths[0].name == "report.md" and paths[1].name == "report.html"
    assert {p.name for p in paths[2:]} == set(FIGURES)
    for p in paths[2:]:
        assert p.read_bytes()[:8] == PNG_MAGIC, p
        assert p.stat().st_size < 200_000, p  # small figures
    # Only the returned files remain: no temporary leftovers from the atomic writes.
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in paths)


def test_report_references_only_files_that_exist(full_report: tuple[list[Path], str]) -> None:
    paths, text = full_report
    refs = _images(text)
    assert sorted(refs) == sorted(p.name for p in paths[2:])
    for ref in refs:
        assert "/" not in ref and (paths[0].parent / ref).is_file()


def test_the_html_report_embeds_every_figure(full_report: tuple[list[Path], str]) -> None:
    """MLflow's artifact view leaves a markdown file's relative images as text; the HTML
    twin it shows in a frame carries the figures inside itself."""
    import base64

    paths, text = full_report
    page = paths[1].read_text()
    assert page.startswith("<!doctype html>") and "<table>" in page
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(_images(text))
    figures = {p.read_bytes() for p in paths[2:]}
    assert {base64.b64decode(e) for e in embedded} == figures


def test_verdict_numbers_in_report_match_the_verdict(
    full_report: tuple[list[Path], str],
) -> None:
    _, text = full_report
    v = _verdict()
    assert v.verdict == "better"
    w_mean, w_std = mean_std(v.winner_values)
    b_mean, b_std = mean_std(v.baseline_values)
    assert f"| {w_mean:.4g} ± {w_std:.4g} |" in text
    assert f"| {b_mean:.4g} ± {b_std:.4g} |" in text
    assert f"| {v.diff.mean:+.4g} |" in text
    assert f"| [{v.diff.ci_low:+.4g}, {v.diff.ci_high:+.4g}] |" in text
    assert "| verdict | **better** |" in text
    assert "| 2.00x |" in text and "| 1.87x |" in text
    for s, w, b in zip(v.seeds, v.winner_values, v.baseline_values, strict=True):
        assert f"| {s} | {w:.4g} | {b:.4g} | {w - b:+.4g} |" in text
    assert "`cfg-7`" in text  # the other finalist's per-seed values are listed
    assert "No confirmation stage ran" not in text


def test_no_verdict_says_no_claim(tmp_path: Path) -> None:
    text = write_report(_record(with_verdict=False), tmp_path)[0].read_text()
    assert "No confirmation stage ran" in text and "no claim" in text
    assert "**better**" not in text and "interval of the difference" not in text


def test_importance_names_the_evaluator_and_ranks_the_radius_first(
    full_report: tuple[list[Path], str],
) -> None:
    section = _section(full_report[1], "Hyperparameter importance")
    assert "FanovaImportanceEvaluator(seed=0)" in section
    rows = re.findall(r"\| `([^`]+)` \| ([0-9.]+) \|", section)
    assert [name for name, _ in rows][0] == "perturbation.radius"  # val_acc depends on it only
    assert sum(float(x) for _, x in rows) == pytest.approx(1.0, abs=3e-3)


def test_importance_above_256_trials_caps_the_trees_and_says_so(tmp_path: Path) -> None:
    """Above ``IMPORTANCE_FULL_DEPTH_TRIALS`` search trials fANOVA's trees stop at depth 8
    (the default's cost grows with the square of the trials); the report names the evaluator
    it really used, and the radius, the only parameter val_acc depends on, still ranks first.
    At the threshold the default evaluator is used."""
    from sweeps.report import IMPORTANCE_FULL_DEPTH_TRIALS

    for n, capped in (
        (IMPORTANCE_FULL_DEPTH_TRIALS + 1, True),
        (IMPORTANCE_FULL_DEPTH_TRIALS, False),
    ):
        out = tmp_path / str(n)
        section = _section(
            write_report(_record(n_search=n), out)[0].read_text(), "Hyperparameter importance"
        )
        assert (f"of the {n} search trials that ran every epoch") in section
        assert ("FanovaImportanceEvaluator(seed=0, max_depth=8)" in section) is capped
        assert ("FanovaImportanceEvaluator(seed=0)" in section) is not capped
        assert ("trees stop at depth 8" in section) is capped
        rows = re.findall(r"\| `([^`]+)` \| ([0-9.]+) \|", section)
        assert rows[0][0] == "perturbation.radius", rows
        assert sum(float(x) for _, x in rows) == pytest.approx(1.0, abs=3e-3)


def test_importance_skipped_with_too_few_trials(tmp_path: Path) -> None:
    paths = write_report(_record(n_search=3), tmp_path)
    section = _section(paths[0].read_text(), "Hyperparameter importance")
    assert "Skipped:" in section and "fewer than 4" in section
    assert "importance.png" not in {p.name for p in paths}


def test_missing_inner_lr_skips_the_contour(tmp_path: Path) -> None:
    # A first report with the contour, then a rerun without: the stale figure must go.
    write_report(_record(), tmp_path)
    assert (tmp_path / "contour_radius_inner_lr.png").exists()
    paths = write_report(_record(with_inner_lr=False), tmp_path)
    text = paths[0].read_text()
    section = _section(text, "Radius × inner learning rate")
    assert "Skipped: `perturbation.inner_lr` was not searched" in section
    assert "contour_radius_inner_lr.png" not in text
    assert not (tmp_path / "contour_radius_inner_lr.png").exists()
    assert "objective_vs_radius.png" in _images(text)


def test_flatness_table_is_labelled_a_diagnostic(full_report: tuple[list[Path], str]) -> None:
    section = _section(full_report[1], "Flatness diagnostics")
    assert "diagnostic, not an objective" in section
    assert "| winner `cfg-3` | 11 ± 1 | 3 of 3 |" in section  # lmax 10, 11, 12
    assert "| baseline | 21 ± 1 | 3 of 3 |" in section


def test_conditional_inner_lr_is_left_out_of_importance(tmp_path: Path) -> None:
    # AWP searches its inner LR only when inner_steps >= 2: half the trials lack it.
    record = _record(n_search=10)
    for t in record.trials[1:10:2]:
        del t.params["perturbation.inner_lr"]
    text = write_report(record, tmp_path)[0].read_text()
    importance = _section(text, "Hyperparameter importance")
    assert re.findall(r"\| `([^`]+)` \| [0-9.]+ \|", importance) == [
        "perturbation.radius",
        "perturbation.inner_steps",
    ]
    assert "(conditional): `perturbation.inner_lr`" in importance
    contour = _section(text, "Radius × inner learning rate")
    assert "between the 5 FINISHED search trials" in contour


def test_collinear_trials_draw_points_without_a_contour(tmp_path: Path) -> None:
    record = _record(n_search=4)
    for t in record.trials[:4]:
        t.params["perturbation.inner_lr"] = 0.5  # one line: Delaunay has no triangles
    paths = write_report(record, tmp_path)
    contour = _section(paths[0].read_text(), "Radius × inner learning rate")
    assert "too few distinct points to interpolate" in contour
    assert (tmp_path / "contour_radius_inner_lr.png").read_bytes()[:8] == PNG_MAGIC


def test_verdict_metrics_keys() -> None:
    m = verdict_metrics(_verdict())
    assert set(m) == {
        "final.winner.test_acc.mean",
        "final.winner.test_acc.std",
        "final.baseline.test_acc.mean",
        "final.baseline.test_acc.std",
        "final.delta.test_acc.mean",
        "final.delta.test_acc.ci_low",
        "final.delta.test_acc.ci_high",
        "final.delta.test_acc.confidence",
        "final.winner.cost_ratio",
        "final.winner.cost_ratio_seconds",
    }
    assert m["final.winner.test_acc.mean"] == pytest.approx(sum(WINNER) / 3)
    assert m["final.winner.cost_ratio"] == 2.0
    assert all(isinstance(x, float) and math.isfinite(x) for x in m.values())


def test_verdict_metrics_omit_unbounded_interval_with_one_seed() -> None:
    m = verdict_metrics(_verdict([0.91], [0.90]))
    assert "final.delta.test_acc.ci_low" not in m and "final.delta.test_acc.ci_high" not in m
    assert m["final.delta.test_acc.mean"] == pytest.approx(0.01)
    assert m["final.winner.test_acc.std"] == 0.0


def test_format_verdict_table() -> None:
    v = _verdict()
    text = format_verdict_table(v)
    assert len(text.splitlines()) <= 6
    assert "cfg-3" in text and "-> better" in text
    assert (
        f"{v.diff.mean:+.4g}" in text and f"[{v.diff.ci_low:+.4g}, {v.diff.ci_high:+.4g}]" in text
    )
    assert "2.00x closure passes, 1.87x seconds" in text
    worse = dataclasses.replace(v, verdict="worse")
    assert "-> worse" in format_verdict_table(worse)


def test_import_pulls_in_no_mlflow_ray_or_plotting() -> None:
    # The sweeps package loads runs from MLflow; this module only reads dataclasses, and it
    # imports optuna and matplotlib when a report is drawn, so the CLI stays quick to start.
    code = (
        "import sys, sweeps.report; "
        "print(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'mlflow', 'ray', 'optuna', 'matplotlib'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_import_dependencies_covers_what_drawing_a_report_imports(tmp_path: Path) -> None:
    # What the driver warms up ahead (sweeps.runner._WarmReport) must be what write_report
    # would otherwise import after the last trial: here nothing heavy is left for it.
    code = f"""
import json, sys
from pathlib import Path
from tests.sweeps.test_report import _record
from sweeps.report import import_dependencies, write_report
import_dependencies()
before = set(sys.modules)
write_report(_record(), Path({str(tmp_path)!r}))
print(json.dumps(sorted(set(sys.modules) - before)))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    new = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = [m for m in new if m.split(".")[0] in {"optuna", "sklearn", "scipy", "markdown_it"}]
    assert heavy == [], heavy
    # Matplotlib's compiled triangulation helpers and Pillow's image plugins load on first use.
    assert all(m.split(".")[0] in {"matplotlib", "PIL"} for m in new), new
    assert len(new) <= 12, new


class _Trial:
    def __init__(self, trial_id: str, status: str = "PENDING") -> None:
        self.trial_id, self.status = trial_id, status


def test_the_report_warms_up_once_when_every_trial_has_started(monkeypatch) -> None:
    import pickle
    import threading

    import sweeps.report
    from sweeps.runner import _WarmReport

    calls = []
    done = threading.Event()

    def fake() -> None:
        calls.append(threading.current_thread().name)
        done.set()

    monkeypatch.setattr(sweeps.report, "import_dependencies", fake)
    cb = _WarmReport(num_trials=3)
    t0, t1 = _Trial("t0", "RUNNING"), _Trial("t1", "RUNNING")
    cb.on_trial_start(0, [t0, t1], t1)
    assert not cb.warmed  # the searcher has not made the third trial yet
    t2 = _Trial("t2")
    trials = [t0, t1, t2]
    t0.status = "TERMINATED"
    cb.on_trial_complete(0, trials, t0)
    assert not cb.warmed  # the third trial waits for the freed slot
    t1.status = "PENDING"  # a trial restarted after an error waits for a slot again
    cb.on_trial_error(0, trials, t1)
    cb.on_trial_start(0, trials, t2)  # Tune's order: the hook, then the status RUNNING
    t2.status = "RUNNING"
    assert not cb.warmed
    cb.on_trial_start(0, trials, t1)  # the last to start, still PENDING in the hook
    assert done.wait(10) and calls == ["flatsweep-warm-report"]
    t1.status = "RUNNING"
    t2.status = "TERMINATED"
    cb.on_trial_complete(0, trials, t2)
    assert calls == ["flatsweep-warm-report"]  # once
    assert pickle.loads(pickle.dumps(cb)).warmed  # noqa: S301 - our own bytes; Tune pickles it
