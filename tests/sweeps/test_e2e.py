"""End to end on real components: local Ray, real Optuna, an MLflow SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from sweeps.cli import app
from sweeps.runner import run_sweep
from sweeps.spec import SweepSpec
from sweeps.tracking import TAG_SPEC, TAG_TRIAL, find_children, find_parent
from tests.sweeps.conftest import sweep_dict


def run(tmp_path: Path, d: dict, resume: bool = False):
    d = {
        **d,
        "storage_path": str(tmp_path / "ray"),
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    spec = SweepSpec.model_validate(d)
    return spec, run_sweep(spec, yaml.safe_dump(d), resume=resume, progress=False)


@pytest.fixture(scope="module")
def finished(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    spec, result = run(tmp, sweep_dict("e2e"))
    client = MlflowClient(result.tracking_uri)
    return tmp, spec, result, client


def test_one_parent_and_one_child_per_trial(finished):
    tmp, spec, result, client = finished
    exp = client.get_experiment_by_name("e2e")
    parent = find_parent(client, exp.experiment_id, "e2e")
    assert parent is not None and parent.info.status == "FINISHED"
    assert parent.info.run_id == result.parent_run_id
    runs = client.search_runs([exp.experiment_id])
    children = find_children(client, exp.experiment_id, parent.info.run_id)
    assert len(runs) == 1 + 4 and len(children) == 4
    assert len({c.data.tags[TAG_TRIAL] for c in children}) == 4
    # the parent holds the spec, the space, the git revision and the best trial
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep.yaml", "search_space.json", "best_config.json"} <= arts
    assert parent.data.params["space.perturbation.radius"] == "[0.005, 0.05] log"
    assert parent.data.tags["mlflow.source.git.commit"]
    assert parent.data.tags["flatsweep.best_trial"] == result.best["trial_id"]
    assert parent.data.metrics["best_val_acc"] == result.best["val_acc"]


def test_children_have_params_metrics_and_statuses(finished):
    tmp, spec, result, client = finished
    exp = client.get_experiment_by_name("e2e")
    children = find_children(client, exp.experiment_id, result.parent_run_id)
    full = 0
    for c in children:
        assert c.info.status == "FINISHED"
        p = c.data.params
        assert p["perturbation.kind"] == "amp"
        assert 0.005 <= float(p["perturbation.radius"]) <= 0.05
        assert 1 <= int(p["perturbation.inner_steps"]) <= 3
        assert 0.1 <= float(p["perturbation.inner_lr"]) <= 2.0
        spec_tag = json.loads(c.data.tags[TAG_SPEC])
        assert spec_tag["perturbation"]["radius"] == float(p["perturbation.radius"])
        history = client.get_metric_history(c.info.run_id, "val_acc")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, len(steps) + 1))  # one point per epoch, step=epoch
        stopped = c.data.tags["flatsweep.stopped_early"] == "1"
        assert stopped == (len(steps) < 3)
        full += not stopped
        assert c.data.tags["flatsweep.diverged"] == "0"
    assert full >= 1


def test_export_writes_files_that_rerun_to_the_same_metric(finished, tmp_path):
    tmp, spec, result, client = finished
    out = tmp_path / "best"
    res = CliRunner().invoke(
        app,
        ["export", "e2e", "--top", "2", "--out", str(out), "--tracking-uri", result.tracking_uri],
    )
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("*.yaml"))
    assert 1 <= len(files) <= 2
    exported = yaml.safe_load(files[0].read_text())
    prov = exported["provenance"]
    assert prov["sweep"] == "e2e" and prov["rank"] == 1 and prov["metric"] == "val_acc"
    assert prov["run_id"] == result.best["run_id"]
    assert prov["value"] == result.best["val_acc"]
    # re-run without Ray or MLflow: same seed, same threads, same metric
    proc = subprocess.run(
        [sys.executable, "-m", "trainers", str(files[0])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["val_acc"] == prov["value"]


def test_status_lists_every_trial(finished):
    tmp, spec, result, client = finished
    res = CliRunner().invoke(
        app, ["status", "e2e", "--json", "--tracking-uri", result.tracking_uri]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["status"] == "FINISHED" and len(data["trials"]) == 4
    assert {t["status"] for t in data["trials"]} == {"FINISHED"}


def test_running_the_same_sweep_twice_is_refused(finished):
    tmp, spec, result, client = finished
    from sweeps.spec import SpecError

    with pytest.raises(SpecError, match="already exists"):
        run(tmp, sweep_dict("e2e"))
    exp = client.get_experiment_by_name("e2e")
    assert len(client.search_runs([exp.experiment_id])) == 5


def test_resume_of_a_finished_sweep_adds_no_runs(finished):
    tmp, spec, result, client = finished
    _, again = run(tmp, sweep_dict("e2e"), resume=True)
    exp = client.get_experiment_by_name("e2e")
    assert len(client.search_runs([exp.experiment_id])) == 5
    assert again.best["trial_id"] == result.best["trial_id"]


def test_diverging_trials_end_finished_with_a_finite_worst_value(ray_local, tmp_path):
    d = sweep_dict("diverge", num_samples=2, scheduler={"name": "fifo"})
    d["train"]["optim"] = {"lr": 1e6, "momentum": 0.0}
    spec, result = run(tmp_path, d)
    client = MlflowClient(result.tracking_uri)
    children = find_children(client, result.experiment_id, result.parent_run_id)
    assert len(children) == 2
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.tags["flatsweep.diverged"] == "1"
        assert c.data.metrics["val_acc"] == 0.0  # the worst value told to Optuna
        assert c.data.metrics["diverged"] == 1.0
    assert result.best is None  # nothing worth exporting


def test_every_slot_is_used(finished):
    """OptunaSearch alone keeps one pending trial; the sweep must run 2 at once on 2 CPUs."""
    tmp, spec, result, client = finished
    children = find_children(client, result.experiment_id, result.parent_run_id)
    events = sorted(
        [(c.info.start_time, 1) for c in children] + [(c.info.end_time, -1) for c in children]
    )
    running, most = 0, 0
    for _, delta in events:
        running += delta
        most = max(most, running)
    assert most == 2


def test_tunes_snapshot_keeps_only_the_objectives_statistics_of_finished_trials(finished):
    """ForgetEndedTrialStats: the running statistics of every other reported key are gone
    from what the driver holds, hence from the snapshot ``Tuner.restore`` reads."""
    tmp, spec, result, client = finished
    keep = {*spec.metrics, "training_iteration"}
    terminated = 0
    for path in (tmp / "ray").rglob("experiment_state-*.json"):
        for trial_json, meta_json in json.loads(path.read_text())["trial_data"]:
            if json.loads(trial_json)["status"] != "TERMINATED":
                continue
            meta = json.loads(meta_json)
            assert set(meta["metric_analysis"]) <= keep, sorted(meta["metric_analysis"])
            assert set(meta["metric_n_steps"]) <= keep
            assert set(spec.metrics) <= set(meta["metric_analysis"])
            terminated += 1
    assert terminated >= spec.num_samples


def _study(exp_dir: Path):  # noqa: ANN202
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    limiter = ConcurrencyLimiter(OptunaSearch(), max_concurrent=1)
    limiter.restore_from_dir(str(exp_dir))
    return limiter.searcher._ot_study


def test_a_multi_objective_sweep_tells_optuna_every_objective(ray_local, tmp_path):
    objectives = {
        "metric": ["val_acc", "train_loss"],
        "mode": ["max", "min"],
        "scheduler": {"name": "fifo"},
        "searcher": {"sampler": "nsga2", "seed": 0},
    }
    d = sweep_dict("pareto", num_samples=3, **objectives)
    d["train"]["epochs"] = 2
    spec, result = run(tmp_path, d)
    client = MlflowClient(result.tracking_uri)
    children = find_children(client, result.experiment_id, result.parent_run_id)
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    study = _study(tmp_path / "ray" / "pareto")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert sorted(tuple(t.values) for t in study.trials) == sorted(
        (c.data.metrics["val_acc"], c.data.metrics["train_loss"]) for c in children
    )
    # The parent's best is ranked by the first objective.
    assert result.best["val_acc"] == max(c.data.metrics["val_acc"] for c in children)
    # objectives are stored as JSON and `sweeps status` shows every one of them
    res = CliRunner().invoke(
        app, ["status", "pareto", "--json", "--tracking-uri", result.tracking_uri]
    )
    data = json.loads(res.output)
    assert data["objectives"] == [
        {"metric": "val_acc", "mode": "max"},
        {"metric": "train_loss", "mode": "min"},
    ]
    for t in data["trials"]:
        assert isinstance(t["val_acc"], float) and isinstance(t["train_loss"], float)

    # Out of memory (a 320 GB first layer the CPU allocator refuses): no objective reported,
    # so every Optuna trial is PRUNED, none left RUNNING.
    d = sweep_dict("pareto-oom", num_samples=2, **objectives)
    d["train"]["model"] = {"name": "mlp", "args": {"hidden": 2_000_000_000}}
    run(tmp_path, d)
    assert [t.state.name for t in _study(tmp_path / "ray" / "pareto-oom").trials] == ["PRUNED"] * 2


def test_a_fresh_ui_sees_names_descriptions_and_the_dataset(finished):
    tmp, spec, result, client = finished
    parent = client.get_run(result.parent_run_id)
    note = parent.data.tags["mlflow.note.content"]
    assert "Best search trial by val_acc" in note and result.best["run_name"] in note
    assert [d.dataset.name for d in parent.inputs.dataset_inputs] == ["mnist1d-seed0"]
    for c in find_children(client, result.experiment_id, result.parent_run_id):
        # "amp r=0.012 K=2 ilr=0.39": the regularizer and its searched values
        name = c.info.run_name
        assert name.startswith("amp r=") and " K=" in name and " ilr=" in name, name
        assert float(name.split("r=")[1].split()[0]) == pytest.approx(
            float(c.data.params["perturbation.radius"]), rel=0.05
        )
        assert c.data.tags["flatsweep.stage"] == "search"
    # every default that was used is recorded, never None
    for c in find_children(client, result.experiment_id, result.parent_run_id):
        assert "None" not in c.data.params.values()


def test_the_browse_hint_points_at_the_server_or_the_ui_to_start():
    from sweeps.runner import SweepResult

    server = SweepResult("s", "7", "r", "http://mlflow.internal:8080/", 1, None)
    assert server.browse_hint() == "browse: http://mlflow.internal:8080/#/experiments/7/runs"
    local = SweepResult("s", "7", "r", "sqlite:////tmp/x.db", 1, None)
    assert local.browse_hint().startswith("browse: mlflow ui --backend-store-uri sqlite:///")
    assert local.browse_hint().endswith("http://127.0.0.1:5000/#/experiments/7/runs")
