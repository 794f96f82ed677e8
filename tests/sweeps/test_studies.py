"""Optuna studies that outlive a sweep: stored beside the tracking store, matched to MLflow,
and used to warm-start the next sweep over the same space."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps import studies, tracking
from sweeps.runner import run_sweep
from sweeps.spec import SpecError, SweepSpec
from tests.sweeps.conftest import sweep_dict


def run(tmp: Path, d: dict):  # noqa: ANN201
    d = {**d, "storage_path": str(tmp / "ray"), "tracking_uri": f"sqlite:///{tmp / 'm.db'}"}
    spec = SweepSpec.model_validate(d)
    return spec, run_sweep(spec, yaml.safe_dump(d), progress=False)


@pytest.fixture(scope="module")
def first(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("studies")
    d = sweep_dict("first", num_samples=3, scheduler={"name": "fifo"})
    d["train"]["epochs"] = 2
    spec, result = run(tmp, d)
    return tmp, d, spec, result


def test_the_study_is_stored_and_matches_mlflow(first):
    tmp, d, spec, result = first
    url = spec.optuna_storage_url()
    assert url == f"sqlite:///{tmp / 'm.optuna.db'}"
    study = optuna.load_study(study_name="first", storage=url)
    client = MlflowClient(result.tracking_uri)
    sweep = tracking.find_sweep(client, "first")
    runs = {r.info.run_id: r for r in tracking.children(client, sweep, "search")}
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == len(runs) == 3
    for t in done:
        run = runs[t.user_attrs[studies.ATTR_RUN]]
        assert run.data.tags["flatsweep.trial_id"] == t.user_attrs[studies.ATTR_TRIAL]
        assert t.value == run.data.metrics["val_acc"]
        assert t.params["perturbation.radius"] == pytest.approx(
            float(run.data.params["perturbation.radius"])
        )
    assert sweep.parent.data.tags["flatsweep.optuna_storage"] == url
    assert sweep.parent.data.tags["flatsweep.optuna_study"] == "first"


def test_warm_start_seeds_the_next_study_with_the_finished_trials(first):
    tmp, d, spec, result = first
    d2 = {
        **d,
        "name": "second",
        "num_samples": 2,
        "searcher": {**d["searcher"], "warm_start": ["first"]},
    }
    spec2, _ = run(tmp, d2)
    study = optuna.load_study(study_name="second", storage=spec2.optuna_storage_url())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3 + 2
    earlier = optuna.load_study(study_name="first", storage=spec2.optuna_storage_url())
    assert {t.params["perturbation.radius"] for t in earlier.trials} <= {
        t.params["perturbation.radius"] for t in complete
    }


def test_warm_start_from_another_space_is_refused_before_anything_is_written(first):
    tmp, d, spec, result = first
    d3 = {
        **d,
        "name": "third",
        "space": {"ranges": {"perturbation.radius": [0.1, 0.2]}},
        "searcher": {**d["searcher"], "warm_start": ["first"]},
    }
    with pytest.raises(SpecError, match="^searcher.warm_start: sweep 'first' searched another"):
        run(tmp, d3)
    with pytest.raises(SpecError, match="^searcher.warm_start: no stored study 'nope'"):
        run(tmp, {**d3, "searcher": {**d["searcher"], "warm_start": ["nope"]}})
    client = MlflowClient(f"sqlite:///{tmp / 'm.db'}")
    assert tracking.find_sweep(client, "third") is None


def test_a_left_over_study_of_the_same_name_is_refused(first, tmp_path):
    url = f"sqlite:///{tmp_path / 'm.optuna.db'}"
    optuna.create_study(study_name="orphan", storage=url)
    d = sweep_dict("orphan")
    with pytest.raises(SpecError, match="an Optuna study 'orphan' already exists"):
        run(tmp_path, d)


def test_reconcile_fails_trials_a_killed_driver_left_running(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    done = study.ask()
    done.set_user_attr(studies.ATTR_TRIAL, "t1")
    study.tell(done, 1.0)
    orphan = study.ask()  # suggested after the last snapshot: never reported
    orphan.set_user_attr(studies.ATTR_TRIAL, "t9")
    studies.reconcile(url, "s", {"t1": "run-1"})
    states = {
        t.user_attrs[studies.ATTR_TRIAL]: t
        for t in optuna.load_study(study_name="s", storage=url).trials
    }
    assert states["t1"].state.name == "COMPLETE"
    assert states["t1"].user_attrs[studies.ATTR_RUN] == "run-1"
    assert states["t9"].state.name == "FAIL"
