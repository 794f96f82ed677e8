"""Bulk writes (``sweeps.sqlbulk``) record exactly what MLflow's API records.

The same trials are recorded twice through ``MLflowTracker``'s hooks, on two fresh stores:
once through MLflow's API (``bulk=False``) and once in bulk rounds, with one clock, so that
every run, tag, param, latest metric and metric history can be compared through
``MlflowClient``. The trials cover what the writer meets in a sweep: a short trial recorded in
one round, a long one over several rounds (its latest metrics updated), a failed one, one
whose epoch is replayed as diverged, and one that fails and is retried (its run reopened).
SQLite always; PostgreSQL on the machine's server (127.0.0.1:5432) where one answers.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import sweeps.tracking as tracking
from sweeps import sqlbulk
from sweeps.sqlbulk import NewRun, RunWrite
from sweeps.tracking import TAG_PARENT, TAG_TRIAL, MLflowTracker
from tests._ports import free_port
from tests.sweeps._procs import BIN, SERVER_ENV, kill_group, wait_http
from tests.sweeps.conftest import BASE_TRAIN


def _pg_up() -> bool:
    try:
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-tAc", "select 1"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() == "1"


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", sql],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _server(tmp: Path, app: str | None) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 over a SQLite file, with ``--app-name app``."""
    port = free_port()
    with open(tmp / "server.log", "ab") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                f"sqlite:///{tmp / 'server.db'}",
                "--default-artifact-root",
                str(tmp / "art"),
                "--workers",
                "1",
                *(["--app-name", app] if app else []),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **SERVER_ENV},
            start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120)
        yield f"http://127.0.0.1:{port}"
    finally:
        kill_group(proc, signal.SIGTERM)


@pytest.fixture(scope="module")
def bulk_server(tmp_path_factory) -> Iterator[str]:
    """A server with flatsweep's app (``sweeps.mlflow_app``): bulk rounds over HTTP."""
    yield from _server(tmp_path_factory.mktemp("bulk-server"), "flatsweep")


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory) -> Iterator[str]:
    """MLflow's own server, without flatsweep's app."""
    yield from _server(tmp_path_factory.mktemp("plain-server"), None)


@pytest.fixture(params=["sqlite", "postgresql", "http"])
def make_store(request, tmp_path: Path) -> Iterator[Any]:
    """Makes fresh stores of one kind: ``make_store(name)`` -> (uri, client, exp, parent).
    ``http``: a new experiment on one ``mlflow server --app-name flatsweep`` (SQLite)."""
    if request.param == "postgresql" and not _pg_up():
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432")
    databases: list[str] = []

    def make(name: str) -> tuple[str, MlflowClient, str, str]:
        if request.param == "sqlite":
            uri = f"sqlite:///{tmp_path / name}.db"
        elif request.param == "http":
            uri = request.getfixturevalue("bulk_server")
        else:
            db = f"flatsweep_bulk_{uuid.uuid4().hex[:12]}"
            _psql(f"create database {db}")
            databases.append(db)
            uri = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"
        client = MlflowClient(uri)
        exp = client.create_experiment(
            f"t-{uuid.uuid4().hex[:8]}", artifact_location=str(tmp_path / name / "art")
        )
        parent = client.create_run(exp, tags={"flatsweep.role": "parent"}).info.run_id
        return uri, client, exp, parent

    yield make
    for db in databases:
        # MLflow's engines keep connections open: drop them with the database.
        _psql(f"drop database if exists {db} with (force)")


def _trial(tid: str, radius: float) -> SimpleNamespace:
    return SimpleNamespace(
        trial_id=tid, config={"perturbation.radius": radius}, status="RUNNING", last_result={}
    )


def _result(epoch: int, val_loss: float, **extra: Any) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "training_iteration": epoch,
        "train_loss": 2.0 / epoch,
        "val_loss": val_loss,
        "val_acc": 0.5 + epoch / 100,
        "epoch_seconds": 0.25,
        "device_used": "cpu",
        **extra,
    }


def _report(tracker: MLflowTracker, trial: Any, result: dict[str, Any]) -> None:
    tracker.on_trial_result(0, [], trial, result)
    trial.last_result = result


def _two_epoch_trials(tracker: MLflowTracker, n: int, radius_step: float) -> None:
    """``n`` trials ``t0``.. of two epochs each, every one started, reported and completed."""
    for i in range(n):
        trial = _trial(f"t{i}", radius_step * (i + 1))
        tracker.on_trial_start(0, [], trial)
        for epoch in (1, 2):
            _report(tracker, trial, _result(epoch, 1.0 / epoch))
        tracker.on_trial_complete(0, [], trial)


def _record(store: tuple, monkeypatch: pytest.MonkeyPatch, bulk: bool) -> MLflowTracker:
    """The same trials, hook by hook, with a clock that ticks 1 ms per reading."""
    uri, _, exp, parent = store
    ticks = itertools.count()
    clock = SimpleNamespace(
        time=lambda: 1.8e9 + next(ticks) / 1000, monotonic=time.monotonic, sleep=time.sleep
    )
    monkeypatch.setattr(tracking, "time", clock)
    tracker = MLflowTracker(uri, exp, parent, "t", BASE_TRAIN, max_epochs=3, fresh=True, bulk=bulk)
    tracker._outbox.interval_s = 30.0  # a round is what a test queues before its drain
    short, long, failed, diverged, retried = (
        _trial(t, r)
        for t, r in (("short", 0.1), ("long", 0.2), ("failed", 0.3), ("div", 0.4), ("retry", 0.5))
    )
    for trial in (short, long, failed, diverged, retried):
        tracker.on_trial_start(0, [], trial)
    for epoch in (1, 2):
        _report(tracker, short, _result(epoch, 1.0 / epoch))
    tracker.on_trial_complete(0, [], short)
    _report(tracker, long, _result(1, 0.9))
    _report(tracker, failed, _result(1, 0.8))
    tracker.on_trial_error(0, [], failed)
    _report(tracker, diverged, _result(1, 0.7))
    _report(tracker, retried, _result(1, 0.6))
    tracker.on_trial_error(0, [], retried)
    assert tracker.drain()
    # Later rounds: runs that exist. The long trial's val_loss rises (its latest value is the
    # last step's, not the smallest), the diverged epoch 1 is reported again as diverged.
    _report(tracker, long, _result(2, 0.95))
    _report(tracker, diverged, _result(1, 9.0, diverged=True))
    tracker.on_trial_complete(0, [], diverged)
    tracker.on_trial_start(0, [], retried)  # Tune retries the failed trial: reopened
    assert tracker.drain()
    _report(tracker, long, _result(3, 0.97, test_acc=0.61))
    tracker.on_trial_complete(0, [], long)
    _report(tracker, retried, _result(2, 0.5))
    tracker.on_trial_complete(0, [], retried)
    assert tracker.drain()
    return tracker


def _snapshot(store: tuple) -> dict[str, Any]:
    """Every child run as MLflow shows it, ids and paths replaced by placeholders."""
    _, client, exp, parent = store
    runs = client.search_runs([exp], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'")
    out = {}
    for run in runs:
        info, data = run.info, run.data
        tags = {**data.tags, TAG_PARENT: "<parent>"}
        histories = {
            key: sorted(
                (m.step, m.timestamp, m.value) for m in client.get_metric_history(info.run_id, key)
            )
            for key in data.metrics
        }
        out[data.tags[TAG_TRIAL]] = {
            "status": info.status,
            "start_time": info.start_time,
            "end_time": info.end_time,
            "lifecycle_stage": info.lifecycle_stage,
            "user_id": info.user_id,
            "run_name": info.run_name,
            "artifact_uri": info.artifact_uri.replace(info.run_id, "<id>").split("/art/")[-1],
            "tags": tags,
            "params": data.params,
            "metrics": data.metrics,
            "histories": histories,
            "inputs": run.inputs.dataset_inputs,
        }
    return out


def test_bulk_rounds_record_what_mlflows_api_records(make_store, monkeypatch):
    api_store, bulk_store = make_store("api"), make_store("bulk")
    _record(api_store, monkeypatch, bulk=False)
    bulk = _record(bulk_store, monkeypatch, bulk=True)
    assert bulk._bulks  # a bulk writer was made: the bulk path was really taken

    api, got = _snapshot(api_store), _snapshot(bulk_store)
    assert sorted(got) == ["div", "failed", "long", "retry", "short"]
    for tid in api:
        assert got[tid] == api[tid], tid
    # What the comparison covers, checked on its own so an empty record cannot pass.
    assert got["long"]["metrics"]["val_loss"] == 0.97
    assert [s for s, _, _ in got["long"]["histories"]["val_loss"]] == [1, 2, 3]
    assert got["div"]["metrics"]["val_loss"] == 9.0  # the replayed epoch is the latest
    assert got["retry"]["status"] == "FINISHED" and got["failed"]["status"] == "FAILED"
    assert got["short"]["params"]["perturbation.radius"] == "0.1"
    assert got["short"]["tags"]["flatsweep.device"] == "cpu"


def test_a_fresh_stages_short_trials_land_in_one_transaction(make_store, monkeypatch):
    store = make_store("one")
    uri, client, exp, parent = store
    tracker = MLflowTracker(uri, exp, parent, "t", BASE_TRAIN, max_epochs=2, fresh=True)
    tracker._outbox.interval_s = 30.0
    rounds: list[int] = []
    deliver = tracker._deliver_bulk

    def counted(writer: int, batches: list) -> None:
        rounds.append(len(batches))
        deliver(writer, batches)

    monkeypatch.setattr(tracker, "_deliver_bulk", counted)
    tracker._outbox._bulk = (tracker._bulkable, counted)
    _two_epoch_trials(tracker, 40, 0.01)
    assert tracker.drain()
    # 40 runs created, logged and closed by one transaction per writer (a server has 4).
    assert sorted(rounds) == [40 // tracker.writers] * tracker.writers
    runs = client.search_runs([exp], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'")
    assert len(runs) == 40 and {r.info.status for r in runs} == {"FINISHED"}
    assert {len(client.get_metric_history(r.info.run_id, "val_acc")) for r in runs} == {2}


def _bulk(store: tuple) -> sqlbulk.SqlBulk:
    assert sqlbulk.supported(store[0])
    return sqlbulk.for_client(store[1])


def _new(store: tuple, **kw: Any) -> RunWrite:
    _, _, exp, _ = store
    return RunWrite(sqlbulk.new_run_id(), create=NewRun(exp, "r", 1, {"k": "v"}), **kw)


def test_a_failed_round_writes_nothing(make_store):
    store = make_store("atomic")
    _, client, exp, parent = store
    bulk = _bulk(store)
    client.delete_run(parent)  # a run MLflow no longer takes writes for
    first = _new(store, metrics=[Metric("m", 1.0, 1, 1)])
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        bulk.write([first, RunWrite(parent, metrics=[Metric("m", 1.0, 1, 1)])])
    # The first run was rolled back with the round: the deleted parent is all there is.
    assert client.search_runs([exp]) == []
    assert [r.info.run_id for r in client.search_runs([exp], run_view_type=3)] == [parent]


def test_params_follow_mlflows_rule_for_a_value_logged_again(make_store):
    store = make_store("params")
    _, client, _, _ = store
    bulk = _bulk(store)
    run = _new(store, params=[Param("a", "1")])
    bulk.write([run])
    bulk.write([RunWrite(run.run_id, params=[Param("a", "1"), Param("b", "2")])])  # same: fine
    assert client.get_run(run.run_id).data.params == {"a": "1", "b": "2"}
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        bulk.write([RunWrite(run.run_id, params=[Param("a", "3")])])
    assert client.get_run(run.run_id).data.params == {"a": "1", "b": "2"}


def test_a_metric_logged_twice_is_kept_once_and_tags_take_the_last_value(make_store):
    store = make_store("twice")
    _, client, _, _ = store
    bulk = _bulk(store)
    m = Metric("m", 0.5, 10, 1)
    run = _new(store, metrics=[m, m], tags=[RunTag("x", "1")])
    bulk.write([run])
    bulk.write([RunWrite(run.run_id, metrics=[m], tags=[RunTag("x", "2")], end=("KILLED", 20))])
    got = client.get_run(run.run_id)
    assert [(h.step, h.value) for h in client.get_metric_history(run.run_id, "m")] == [(1, 0.5)]
    assert got.data.tags["x"] == "2" and got.data.tags["mlflow.runName"] == "r"
    assert (got.info.status, got.info.end_time) == ("KILLED", 20)


def test_invalid_data_is_refused_as_mlflow_refuses_it(make_store):
    store = make_store("invalid")
    bulk = _bulk(store)
    with pytest.raises(MlflowException, match='Invalid value "x" for parameter \'metrics\\[0\\]'):
        bulk.write([_new(store, metrics=[Metric("m", "x", 1, 1)])])  # type: ignore[arg-type]
    assert [r.info.run_id for r in store[1].search_runs([store[2]])] == [store[3]]


def test_only_mlflows_sql_store_with_the_known_tables_is_written_in_bulk(
    tmp_path, monkeypatch, caplog
):
    uri = f"sqlite:///{tmp_path / 'k.db'}"
    assert sqlbulk.supported(uri)
    # Decided from the URI, without opening the database: nothing listens on port 9.
    assert sqlbulk.supported("postgresql+psycopg2://postgres@127.0.0.1:9/flatsweep")
    assert not (tmp_path / "k.db").exists()
    assert not sqlbulk.supported(str(tmp_path / "mlruns"))  # a file store
    assert not sqlbulk.supported(f"file://{tmp_path / 'mlruns'}")
    # A server: tried, and asked at the first write whether it has flatsweep's app.
    assert sqlbulk.supported("http://127.0.0.1:9")
    monkeypatch.setenv("FLATSWEEP_MLFLOW_BULK", "0")
    assert not sqlbulk.supported(uri)
    monkeypatch.setenv("FLATSWEEP_MLFLOW_BULK", "yes")
    with pytest.raises(ValueError, match="FLATSWEEP_MLFLOW_BULK must be 0 or 1, but got 'yes'"):
        sqlbulk.enabled()
    monkeypatch.delenv("FLATSWEEP_MLFLOW_BULK")
    # An MLflow whose run tables changed: MLflow's API, and a warning that says so.
    monkeypatch.setitem(sqlbulk.COLUMNS, "runs", sqlbulk.COLUMNS["runs"] | {"new_column"})
    assert not sqlbulk.supported(uri)
    assert "writing through MLflow's API" in caplog.text and "new_column" in caplog.text
    tracker = MLflowTracker(uri, "1", "parent", "t", BASE_TRAIN, max_epochs=2, fresh=True)
    assert tracker._outbox._bulk is None  # the tracker writes through the API


def test_a_bug_in_a_bulk_round_stops_the_writer_and_reports_its_writes(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'bug.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t")
    parent = client.create_run(exp).info.run_id
    tracker = MLflowTracker(uri, exp, parent, "t", BASE_TRAIN, max_epochs=2, fresh=True)

    def bug(self: Any, writes: list) -> None:
        raise KeyError("a bug")  # not an outage: retrying cannot fix it

    monkeypatch.setattr(sqlbulk.SqlBulk, "write", bug)
    trial = _trial("a", 0.1)
    tracker.on_trial_start(0, [], trial)
    _report(tracker, trial, _result(1, 1.0))
    assert not tracker.drain()  # outstanding, not lost silently
    assert tracker._outbox.broken and tracker.outstanding == 2
    assert json.loads(json.dumps(tracker.run_ids)) == {}


def test_a_round_sent_again_is_written_once(make_store):
    """A round whose answer was lost (an HTTP timeout, a connection dropped at commit) is sent
    again: the second copy finds its runs created and changes nothing."""
    store = make_store("again")
    _, client, _, _ = store
    bulk = _bulk(store)
    run = _new(
        store,
        params=[Param("a", "1")],
        metrics=[Metric("m", 0.5, 10, 1), Metric("m", 0.25, 11, 2)],
        tags=[RunTag("x", "1")],
        end=("FINISHED", 20),
    )
    bulk.write([run])
    before = client.get_run(run.run_id)
    bulk.write([run])
    after = client.get_run(run.run_id)
    assert after.to_dictionary() == before.to_dictionary()
    history = client.get_metric_history(run.run_id, "m")
    assert [(h.step, h.value) for h in history] == [(1, 0.5), (2, 0.25)]
    assert (after.info.status, after.data.params, after.data.tags["x"]) == (
        "FINISHED",
        {"a": "1"},
        "1",
    )


def test_a_round_whose_answer_was_lost_is_retried_without_a_second_run(make_store, monkeypatch):
    """The writer retries a round whose answer was lost after it committed (an HTTP timeout,
    a connection dropped at commit) with the same run ids: each trial keeps one run."""
    store = make_store("lost")
    uri, client, exp, parent = store
    lost: list[int] = []

    def answer_lost(real: Any) -> Any:
        def write(self: Any, writes: list[RunWrite]) -> None:
            real(self, writes)  # committed, on the server for HTTP...
            if not lost:
                lost.append(len(writes))
                raise OSError("read timed out")  # ...but the answer never came back

        return write

    # The one fault a test cannot make real on demand: the timing of a lost answer.
    for cls in (sqlbulk.SqlBulk, sqlbulk.HttpBulk):
        monkeypatch.setattr(cls, "write", answer_lost(cls.write))
    tracker = MLflowTracker(uri, exp, parent, "t", BASE_TRAIN, max_epochs=2, fresh=True)
    tracker._outbox.interval_s = 30.0  # a round is what the test queues before its drain
    _two_epoch_trials(tracker, 3, 0.1)
    assert tracker.drain()
    assert lost and tracker._bulks  # a bulk round really was sent again
    runs = client.search_runs([exp], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'")
    assert sorted(r.data.tags[TAG_TRIAL] for r in runs) == ["t0", "t1", "t2"]
    assert tracker.run_ids == {r.data.tags[TAG_TRIAL]: r.info.run_id for r in runs}
    for run in runs:
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == [1, 2]


def test_a_server_without_flatsweeps_app_is_written_through_mlflows_api(
    plain_server, tmp_path, monkeypatch
):
    """MLflow's own server has no bulk route: the tracker asks once, then writes as with
    ``bulk=False``, and the records are the same."""
    api_client = MlflowClient(f"sqlite:///{tmp_path / 'api.db'}")
    api_exp = api_client.create_experiment("t")
    api_parent = api_client.create_run(api_exp, tags={"flatsweep.role": "parent"})
    api_store = (api_client.tracking_uri, api_client, api_exp, api_parent.info.run_id)
    client = MlflowClient(plain_server)
    assert not sqlbulk.for_client(client).available()
    exp = client.create_experiment("plain", artifact_location="/tmp/unused-plain")
    parent = client.create_run(exp, tags={"flatsweep.role": "parent"}).info.run_id
    plain = (plain_server, client, exp, parent)
    _record(api_store, monkeypatch, bulk=False)
    tracker = _record(plain, monkeypatch, bulk=True)
    assert tracker._bulk_ok and tracker._server_bulks is False and not tracker._bulks
    api, got = _snapshot(api_store), _snapshot(plain)
    assert sorted(got) == ["div", "failed", "long", "retry", "short"]
    for tid in api:
        del api[tid]["artifact_uri"], got[tid]["artifact_uri"]
        assert got[tid] == api[tid], tid


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "the body is not JSON: Expecting value"),
        (b'{"runs": 3}', 'the body must be an object with a list "runs"'),
        (b'{"runs": [{"run_id": "../../etc"}]}', "runs[0].run_id must be 32 letters and digits"),
        (
            b'{"runs": [{"run_id": "' + b"a" * 32 + b'", "metrics": [["m", 1]]}]}',
            "runs[0].metrics must be a list of [str key, number, int timestamp, int step]",
        ),
        (
            b'{"runs": [{"run_id": "' + b"a" * 32 + b'", "metrics": [["m", 1, 1, 1.5]]}]}',
            "runs[0].metrics must be a list of [str key, number, int timestamp, int step]",
        ),
        (
            b'{"runs": [{"run_id": "' + b"a" * 32 + b'", "params": [["k", 1]]}]}',
            "runs[0].params must be a list of [str key, str value]",
        ),
        (
            b'{"runs": [{"run_id": "' + b"a" * 32 + b'", "create": {"experiment_id": "x", '
            b'"name": "n", "start_time": 1, "tags": {}}}]}',
            "runs[0].create must be null or {experiment_id: digits,",
        ),
        (
            b'{"runs": [{"run_id": "' + b"a" * 32 + b'"}, {"run_id": "' + b"a" * 32 + b'"}]}',
            "runs[1].run_id must be unique in a round",
        ),
        (
            b'{"runs": [{"run_id": "' + b"a" * 32 + b'", "end": ["DONE", 1]}]}',
            "runs[0].end must be null or [an MLflow run status, an int or null]",
        ),
        (
            b'{"runs": [' + b",".join([b"{}"] * (sqlbulk.MAX_RUNS + 1)) + b"]}",
            f"runs must be at most {sqlbulk.MAX_RUNS} runs, not {sqlbulk.MAX_RUNS + 1}",
        ),
    ],
)
def test_the_bulk_route_refuses_a_malformed_round_with_one_line(bulk_server, body, message):
    import requests

    answer = requests.post(bulk_server + sqlbulk.ROUTE, data=body, timeout=30)
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert message in error["message"] and "\n" not in error["message"]
    assert requests.get(bulk_server + sqlbulk.ROUTE, timeout=30).json() == {
        "supported": True,
        "reason": "",
    }


def test_the_bulk_route_says_no_for_a_store_it_cannot_write(tmp_path, monkeypatch):
    """Asked in-process through Flask's test client, on a server whose store is MLflow's file
    store: ``supported`` false with the reason, and a POST refused without writing."""
    from flask import Flask
    from mlflow.server import BACKEND_STORE_URI_ENV_VAR, handlers

    from sweeps import mlflow_app

    monkeypatch.setenv(BACKEND_STORE_URI_ENV_VAR, str(tmp_path / "mlruns"))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setattr(handlers, "_tracking_store", None)
    monkeypatch.delenv("_MLFLOW_SGI_NAME", raising=False)
    app = mlflow_app.create_app(Flask("t"))
    web = app.test_client()
    answer = web.get(sqlbulk.ROUTE).get_json()
    assert answer["supported"] is False and "FileStore" in answer["reason"]
    posted = web.post(sqlbulk.ROUTE, json={"runs": []})
    assert posted.status_code == 501 and posted.get_json()["error_code"] == "FEATURE_DISABLED"
