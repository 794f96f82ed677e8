"""Finished trials added in bulk (``sweeps.optunabulk``) are the trials ``add_trial`` adds.

The same ``FrozenTrial`` objects are added to two studies of one storage, once with Optuna's
``Study.add_trial`` and once in one bulk transaction, and the studies are read back through a
fresh ``optuna.load_study``: every trial must be equal but for its storage id. The trials
cover what a sweep stores: complete, pruned and failed trials, float (log), int and
categorical params (a ``None`` choice included), intermediate values that are NaN or
infinite, nested user attributes, system attributes; and a study with trials before them.
SQLite always; PostgreSQL on the machine's server (127.0.0.1:5432) where one answers.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from sweeps import optunabulk
from tests.sweeps.test_sqlbulk import _pg_up, _psql

optuna.logging.set_verbosity(optuna.logging.WARNING)

DISTS = {
    "radius": FloatDistribution(1e-3, 1.0, log=True),
    "steps": IntDistribution(1, 3),
    "kind": CategoricalDistribution(["a", "b", None]),
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'optuna.db'}"
        return
    if not _pg_up():
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432")
    db = f"flatsweep_optuna_{uuid.uuid4().hex[:12]}"
    _psql(f"create database {db}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"
    finally:
        _psql(f"drop database if exists {db} with (force)")


def _trials(n: int = 9, directions: int = 1) -> list[FrozenTrial]:
    out = []
    for i in range(n):
        state = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)[i % 3]
        values = None
        if state == TrialState.COMPLETE:
            values = [math.inf if i == 3 else 0.5 + i, -i][:directions]
        out.append(
            create_trial(
                state=state,
                values=values,
                params={
                    "radius": 0.01 * (i + 1),
                    "steps": 1 + i % 3,
                    "kind": ("a", "b", None)[i % 3],
                },
                distributions=DISTS,
                user_attrs={"flatsweep.trial_id": f"t{i}", "nested": [1, {"a": None}]},
                system_attrs={"seq": i},
                intermediate_values={} if i == 2 else {1: 0.1 * i, 2: float("nan"), 3: -math.inf},
            )
        )
    return out


def _read(url: str, name: str) -> list[dict[str, Any]]:
    """A study's trials from a fresh load, comparable: no storage id, NaN as a marker."""
    out = []
    for t in optuna.load_study(storage=url, study_name=name).get_trials():
        row = dict(vars(t))
        row.pop("_trial_id")
        row["intermediate_values"] = {
            k: "nan" if math.isnan(v) else v for k, v in t.intermediate_values.items()
        }
        out.append(row)
    return out


@pytest.mark.parametrize("directions", [1, 2])
def test_bulk_adds_the_trials_add_trial_adds(url, directions):
    modes = ["maximize", "minimize"][:directions]
    api = optuna.create_study(storage=url, study_name="api", directions=modes)
    bulk = optuna.create_study(storage=url, study_name="bulk", directions=modes)
    earlier = create_trial(values=[1.0] * directions, params={}, distributions={})
    api.add_trial(earlier)
    bulk.add_trial(earlier)  # numbering continues after the study's own trials
    trials = _trials(directions=directions)
    for t in trials:
        api.add_trial(t)
    assert optunabulk.supported(bulk)
    assert optunabulk.add_trials(bulk, trials) == list(range(1, 10))

    want, got = _read(url, "api"), _read(url, "bulk")
    assert len(got) == 10
    assert got == want
    # What the comparison covers, checked on its own so an empty record cannot pass.
    assert got[4]["_values"][0] == math.inf  # trial 3: an infinite value, stored as such
    assert got[1]["_params"] == {"radius": 0.01, "steps": 1, "kind": "a"}
    assert got[1]["intermediate_values"] == {1: 0.0, 2: "nan", 3: -math.inf}
    assert got[3]["_params"]["kind"] is None and got[3]["state"] == TrialState.FAIL
    # The study's cached copy in this process sees them too.
    assert len(bulk.get_trials()) == 10


def test_a_param_the_study_holds_otherwise_refuses_the_whole_round(url):
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    study.add_trial(_trials(1)[0])
    other = create_trial(
        value=1.0, params={"steps": 2}, distributions={"steps": CategoricalDistribution([1, 2])}
    )
    good = _trials(2)[1]
    with pytest.raises(ValueError, match="Cannot set different distribution kind"):
        optunabulk.add_trials(study, [good, other])
    assert len(optuna.load_study(storage=url, study_name="s").get_trials()) == 1  # rolled back


def test_an_invalid_trial_is_refused_as_add_trial_refuses_it(url):
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    two = create_trial(values=[1.0, 2.0], params={}, distributions={})
    with pytest.raises(ValueError, match="The added trial has 2 values"):
        optunabulk.add_trials(study, [two])
    running = create_trial(state=TrialState.RUNNING, params={}, distributions={})
    running.datetime_complete = running.datetime_start  # unfinished with an end: invalid
    with pytest.raises(ValueError, match="supposed to be None for an unfinished trial"):
        optunabulk.add_trials(study, [running])
    assert optuna.load_study(storage=url, study_name="s").get_trials() == []


def test_only_optunas_rdb_storage_with_the_known_tables_is_written_in_bulk(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    assert optunabulk.supported(study)
    assert not optunabulk.supported(optuna.create_study())  # in memory
    monkeypatch.setenv("FLATSWEEP_OPTUNA_BULK", "0")
    assert not optunabulk.supported(study)
    monkeypatch.setenv("FLATSWEEP_OPTUNA_BULK", "no")
    with pytest.raises(ValueError, match="FLATSWEEP_OPTUNA_BULK must be 0 or 1, but got 'no'"):
        optunabulk.enabled()
    monkeypatch.delenv("FLATSWEEP_OPTUNA_BULK")
    monkeypatch.setitem(optunabulk.COLUMNS, "trials", optunabulk.COLUMNS["trials"] | {"new"})
    assert not optunabulk.supported(study)


def test_a_rounds_optuna_copies_are_stored_together_linked_to_their_runs(tmp_path, monkeypatch):
    """Through the tracker, as a sweep stores them: 20 trials finished in one round are one
    ``store_many`` (one transaction), each linked to its MLflow run."""
    from mlflow.tracking import MlflowClient

    from sweeps import studies
    from sweeps.tracking import MLflowTracker
    from tests.sweeps.conftest import BASE_TRAIN
    from tests.sweeps.test_sqlbulk import _report, _result, _trial

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t")
    parent = client.create_run(exp).info.run_id
    tracker = MLflowTracker(uri, exp, parent, "t", BASE_TRAIN, max_epochs=1, fresh=True)
    tracker._outbox.interval_s = 30.0  # a round is what the test queues before its drain
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    mirror = studies.StudyMirror(url, "m", ["max"], ["val_acc"])
    tracker.mirror_through(mirror)
    rounds: list[int] = []
    store_many = studies.StudyMirror.store_many

    def counted(self: Any, trials: list) -> None:
        rounds.append(len(trials))
        store_many(self, trials)

    monkeypatch.setattr(studies.StudyMirror, "store_many", counted)
    memory = optuna.create_study(direction="maximize")
    for i in range(20):
        trial = _trial(f"t{i}", 0.01 * (i + 1))
        tracker.on_trial_start(0, [], trial)
        _report(tracker, trial, _result(1, 1.0))
        tracker.on_trial_complete(0, [], trial)
        t = memory.ask({"x": FloatDistribution(0, 1)})
        t.set_user_attr(studies.ATTR_TRIAL, f"t{i}")
        memory.tell(t, 0.5 + i)
        mirror.put(memory.trials[-1])
    assert tracker.drain()
    assert rounds == [20]
    stored = optuna.load_study(study_name="m", storage=url).trials
    assert [t.number for t in stored] == list(range(20))
    assert {t.user_attrs[studies.ATTR_RUN] for t in stored} == set(tracker.run_ids.values())
    assert len(set(tracker.run_ids.values())) == 20


def test_writers_adding_to_one_study_at_once_number_its_trials_once_each(url):
    """Several writer processes (``FLATSWEEP_MLFLOW_PROCESS=N``) copy into one study: each
    trial's number is the count of the trials before it, none given twice."""
    import threading

    optuna.create_study(storage=url, study_name="s", direction="maximize")
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        study = optuna.load_study(storage=optuna.storages.RDBStorage(url), study_name="s")
        try:
            for _ in range(5):
                optunabulk.add_trials(study, _trials(9))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    stored = optuna.load_study(storage=url, study_name="s").get_trials()
    assert sorted(t.number for t in stored) == list(range(135))
    # Numbers follow the storage's order of the trials, as Optuna numbers them.
    assert [t.number for t in sorted(stored, key=lambda t: t._trial_id)] == list(range(135))
