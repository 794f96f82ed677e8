"""The verdict read back from a real SQLite MLflow store: which confirmation runs count.

Child runs are written with the tags the tracker gives them (stage, config id, seed, diverged,
out of memory) and read back through ``tracking.compute_verdict``, as the end of a sweep and
``sweeps report`` read them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from sweeps import tracking
from sweeps.report import format_verdict_table, write_report
from sweeps.tracking import (
    TAG_CONFIG,
    TAG_DIVERGED,
    TAG_OBJECTIVES,
    TAG_OOM,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SEED,
    TAG_STAGE,
    TAG_SWEEP,
    Sweep,
)

SEEDS = (1, 2, 3)
WINNER_GAPS = {1: 0.0071, 2: 0.0100, 3: 0.0129}  # mean 0.01, sd 0.0029: t = 6 with 2 df


@pytest.fixture
def store(tmp_path: Path) -> tuple[MlflowClient, str, str]:
    """A store with one sweep's parent run (objective val_acc, max)."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("verdict", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, run_name="v").info.run_id
    objectives = json.dumps([{"metric": "val_acc", "mode": "max"}])
    for k, v in {TAG_SWEEP: "v", TAG_ROLE: "parent", TAG_OBJECTIVES: objectives}.items():
        client.set_tag(parent, k, v)
    return client, exp, parent


def child(
    store: tuple[MlflowClient, str, str],
    config: str,
    seed: int,
    val: float | None,
    test: float | None,
    status: str = "FINISHED",
    **flags: str,
) -> str:
    """A confirmation run of ``config`` (``"baseline"`` or a finalist id) on ``seed``."""
    client, exp, parent = store
    run = client.create_run(exp, run_name=f"{config}-s{seed}").info.run_id
    stage = "baseline" if config == "baseline" else "finalist"
    tags = {TAG_PARENT: parent, TAG_SWEEP: "v", TAG_STAGE: stage, TAG_CONFIG: config}
    tags |= {TAG_SEED: str(seed), **flags}
    metrics = {"val_acc": val, "test_acc": test, "closure_passes_total": 100.0}
    client.log_batch(
        run,
        metrics=[Metric(k, x, 0, 0) for k, x in metrics.items() if x is not None],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    if status != "RUNNING":
        client.set_terminated(run, status)
    return run


def sweep(store: tuple[MlflowClient, str, str]) -> Sweep:
    client, exp, parent = store
    return Sweep("v", exp, client.get_run(parent))


def baseline(store: tuple[MlflowClient, str, str], test: float = 0.80) -> None:
    for s in SEEDS:
        child(store, "baseline", s, 0.80, test + s / 1000)


def test_a_finalist_that_diverged_on_one_seed_cannot_win_on_the_seeds_it_survived(
    store: tuple[MlflowClient, str, str],
) -> None:
    baseline(store)
    # f1 is best on the two seeds it survived; on seed 3 it diverged (the trainable reports
    # the worst validation value and no test metric, and the tracker tags the run).
    child(store, "f1", 1, 0.95, 0.95)
    child(store, "f1", 2, 0.95, 0.95)
    child(store, "f1", 3, 0.0, None, **{TAG_DIVERGED: "1"})
    for s in SEEDS:
        child(store, "f2", s, 0.85, 0.80 + s / 1000 + WINNER_GAPS[s])

    v = tracking.compute_verdict(store[0], sweep(store))

    assert v.winner_config_id == "f2"
    assert v.seeds == list(SEEDS)
    assert v.excluded == {"f1": "diverged on seed 3"}
    # f2 is about 0.01 above the baseline on every seed; picked from itself alone (f1 could
    # not win), so its interval is a plain 95% one
    assert v.verdict == "better" and v.chosen_from == 1
    assert "excluded f1: diverged on seed 3" in format_verdict_table(v)


def test_failed_and_out_of_memory_seeds_exclude_too_and_are_named_by_seed(
    store: tuple[MlflowClient, str, str],
) -> None:
    baseline(store)
    child(store, "f1", 1, 0.95, 0.95, status="FAILED")
    child(store, "f1", 2, 0.95, 0.95)
    child(store, "f1", 3, 0.95, 0.95, status="FAILED")
    child(store, "f2", 1, 0.0, None, **{TAG_OOM: "1"})
    child(store, "f2", 2, 0.9, 0.9)
    child(store, "f2", 3, 0.9, 0.9)

    client = store[0]
    assert tracking.compute_verdict(client, sweep(store)) is None
    verdict, why = tracking.log_verdict(client, sweep(store))
    assert verdict is None
    assert why == (
        "no finalist finished every seed with a result "
        "(f1: failed on seeds 1, 3; f2: ran out of memory on seed 1)"
    )
    note = tracking.parent_note(sweep(store), "FINISHED", None, None, why)
    assert note.startswith(f"**No verdict:** {why}, so no claim is made.")


def test_a_failed_seed_that_a_resume_ran_again_counts_its_finished_run(
    store: tuple[MlflowClient, str, str],
) -> None:
    baseline(store)
    child(store, "f1", 2, 0.9, 0.9, status="FAILED")
    for s in SEEDS:
        child(store, "f1", s, 0.9, 0.9)

    v = tracking.compute_verdict(store[0], sweep(store))

    assert v.winner_config_id == "f1" and v.seeds == list(SEEDS) and v.excluded == {}


def test_a_seed_still_running_is_left_out_without_excluding_its_finalist(
    store: tuple[MlflowClient, str, str],
) -> None:
    baseline(store)
    child(store, "f1", 1, 0.9, 0.9)
    child(store, "f1", 2, 0.9, 0.9)
    child(store, "f1", 3, None, None, status="RUNNING")

    v = tracking.compute_verdict(store[0], sweep(store))

    assert v.winner_config_id == "f1" and v.seeds == [1, 2] and v.excluded == {}


def test_a_baseline_seed_without_a_result_leaves_the_pairs_and_says_so(
    store: tuple[MlflowClient, str, str],
) -> None:
    child(store, "baseline", 1, 0.8, 0.8)
    child(store, "baseline", 2, 0.0, None, **{TAG_DIVERGED: "1"})
    child(store, "baseline", 3, 0.8, 0.8)
    for s in SEEDS:
        child(store, "f1", s, 0.9, 0.9)

    v = tracking.compute_verdict(store[0], sweep(store))

    assert v.seeds == [1, 3] and v.winner_values == [0.9, 0.9]
    assert v.excluded == {"baseline": "diverged on seed 2 (left out of the pairs)"}
    note = tracking.parent_note(sweep(store), "FINISHED", None, v)
    assert "Left out: baseline diverged on seed 2 (left out of the pairs)." in note


def test_the_report_lists_what_was_left_out(
    store: tuple[MlflowClient, str, str], tmp_path: Path
) -> None:
    baseline(store)
    child(store, "f1", 1, 0.0, None, **{TAG_DIVERGED: "1"})
    for s in SEEDS:
        child(store, "f2", s, 0.85, 0.85)

    record = tracking.sweep_record(store[0], sweep(store))
    text = write_report(record, tmp_path / "report")[0].read_text()

    assert record.verdict.excluded == {"f1": "diverged on seed 1"}
    assert "- `f1`: diverged on seed 1" in text


def test_export_leaves_out_a_finalist_with_a_failed_seed_and_never_exports_that_run(
    store: tuple[MlflowClient, str, str],
) -> None:
    baseline(store)
    for s in SEEDS:
        child(store, "f1", s, 0.85, 0.85)
    # f2: best mean validation value of the seeds that finished, but its seed 1 diverged (and
    # that seed's run is the one export used to pick, the lowest seed).
    child(store, "f2", 1, 0.0, None, **{TAG_DIVERGED: "1"})
    child(store, "f2", 2, 0.99, 0.99)
    child(store, "f2", 3, 0.99, 0.99)

    ranked = tracking.export_ranking(store[0], sweep(store))

    finalists = [facts["config_id"] for _, facts in ranked if facts["stage"] == "finalist"]
    assert finalists == ["f1"]
    assert all(run.data.tags.get(TAG_DIVERGED) != "1" for run, _ in ranked)


@pytest.mark.parametrize("rivals", [0, 2])
def test_the_winners_interval_holds_jointly_over_the_finalists_it_was_picked_from(
    store: tuple[MlflowClient, str, str], tmp_path: Path, rivals: int
) -> None:
    # The winner is the best of the finalists on the seeds it is then compared on, so its
    # interval is one of 1 + rivals at 95% together (Bonferroni): the same winner and
    # baseline that a 95% interval calls better are no difference at 98.3%.
    baseline(store)
    for s in SEEDS:
        child(store, "f1", s, 0.95, 0.80 + s / 1000 + WINNER_GAPS[s])
        for r in range(rivals):
            child(store, f"f{2 + r}", s, 0.85 - r / 100, 0.80 + s / 1000)

    v = tracking.compute_verdict(store[0], sweep(store))

    assert v.winner_config_id == "f1" and v.chosen_from == 1 + rivals
    assert v.diff.mean == pytest.approx(0.01)
    assert v.diff.confidence == pytest.approx(1 - 0.05 / (1 + rivals))
    if rivals:
        assert v.diff.ci_low < 0 < v.diff.ci_high and v.verdict == "no_difference"
        assert "98.3% interval (95% jointly over 3 finalists)" in format_verdict_table(v)
        tracking.log_verdict(store[0], sweep(store))
        parent = store[0].get_run(store[2]).data.metrics
        assert parent["final.delta.test_acc.confidence"] == pytest.approx(1 - 0.05 / 3)
        # the exported winner says what the verdict said of it
        (run, facts), *_ = tracking.export_ranking(store[0], sweep(store))
        assert facts["winner"] and facts["config_id"] == "f1"
        assert facts["verdict"] == "no_difference" and facts["verdict_metric"] == "test_acc"
        assert facts["verdict_mean"] == pytest.approx(0.01)
        assert facts["verdict_ci_low"] == pytest.approx(v.diff.ci_low)
        assert facts["verdict_confidence"] == pytest.approx(1 - 0.05 / 3)
        record = tracking.sweep_record(store[0], sweep(store))
        report = write_report(record, tmp_path / "report")[0].read_text()
        assert "hold at 95% jointly (Bonferroni)" in report
        note = tracking.parent_note(sweep(store), "FINISHED", None, v)
        assert "98.3% interval (95% jointly over 3 finalists) [" in note
    else:
        assert 0 < v.diff.ci_low and v.verdict == "better"
        assert "95% interval [" in format_verdict_table(v)
