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
from tests._ports import free_port
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
    links = study.user_attrs["mlflow_run_ids"]
    assert study.metric_names == ["val_acc"]
    for t in done:
        run = runs[links[t.user_attrs[studies.ATTR_TRIAL]]]
        assert run.data.tags["flatsweep.trial_id"] == t.user_attrs[studies.ATTR_TRIAL]
        if studies.ATTR_RUN in t.user_attrs:  # linked while it ran
            assert t.user_attrs[studies.ATTR_RUN] == run.info.run_id
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


def test_warm_start_from_a_study_of_another_metric_is_refused(first):
    # Same direction, other metric: train_acc values are no val_acc ones (and a study on
    # test_acc would feed the test set into this sweep's searcher).
    tmp, d, spec, result = first
    d4 = {
        **d,
        "name": "fourth",
        "metric": "train_acc",
        "searcher": {**d["searcher"], "warm_start": ["first"]},
    }
    with pytest.raises(
        SpecError,
        match=r"^searcher.warm_start: study 'first' optimised \['val_acc'\], this sweep "
        r"\['train_acc'\]$",
    ):
        run(tmp, d4)
    assert tracking.find_sweep(MlflowClient(f"sqlite:///{tmp / 'm.db'}"), "fourth") is None


def test_warm_start_accepts_a_study_whose_trials_skipped_a_conditional_parameter(tmp_path):
    # AWP suggests perturbation.inner_lr only when inner_steps >= 2 (never by default): its
    # trials hold a subset of the space's parameters, and an identical sweep must accept them.
    import search_spaces

    url = f"sqlite:///{tmp_path / 'm.optuna.db'}"

    def stored(name: str, overrides: dict, optimizer: bool = False) -> None:
        ranges = search_spaces.resolve("awp", overrides, optimizer)
        fn = search_spaces.define_by_run("awp", ranges)
        study = optuna.create_study(
            study_name=name,
            storage=url,
            direction="maximize",
            sampler=optuna.samplers.RandomSampler(seed=0),
        )
        study.set_metric_names(["val_acc"])
        for i in range(8):
            trial = study.ask()
            fn(trial)
            study.tell(trial, 0.5 + i / 100)

    stored("default", {})  # inner_steps fixed at 1: no trial has inner_lr
    stored("steps", {"perturbation.inner_steps": [1, 3]})  # some trials have it, some not
    stored("knobs", {}, optimizer=True)  # optim.lr, optim.weight_decay too

    # Another space whose trials hold a subset of this one's parameters (the radius alone,
    # same range): the replayed space asks for inner_steps, which they lack.
    ranges = search_spaces.resolve("awp", {})
    subset = optuna.create_study(study_name="subset", storage=url, direction="maximize")
    subset.set_metric_names(["val_acc"])
    radius = ranges["perturbation.radius"]
    subset.add_trial(
        optuna.trial.create_trial(
            params={"perturbation.radius": radius.low},
            distributions={
                "perturbation.radius": studies.distributions(ranges)["perturbation.radius"]
            },
            value=0.5,
        )
    )

    def check(names: list[str], overrides: dict) -> list[optuna.trial.FrozenTrial]:
        ranges = search_spaces.resolve("awp", overrides)
        return studies.check_warm_start(url, names, "awp", ranges, ["max"], ["val_acc"])

    assert len(check(["default"], {})) == 8
    steps = check(["steps"], {"perturbation.inner_steps": [1, 3]})
    with_lr = [t for t in steps if "perturbation.inner_lr" in t.params]
    assert len(steps) == 8 and 0 < len(with_lr) < 8
    # a parameter this space lacks, or another range of one it has, is still refused
    with pytest.raises(ValueError, match=r"^searcher.warm_start: sweep 'knobs' searched another"):
        check(["knobs"], {})
    with pytest.raises(ValueError, match=r"^searcher.warm_start: sweep 'steps' searched another"):
        check(["steps"], {})
    with pytest.raises(ValueError, match=r"^searcher.warm_start: sweep 'default' searched another"):
        check(["default"], {"perturbation.radius": [1e-3, 1e-2]})
    with pytest.raises(ValueError, match=r"^searcher.warm_start: sweep 'subset' searched another"):
        check(["subset"], {})


def test_warm_start_from_a_storage_that_does_not_exist_creates_none(tmp_path):
    import search_spaces

    db = tmp_path / "none.optuna.db"
    with pytest.raises(ValueError, match=r"^searcher.warm_start: no stored study 'old' in sqlite"):
        studies.check_warm_start(
            f"sqlite:///{db}", ["old"], "amp", search_spaces.resolve("amp"), ["max"], ["val_acc"]
        )
    assert not db.exists()


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
    stored = optuna.load_study(study_name="s", storage=url)
    states = {t.user_attrs[studies.ATTR_TRIAL]: t for t in stored.trials}
    assert states["t1"].state.name == "COMPLETE"
    assert stored.user_attrs["mlflow_run_ids"] == {"t1": "run-1"}
    assert states["t9"].state.name == "FAIL"


def test_the_mirror_stores_each_finished_trial_once_with_its_run(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    memory = optuna.create_study(direction="maximize")
    asked = []
    for i in range(3):
        t = memory.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        t.set_user_attr(studies.ATTR_TRIAL, f"t{i}")
        t.report(0.1 * i, step=1)
        if i < 2:
            memory.tell(t, 0.5 + i)
        asked.append(t)
    mirror = studies.StudyMirror(url, "m", ["max"], ["val_acc"])
    mirror.run_ids = {"t0": "run-0"}
    for t in memory.trials:
        mirror.put(t)  # the running one is not stored
    assert mirror.flush(30)
    again = studies.StudyMirror(url, "m", ["max"], ["val_acc"])  # a resumed driver's
    memory.tell(asked[2], 9.0)
    again.put_all(memory)  # only the newly finished one is new
    assert again.flush(30)
    stored = optuna.load_study(study_name="m", storage=url)
    by_id = {t.user_attrs[studies.ATTR_TRIAL]: t for t in stored.trials}
    assert sorted(by_id) == ["t0", "t1", "t2"] and len(stored.trials) == 3
    assert [by_id[k].value for k in ("t0", "t1", "t2")] == [0.5, 1.5, 9.0]
    assert by_id["t1"].intermediate_values == {1: 0.1}
    assert by_id["t0"].user_attrs[studies.ATTR_RUN] == "run-0"
    assert studies.ATTR_RUN not in by_id["t1"].user_attrs  # linked by reconcile's map
    assert stored.metric_names == ["val_acc"]
    assert mirror.failed == again.failed == 0


def _chromium(url: str, *extra: str) -> str:
    """Headless Chromium, a fresh profile, no background traffic; returns the DOM it built."""
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed (.ci/run installs it: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=15000",
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    return out.stdout


@pytest.mark.cluster
def test_optuna_dashboard_shows_the_stored_study_in_a_real_browser(tmp_path):
    import subprocess
    import sys
    import time
    import urllib.request

    # The sweep runs in its own process: a Ray started in this test process would leave its
    # auth token cached here for the cluster session's later Jobs API tests.
    d = sweep_dict("first", num_samples=3, scheduler={"name": "fifo"})
    d["train"]["epochs"] = 2
    d["storage_path"] = str(tmp_path / "ray")
    d["tracking_uri"] = f"sqlite:///{tmp_path / 'm.db'}"
    (tmp_path / "first.yaml").write_text(yaml.safe_dump(d))
    done = subprocess.run(
        [sys.executable, "-m", "sweeps", "run", str(tmp_path / "first.yaml"), "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    url = SweepSpec.model_validate(d).optuna_storage_url()
    port = free_port()
    exe = Path(sys.executable).parent / "optuna-dashboard"
    server = subprocess.Popen(
        [str(exe), url, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/studies", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        home = _chromium(f"{base}/dashboard/", "--dump-dom")
        assert "first" in home  # the study is named after the sweep
        study_id = optuna.load_study(study_name="first", storage=url)._study_id
        page = _chromium(f"{base}/dashboard/studies/{study_id}/trials", "--dump-dom")
        for n in range(3):  # every trial of the sweep is listed
            assert f"Trial {n}" in page, page[-2000:]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_two_writer_processes_record_and_link_every_trial(ray_local, tmp_path, monkeypatch):
    # FLATSWEEP_MLFLOW_PROCESS=2: the trials split between two writer processes, each storing
    # its own trials' Optuna copies after their runs exist, so every copy carries its run id.
    monkeypatch.setenv("FLATSWEEP_MLFLOW_PROCESS", "2")
    d = sweep_dict("two", num_samples=4, scheduler={"name": "fifo"})
    d["train"]["epochs"] = 2
    spec, result = run(tmp_path, d)
    assert result.num_trials == 4
    client = MlflowClient(result.tracking_uri)
    sweep = tracking.find_sweep(client, "two")
    runs = tracking.children(client, sweep, "search")
    assert len(runs) == 4
    assert all(r.info.status == "FINISHED" and "val_acc" in r.data.metrics for r in runs)
    study = optuna.load_study(study_name="two", storage=spec.optuna_storage_url())
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert {t.user_attrs[studies.ATTR_RUN] for t in done} == {r.info.run_id for r in runs}
    assert sweep.parent.info.status == "FINISHED"


def test_a_refused_warm_start_leaves_no_database_behind(tmp_path):
    d = sweep_dict("fresh")
    d["searcher"] = {**d["searcher"], "warm_start": ["nope"]}
    with pytest.raises(SpecError, match="^searcher.warm_start: no stored study 'nope'"):
        run(tmp_path, d)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no m.db, no m.optuna.db


def test_a_warm_started_baseline_search_starts_from_the_earlier_sweeps_baseline_search(
    tmp_path,
):
    # With the optimizer searched, the baseline gets its own search of the same budget; a
    # warm start that seeded only the method's would tune the method with more trials than
    # the baseline it is judged against. Earlier studies made here with Optuna, as a sweep
    # stores them (no Ray: the check comes before anything starts).
    import search_spaces
    from sweeps import runner

    d = sweep_dict(
        "second",
        space={"name": "amp", "ranges": {"perturbation.radius": [0.005, 0.05]}, "optimizer": True},
        searcher={"sampler": "tpe", "seed": 0, "warm_start": ["earlier"]},
        finalists={"top_k": 1, "seeds": 1},
    )
    d |= {"storage_path": str(tmp_path / "ray"), "tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}
    spec = SweepSpec.model_validate(d)
    url = spec.optuna_storage_url()

    def stored(name: str, space: str, ranges: object) -> list[dict]:
        ask = search_spaces.define_by_run(space, ranges)
        study = optuna.create_study(study_name=name, storage=url, direction="maximize")
        study.set_metric_names(["val_acc"])
        study.optimize(lambda t: (ask(t), 0.5)[1], n_trials=2)
        return [t.params for t in study.trials]

    stored("earlier", spec.space_name, spec.ranges())  # a search that ran without finalists
    with pytest.raises(
        SpecError,
        match=r"^searcher.warm_start: no stored study 'earlier-baseline-search' in .*: this "
        r"sweep also searches the baseline's optimizer, and that search must start from the "
        r"earlier sweeps' as the method's does",
    ):
        run_sweep(spec, yaml.safe_dump(d), progress=False)
    assert tracking.find_sweep(MlflowClient(spec.tracking_uri), "second") is None

    params = stored("earlier-baseline-search", "erm", runner._baseline_ranges(spec))
    warm = runner._baseline_warm_start(spec)
    assert [t.params for t in warm] == params and all(k.startswith("optim.") for k in params[0])
    stage = runner._baseline_search_stage(spec, warm)
    assert stage.warm_start == warm and stage.name == "baseline_search"
    assert studies.study_name(spec.name, stage.name) == "second-baseline-search"  # seeded
