"""The honest-results protocol end to end on real Ray, Optuna and MLflow: search on the
validation split, finalists and baseline over the same fresh seeds, the verdict on the
parent run, the report, and the export ranking."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from sweeps import tracking
from sweeps.cli import app
from sweeps.runner import _confirm_stage, run_sweep
from sweeps.spec import SweepSpec
from sweeps.tracking import META_STAGE
from tests.sweeps.conftest import sweep_dict

TOP_K, SEEDS = 2, 2


@pytest.fixture(scope="module")
def confirmed(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("confirm")
    d = sweep_dict(
        "confirm", finalists={"top_k": TOP_K, "seeds": SEEDS}, scheduler={"name": "fifo"}
    )
    d["storage_path"] = str(tmp / "ray")
    d["tracking_uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    spec = SweepSpec.model_validate(d)
    result = run_sweep(spec, yaml.safe_dump(d), progress=False)
    client = MlflowClient(result.tracking_uri)
    sweep = tracking.find_sweep(client, "confirm")
    return tmp, spec, result, client, sweep


def by_stage(client, sweep) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in tracking.children(client, sweep):
        out.setdefault(r.data.tags["flatsweep.stage"], []).append(r)
    return out


def test_stages_counts_tags_and_seeds(confirmed):
    tmp, spec, result, client, sweep = confirmed
    stages = by_stage(client, sweep)
    assert len(stages["search"]) == 4
    assert len(stages["finalist"]) == TOP_K * SEEDS
    assert len(stages["baseline"]) == SEEDS
    fresh = {spec.train.seed + 1 + i for i in range(SEEDS)}
    for stage in ("finalist", "baseline"):
        assert {int(r.data.tags["flatsweep.seed"]) for r in stages[stage]} == fresh
        for r in stages[stage]:
            assert r.info.status == "FINISHED"
            assert json.loads(r.data.tags["flatsweep.train_spec"])["seed"] == int(
                r.data.tags["flatsweep.seed"]
            )
            # a labelled flatness diagnostic of the final weights
            assert r.data.metrics["diag.hessian_lmax"] > 0
            # full budget, no early stopping
            assert len(client.get_metric_history(r.info.run_id, "val_acc")) == 3
    assert {r.data.tags["flatsweep.config_id"] for r in stages["finalist"]} == {"f1", "f2"}
    for r in stages["baseline"]:
        assert json.loads(r.data.tags["flatsweep.train_spec"])["perturbation"]["kind"] == "erm"
        assert r.info.run_name.startswith("baseline seed=")
    # the finalists are the best distinct search configs by the validation metric
    ranked = tracking.rank_children(stages["search"], "val_acc", "max")
    chosen = {json.dumps(tracking.searched_values(r), sort_keys=True) for r in ranked[:TOP_K]}
    confirmed_points = {
        json.dumps({k: v for k, v in tracking.searched_values(r).items()}, sort_keys=True)
        for r in stages["finalist"]
    }
    assert confirmed_points == chosen


def test_no_search_trial_reports_the_test_set_per_epoch(confirmed):
    tmp, spec, result, client, sweep = confirmed
    for r in tracking.children(client, sweep, "search"):
        history = client.get_metric_history(r.info.run_id, "test_acc")
        assert [m.step for m in history] in ([], [spec.train.epochs])
        assert len(client.get_metric_history(r.info.run_id, "val_acc")) >= 1


def test_the_verdict_on_the_parent_matches_the_child_runs(confirmed):
    tmp, spec, result, client, sweep = confirmed
    parent = client.get_run(sweep.parent_id)
    m, tags = parent.data.metrics, parent.data.tags
    assert parent.info.status == "FINISHED"
    for key in (
        "winner.test_acc.mean",
        "winner.test_acc.std",
        "baseline.test_acc.mean",
        "baseline.test_acc.std",
        "delta.test_acc.mean",
        "delta.test_acc.ci_low",
        "delta.test_acc.ci_high",
        "winner.cost_ratio",
    ):
        assert f"final.{key}" in m, key
    assert tags["flatsweep.verdict"] in ("better", "no_difference", "worse")
    stages = by_stage(client, sweep)
    winner_cfg = tags["flatsweep.winner_config_id"]
    winners = sorted(
        (r for r in stages["finalist"] if r.data.tags["flatsweep.config_id"] == winner_cfg),
        key=lambda r: int(r.data.tags["flatsweep.seed"]),
    )
    assert tags["flatsweep.winner_run_id"] in {r.info.run_id for r in winners}
    # the winner has the best mean validation metric of the finalists
    means = {}
    for r in stages["finalist"]:
        means.setdefault(r.data.tags["flatsweep.config_id"], []).append(r.data.metrics["val_acc"])
    assert statistics.mean(means[winner_cfg]) == max(statistics.mean(v) for v in means.values())
    base = sorted(stages["baseline"], key=lambda r: int(r.data.tags["flatsweep.seed"]))
    a = [r.data.metrics["test_acc"] for r in winners]
    b = [r.data.metrics["test_acc"] for r in base]
    assert m["final.winner.test_acc.mean"] == pytest.approx(statistics.mean(a))
    assert m["final.baseline.test_acc.mean"] == pytest.approx(statistics.mean(b))
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    assert m["final.delta.test_acc.mean"] == pytest.approx(statistics.mean(diffs))
    assert m["final.delta.test_acc.ci_low"] <= m["final.delta.test_acc.mean"]
    assert m["final.delta.test_acc.mean"] <= m["final.delta.test_acc.ci_high"]
    # AMP costs more closure passes per step than ERM
    assert m["final.winner.cost_ratio"] > 1.5
    assert tags["mlflow.note.content"].startswith("**Verdict: ")
    # the parent row of a fresh runs table says what the sweep found
    assert parent.info.run_name == f"confirm: {tags['flatsweep.verdict']}"
    colours = {
        r.data.tags["flatsweep.config_id"]: r.data.tags["mlflow.runColor"]
        for r in stages["finalist"] + stages["baseline"]
    }
    assert colours["baseline"] == "#000000" and len(set(colours.values())) == 3


def test_the_report_is_logged_on_the_parent(confirmed):
    tmp, spec, result, client, sweep = confirmed
    arts = {a.path for a in client.list_artifacts(sweep.parent_id, "report")}
    assert {"report/report.md", "report/report.html"} <= arts
    html = Path(client.download_artifacts(sweep.parent_id, "report/report.html", str(tmp)))
    page = html.read_text()
    # self-contained: the MLflow artifact view shows embedded images only
    assert page.count("data:image/png;base64,") >= 2 and 'src="val_curves.png"' not in page
    assert any(p.endswith(".png") for p in arts)
    text = Path(
        client.download_artifacts(sweep.parent_id, "report/report.md", str(tmp))
    ).read_text()
    for line in text.splitlines():  # every image the report references was logged
        if line.startswith("!["):
            assert f"report/{line.split('(')[1].rstrip(')')}" in arts


def test_export_puts_the_confirmed_winner_first(confirmed, tmp_path):
    tmp, spec, result, client, sweep = confirmed
    out = CliRunner().invoke(
        app,
        [
            "export",
            "confirm",
            "--top",
            "4",
            "--out",
            str(tmp_path),
            "--tracking-uri",
            result.tracking_uri,
        ],
    )
    assert out.exit_code == 0, out.output
    files = sorted(tmp_path.glob("*.yaml"), key=lambda p: p.name)
    first = yaml.safe_load(files[0].read_text())["provenance"]
    assert first["rank"] == 1 and first["stage"] == "finalist" and first["winner"] is True
    stages = [yaml.safe_load(f.read_text())["provenance"]["stage"] for f in files]
    assert stages == sorted(stages, key=lambda s: s != "finalist")  # finalists before search
    exported = yaml.safe_load(files[0].read_text())
    assert None not in exported["perturbation"].values()  # every default that was used


def test_status_lists_searched_values_and_the_verdict(confirmed):
    tmp, spec, result, client, sweep = confirmed
    out = CliRunner().invoke(app, ["status", "confirm", "--tracking-uri", result.tracking_uri])
    assert out.exit_code == 0, out.output
    assert "perturbation.radius" in out.output and "verdict:" in out.output
    js = CliRunner().invoke(
        app, ["status", "confirm", "--json", "--tracking-uri", result.tracking_uri]
    )
    data = json.loads(js.output)
    assert data["verdict"] in ("better", "no_difference", "worse")
    assert data["trials"][0]["stage"] == "finalist"
    search = [t for t in data["trials"] if t["stage"] == "search" and t["val_acc"] is not None]
    vals = [t["val_acc"] for t in search]
    assert vals == sorted(vals, reverse=True)  # best first
    assert all("perturbation.radius" in t["params"] for t in search)


def test_a_space_that_tunes_the_optimizer_tunes_the_baseline_too(ray_local, tmp_path):
    """Equal budgets: when lr/weight decay are searched, the baseline gets its own search over
    them with the same number of trials before its seeds run."""
    d = sweep_dict(
        "both-tuned",
        num_samples=2,
        finalists={"top_k": 1, "seeds": 2},
        scheduler={"name": "fifo"},
        space={"optimizer": True, "ranges": {"perturbation.radius": [0.005, 0.05]}},
    )
    d["train"]["epochs"] = 2
    d["storage_path"] = str(tmp_path / "ray")
    d["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_sweep(SweepSpec.model_validate(d), yaml.safe_dump(d), progress=False)
    client = MlflowClient(result.tracking_uri)
    sweep = tracking.find_sweep(client, "both-tuned")
    stages = by_stage(client, sweep)
    assert len(stages["search"]) == len(stages["baseline_search"]) == 2
    for r in stages["baseline_search"]:
        spec = json.loads(r.data.tags["flatsweep.train_spec"])
        assert spec["perturbation"]["kind"] == "erm"
        assert {"optim.lr", "optim.weight_decay"} <= set(tracking.searched_values(r))
    # the baseline's seeds run the best baseline-search config's optimizer values
    best = tracking.rank_children(stages["baseline_search"], "val_acc", "max")[0]
    best_optim = json.loads(best.data.tags["flatsweep.train_spec"])["optim"]
    assert len(stages["baseline"]) == 2
    for r in stages["baseline"]:
        optim = json.loads(r.data.tags["flatsweep.train_spec"])["optim"]
        assert (optim["lr"], optim["weight_decay"]) == (
            best_optim["lr"],
            best_optim["weight_decay"],
        )
    assert sweep.parent.data.tags is not None
    assert client.get_run(sweep.parent_id).data.tags["flatsweep.verdict"]


def test_a_reproduction_that_tunes_the_optimizer_keeps_its_baseline(tmp_path):
    """`sweeps reproduce` has no search, hence no baseline search: the baseline runs the
    spec's own optimizer values beside the one finalist (it was dropped without a word)."""
    d = sweep_dict("repro-opt", finalists={"top_k": 1, "seeds": 2}, space={"optimizer": True})
    d["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = SweepSpec.model_validate(d)
    client = tracking.open_client(spec.resolved_tracking_uri())
    sweep = tracking.open_parent(client, spec, yaml.safe_dump(d), resume=False)

    stage = _confirm_stage(client, sweep, spec, search=False)

    seeds = [spec.train.seed + 1, spec.train.seed + 2]
    assert [(r[META_STAGE], r["seed"]) for r in stage.rows] == [
        (role, s) for s in seeds for role in ("finalist", "baseline")
    ]
    plan = json.loads(client.get_run(sweep.parent_id).data.tags[tracking.TAG_FINALISTS])
    assert plan["baseline"] == {"point": {}}
