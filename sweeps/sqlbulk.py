"""Many trials' MLflow records in one database transaction, for an SQL tracking store.

MLflow's API writes one run at a time: a short trial is three calls (``create_run``,
``log_batch``, ``set_terminated``), and MLflow's SQLAlchemy store turns them into about twelve
ORM sessions and thirty statements, 18-45 ms of pure-Python CPU per trial on the 2-core
machines of ``benchmarks/RESULTS.md``. That capped one writer at 1100-2600 trials per minute
(issue 10 asks for 3000) and, during a sweep, took that CPU from the trials training on the
same cores. Issue 10 names the remedy: batch MLflow writes across trials. MLflow has no
cross-run call, so for a tracking URI that is a database MLflow's SQL store serves
(``sqlite:///``, ``postgresql://``) this module writes one delivery round's runs, params,
metrics, latest metrics, tags and end states with a few multi-row statements in one
transaction, through MLflow's own table definitions (``mlflow.store.tracking.dbmodels``) and
the engine of the client's own store (its schema checked or created by MLflow).

The rows are the ones MLflow's store writes for the same calls (``tests/sweeps/
test_sqlbulk.py`` records the same trials both ways and compares every run, tag, param and
metric history through ``MlflowClient``): ``create_run``'s run row (``user_id`` "unknown",
``source_type`` "UNKNOWN", the ``mlflow.runName`` tag), ``log_batch``'s validation
(``_validate_batch_log_data``: the same errors and truncation), its rules for a param logged
again (same value: nothing; another: an error), for a metric logged twice (ignored) and for
``latest_metrics`` (the largest ``(step, timestamp, value)`` wins), and ``update_run_info``'s
status and end time. A run or experiment that is not active is refused as MLflow refuses it.

It is used only where it is known to match: the store is MLflow's ``SqlAlchemyStore`` on
SQLite or PostgreSQL, and MLflow's tables have exactly the columns this module fills
(``COLUMNS``); after an MLflow upgrade that changes them, :func:`supported` says no and the
tracker writes through MLflow's API as before. ``FLATSWEEP_MLFLOW_BULK=0`` turns it
off. Over HTTP, a server started with ``mlflow server --app-name flatsweep``
(:mod:`sweeps.mlflow_app`) takes the same rounds (:class:`HttpBulk`) and writes them with this
module on its own store; any other server is written through MLflow's REST API.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

#: The columns of MLflow's tables that this module writes, as MLflow 3.17 defines them. Any
#: other set (a column added or renamed by an upgrade) turns bulk writing off.
COLUMNS = {
    "runs": {
        "run_uuid",
        "name",
        "source_type",
        "source_name",
        "entry_point_name",
        "user_id",
        "status",
        "start_time",
        "end_time",
        "deleted_time",
        "source_version",
        "lifecycle_stage",
        "artifact_uri",
        "experiment_id",
    },
    "tags": {"key", "value", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
    "metrics": {"key", "value", "timestamp", "step", "is_nan", "run_uuid"},
    "latest_metrics": {"key", "value", "timestamp", "step", "is_nan", "run_uuid"},
}
DIALECTS = ("sqlite", "postgresql")  # the databases the equivalence tests run on
#: Rows per INSERT statement: under SQLite's 32766 bound parameters at 6 columns a row.
_ROWS_PER_INSERT = 2000


def enabled() -> bool:
    """``FLATSWEEP_MLFLOW_BULK``: ``1`` (the default) or ``0``."""
    raw = os.environ.get("FLATSWEEP_MLFLOW_BULK", "1").strip()
    if raw not in ("0", "1"):
        raise ValueError(f"FLATSWEEP_MLFLOW_BULK must be 0 or 1, but got {raw!r}")
    return raw == "1"


@dataclass
class RunWrite:
    """One run's part of a round: created (``create``) or an existing one, then its params,
    metrics and tags, then its end (``end``: status and end time in ms)."""

    run_id: str
    create: NewRun | None = None
    params: list[Param] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    tags: list[RunTag] = field(default_factory=list)
    end: tuple[str, int | None] | None = None


@dataclass
class NewRun:
    """What ``MlflowClient.create_run`` is given."""

    experiment_id: str
    name: str
    start_time: int
    tags: dict[str, str]


def new_run_id() -> str:
    """A run id as MLflow's store makes one."""
    return uuid.uuid4().hex


class SqlBulk:
    """Writes rounds of runs (:meth:`write`) into the database of an MLflow SQL store."""

    def __init__(self, store: Any) -> None:
        from mlflow.store.tracking.dbmodels.models import (
            SqlExperiment,
            SqlLatestMetric,
            SqlMetric,
            SqlParam,
            SqlRun,
            SqlTag,
        )

        self.store = store
        self.engine = store.engine
        self.runs = SqlRun.__table__
        self.tags = SqlTag.__table__
        self.params = SqlParam.__table__
        self.metrics = SqlMetric.__table__
        self.latest = SqlLatestMetric.__table__
        self.experiments = SqlExperiment.__table__

    def write(self, writes: Sequence[RunWrite]) -> None:
        """Every part of ``writes`` in one transaction: all of it lands or none of it.

        Raises ``MlflowException`` where MLflow's API would (invalid data, an inactive run or
        experiment, a param logged again with another value), SQLAlchemy's errors for an
        unreachable database (the caller retries the whole round)."""
        from mlflow.utils.validation import _validate_batch_log_data

        checked = []
        for w in writes:
            metrics, params, tags = _validate_batch_log_data(w.metrics, w.params, w.tags)
            checked.append((w, metrics, params, tags))
        with self.engine.begin() as conn:
            fresh = self._unseen(conn, [w for w in writes if w.create is not None])
            created = self._create(conn, fresh)
            self._check_active(conn, [w.run_id for w in writes if w.run_id not in created])
            self._log_params(conn, [(w.run_id, p) for w, _, params, _ in checked for p in params])
            self._log_metrics(conn, checked, created)
            self._set_tags(conn, [(w.run_id, t) for w, _, _, tags in checked for t in tags])
            ends = [
                {"id": w.run_id, "status": w.end[0], "end_time": w.end[1]}
                for w in writes
                if w.end is not None
            ]
            if ends:
                from sqlalchemy import bindparam

                conn.execute(
                    self.runs.update()
                    .where(self.runs.c.run_uuid == bindparam("id"))
                    .values(status=bindparam("status"), end_time=bindparam("end_time")),
                    ends,
                )

    def _unseen(self, conn: Any, writes: list[RunWrite]) -> list[RunWrite]:
        """The runs to create that do not exist yet. A round is sent again when its answer was
        lost (a timeout over HTTP, a connection dropped at commit): its runs were created by
        the first copy, and the rest of the round (params, metrics, tags, end) is written as to
        runs that exist, which MLflow's rules make a no-op for what is already there."""
        if not writes:
            return []
        from sqlalchemy import select

        r = self.runs
        ids = [w.run_id for w in writes]
        seen = {i for (i,) in conn.execute(select(r.c.run_uuid).where(r.c.run_uuid.in_(ids)))}
        return [w for w in writes if w.run_id not in seen]

    def _create(self, conn: Any, writes: list[RunWrite]) -> set[str]:
        """``create_run`` for each: the run row and its tags, ``mlflow.runName`` included."""
        if not writes:
            return set()
        from mlflow.entities import LifecycleStage, RunStatus, SourceType
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
        from mlflow.utils.uri import append_to_uri_path

        # Each experiment is checked once per round (MLflow checks it per run created).
        experiments = {w.create.experiment_id for w in writes if w.create is not None}
        locations = {e: self._artifact_location(conn, e) for e in experiments}
        rows, tag_rows = [], []
        for w in writes:
            new = w.create
            assert new is not None
            location = locations[new.experiment_id]
            name = new.tags.get(MLFLOW_RUN_NAME) or new.name
            if new.name and name != new.name:
                raise MlflowException(
                    "Both 'run_name' argument and 'mlflow.runName' tag are specified, but "
                    f"with different values (run_name='{new.name}', "
                    f"mlflow.runName='{name}').",
                    INVALID_PARAMETER_VALUE,
                )
            rows.append(
                {
                    "run_uuid": w.run_id,
                    "name": name,
                    "source_type": SourceType.to_string(SourceType.UNKNOWN),
                    "source_name": "",
                    "entry_point_name": "",
                    "user_id": new.tags.get(MLFLOW_USER, "unknown"),
                    "status": RunStatus.to_string(RunStatus.RUNNING),
                    "start_time": new.start_time,
                    "end_time": None,
                    "deleted_time": None,
                    "source_version": "",
                    "lifecycle_stage": LifecycleStage.ACTIVE,
                    "artifact_uri": append_to_uri_path(location, w.run_id, "artifacts"),
                    "experiment_id": int(new.experiment_id),
                }
            )
            tags = {**new.tags, MLFLOW_RUN_NAME: name}
            tag_rows += [{"run_uuid": w.run_id, "key": k, "value": v} for k, v in tags.items()]
        conn.execute(self.runs.insert(), rows)
        for part in _chunks(tag_rows):
            conn.execute(self.tags.insert(), part)
        return {w.run_id for w in writes}

    def _artifact_location(self, conn: Any, experiment_id: str) -> str:
        """The experiment's artifact location, checking it is active (as ``create_run``)."""
        from sqlalchemy import select

        e = self.experiments
        row = conn.execute(
            select(e.c.lifecycle_stage, e.c.artifact_location).where(
                e.c.experiment_id == int(experiment_id)
            )
        ).one_or_none()
        if row is None:
            raise MlflowException(
                f"No Experiment with id={experiment_id} exists", INVALID_PARAMETER_VALUE
            )
        if row.lifecycle_stage != "active":
            raise MlflowException(
                f"The experiment {experiment_id} must be in the 'active' state. "
                f"Current state is {row.lifecycle_stage}.",
                INVALID_PARAMETER_VALUE,
            )
        return row.artifact_location

    def _check_active(self, conn: Any, run_ids: list[str]) -> None:
        """Each run exists and is active, as MLflow's ``log_batch`` requires."""
        if not run_ids:
            return
        from sqlalchemy import select

        r = self.runs
        query = select(r.c.run_uuid, r.c.lifecycle_stage).where(r.c.run_uuid.in_(run_ids))
        stages = {run_id: stage for run_id, stage in conn.execute(query)}
        for run_id in run_ids:
            if run_id not in stages:
                raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
            if stages[run_id] != "active":
                raise MlflowException(
                    f"The run {run_id} must be in the 'active' state. "
                    f"Current state is {stages[run_id]}.",
                    INVALID_PARAMETER_VALUE,
                )

    def _existing(self, conn: Any, table: Any, run_ids: set[str], *cols: str) -> list[Any]:
        from sqlalchemy import select

        if not run_ids:
            return []
        columns = [table.c.run_uuid, table.c.key, *(table.c[c] for c in cols)]
        return list(conn.execute(select(*columns).where(table.c.run_uuid.in_(run_ids))))

    def _log_params(self, conn: Any, params: list[tuple[str, Param]]) -> None:
        """New params inserted; one logged before with the same value skipped, with another
        value refused (MLflow's rule)."""
        if not params:
            return
        old = {
            (r.run_uuid, r.key): r.value
            for r in self._existing(conn, self.params, {i for i, _ in params}, "value")
        }
        rows, clash = [], []
        for run_id, p in params:
            if (run_id, p.key) in old:
                if old[run_id, p.key] != p.value:
                    clash.append(
                        {"key": p.key, "old_value": old[run_id, p.key], "new_value": p.value}
                    )
                continue
            old[run_id, p.key] = p.value
            rows.append({"run_uuid": run_id, "key": p.key, "value": p.value})
        if clash:
            raise MlflowException(
                f"Changing param values is not allowed. Params were already logged='{clash}'.",
                INVALID_PARAMETER_VALUE,
            )
        for part in _chunks(rows):
            conn.execute(self.params.insert(), part)

    def _log_metrics(self, conn: Any, checked: list[tuple], created: set[str]) -> None:
        """Every metric row (one logged before is ignored), and each key's latest value.

        A row is a metric's whole primary key (run, key, timestamp, step, value, NaN flag),
        as MLflow stores it. Rows of runs that existed before the round are looked up, at
        their steps only, and those already stored dropped: a plain multi-row INSERT then
        cannot conflict. (``ON CONFLICT DO NOTHING`` would do it in SQL, but SQLAlchemy sends
        it through psycopg2 one row per round trip: 1.9 s for 6800 rows here, 0.24 s plain.)
        """
        rows: dict[tuple, dict[str, Any]] = {}
        for w, metrics, _, _ in checked:
            for m in metrics:
                is_nan, value = self.store.sanitize_metric_value(m.value)
                row = {
                    "run_uuid": w.run_id,
                    "key": m.key,
                    "value": value,
                    "timestamp": m.timestamp,
                    "step": m.step,
                    "is_nan": is_nan,
                }
                rows.setdefault(_identity(row), row)
        if not rows:
            return
        # A run created in this round has no metrics yet: look up only the others'.
        known = {row["run_uuid"] for row in rows.values()} - created
        if known:
            from sqlalchemy import select

            m = self.metrics
            steps = {row["step"] for row in rows.values() if row["run_uuid"] in known}
            query = select(m.c.run_uuid, m.c.key, m.c.value, m.c.timestamp, m.c.step, m.c.is_nan)
            query = query.where(m.c.run_uuid.in_(known), m.c.step.in_(steps))
            for old in conn.execute(query):
                rows.pop(_identity(old._asdict()), None)
        for part in _chunks(list(rows.values())):
            conn.execute(self.metrics.insert(), part)
        latest = {
            (r.run_uuid, r.key): r
            for r in self._existing(conn, self.latest, known, "value", "timestamp", "step")
        }
        best: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows.values():
            k = (row["run_uuid"], row["key"])
            if k not in best or _newer(row, best[k]):
                best[k] = row
        fresh = [row for k, row in best.items() if k not in latest]
        moved = [
            {**row, "id": row["run_uuid"], "k": row["key"]}
            for k, row in best.items()
            if k in latest and _newer(row, latest[k]._asdict())
        ]
        for part in _chunks(fresh):
            conn.execute(self.latest.insert(), part)
        if moved:
            from sqlalchemy import bindparam

            lm = self.latest
            conn.execute(
                lm.update()
                .where(lm.c.run_uuid == bindparam("id"), lm.c.key == bindparam("k"))
                .values(
                    value=bindparam("value"),
                    timestamp=bindparam("timestamp"),
                    step=bindparam("step"),
                    is_nan=bindparam("is_nan"),
                ),
                moved,
            )

    def _set_tags(self, conn: Any, tags: list[tuple[str, RunTag]]) -> None:
        """Tags set: a new key inserted, an existing one overwritten (the last value wins),
        as MLflow's ``_set_tags`` does."""
        if not tags:
            return
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        if any(t.key == MLFLOW_RUN_NAME for _, t in tags):
            # MLflow renames the run with it; nothing of ours sets it after creation.
            raise ValueError("bulk writes cannot rename a run (mlflow.runName)")
        from sqlalchemy import bindparam, select

        last = {(run_id, t.key): t.value for run_id, t in tags}
        t = self.tags
        query = select(t.c.run_uuid, t.c.key).where(
            t.c.run_uuid.in_({r for r, _ in last}), t.c.key.in_({k for _, k in last})
        )
        old = {(r, k) for r, k in conn.execute(query)}
        rows = [{"run_uuid": r, "key": k, "value": v} for (r, k), v in last.items()]
        for part in _chunks([row for row in rows if (row["run_uuid"], row["key"]) not in old]):
            conn.execute(t.insert(), part)
        moved = [
            {"id": row["run_uuid"], "k": row["key"], "value": row["value"]}
            for row in rows
            if (row["run_uuid"], row["key"]) in old
        ]
        if moved:
            conn.execute(
                t.update()
                .where(t.c.run_uuid == bindparam("id"), t.c.key == bindparam("k"))
                .values(value=bindparam("value")),
                moved,
            )


# -- over HTTP: an mlflow server with flatsweep's app (sweeps.mlflow_app) --------------------

#: The route flatsweep's MLflow server app adds (under the server's static prefix, as MLflow's
#: own ``/api/2.0/mlflow/...`` routes). GET: whether the server can write in bulk; POST: a round.
ROUTE = "/api/2.0/flatsweep/runs/bulk-write"
#: Runs one request may carry (the tracker sends ``tracking.BULK_RUNS``, 500).
MAX_RUNS = 1000


def encode(writes: Sequence[RunWrite]) -> dict[str, Any]:
    """A round as JSON for :data:`ROUTE` (values as given: the server validates them as
    MLflow's API does)."""
    return {
        "runs": [
            {
                "run_id": w.run_id,
                "create": None
                if w.create is None
                else {
                    "experiment_id": w.create.experiment_id,
                    "name": w.create.name,
                    "start_time": w.create.start_time,
                    "tags": w.create.tags,
                },
                "params": [[p.key, p.value] for p in w.params],
                "metrics": [[m.key, m.value, m.timestamp, m.step] for m in w.metrics],
                "tags": [[t.key, t.value] for t in w.tags],
                "end": None if w.end is None else list(w.end),
            }
            for w in writes
        ]
    }


def decode(body: Any) -> list[RunWrite]:
    """:func:`encode`'s JSON back as ``RunWrite``s; ``ValueError`` naming the first field that
    is not of the form (the values themselves are MLflow's to validate)."""

    def fail(where: str, what: str) -> ValueError:
        return ValueError(f"{where} must be {what}")

    def whole(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    def rows(run: dict[str, Any], key: str, where: str) -> list[list[Any]]:
        """``[[key, value], ...]`` of strings; metrics ``[[key, value, timestamp, step]]``
        with whole-number timestamp and step (the value is MLflow's to check)."""
        value = run.get(key, [])
        if key == "metrics":
            ok = all(
                isinstance(r, list)
                and len(r) == 4
                and isinstance(r[0], str)
                and whole(r[2])
                and whole(r[3])
                for r in value
            )
            what = "a list of [str key, number, int timestamp, int step]"
        else:
            ok = all(
                isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r)
                for r in value
            )
            what = "a list of [str key, str value]"
        if not isinstance(value, list) or not ok:
            raise fail(f"{where}.{key}", what)
        return value

    if not isinstance(body, dict) or not isinstance(body.get("runs"), list):
        raise fail("the body", 'an object with a list "runs"')
    runs = body["runs"]
    if len(runs) > MAX_RUNS:
        raise fail("runs", f"at most {MAX_RUNS} runs, not {len(runs)}")
    writes: list[RunWrite] = []
    seen: set[str] = set()
    for i, run in enumerate(runs):
        where = f"runs[{i}]"
        if not isinstance(run, dict) or not isinstance(run.get("run_id"), str):
            raise fail(where, 'an object with a string "run_id"')
        if not (len(run["run_id"]) == 32 and run["run_id"].isascii() and run["run_id"].isalnum()):
            raise fail(f"{where}.run_id", "32 letters and digits (an MLflow run id)")
        if run["run_id"] in seen:
            raise fail(f"{where}.run_id", "unique in a round (one entry per run)")
        seen.add(run["run_id"])
        write = RunWrite(run["run_id"])
        create = run.get("create")
        if create is not None:
            ok = (
                isinstance(create, dict)
                and isinstance(create.get("experiment_id"), str)
                and create["experiment_id"].isascii()
                and create["experiment_id"].isdigit()
                and isinstance(create.get("name"), str)
                and whole(create.get("start_time"))
                and isinstance(create.get("tags"), dict)
                and all(isinstance(v, str) for v in create["tags"].values())
            )
            if not ok:
                raise fail(
                    f"{where}.create",
                    "null or {experiment_id: digits, name: str, start_time: int, tags: {str: str}}",
                )
            write.create = NewRun(
                create["experiment_id"], create["name"], create["start_time"], create["tags"]
            )
        write.params = [Param(k, v) for k, v in rows(run, "params", where)]
        write.metrics = [Metric(k, v, t, s) for k, v, t, s in rows(run, "metrics", where)]
        write.tags = [RunTag(k, v) for k, v in rows(run, "tags", where)]
        end = run.get("end")
        if end is not None:
            if not (
                isinstance(end, list)
                and len(end) == 2
                and end[0] in ("FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED")
                and (end[1] is None or whole(end[1]))
            ):
                raise fail(f"{where}.end", "null or [an MLflow run status, an int or null]")
            write.end = (end[0], end[1])
        writes.append(write)
    return writes


class HttpBulk:
    """Rounds of runs (:meth:`write`) sent to an ``mlflow server`` started with
    ``--app-name flatsweep``, which writes each in one transaction (:class:`SqlBulk` on the
    server's own store). Authentication, TLS and proxies are MLflow's: the request goes
    through ``mlflow.utils.rest_utils`` with the client's host credentials."""

    def __init__(self, store: Any) -> None:
        self.creds = store.get_host_creds

    def available(self) -> bool:
        """Whether the server writes in bulk: it answers :data:`ROUTE` with ``supported``.
        A server without flatsweep's app answers 404 (no such route), one with MLflow's
        ``basic-auth`` app may answer 401 or 403 for a route it does not know: False, and
        MLflow's API (which reports bad credentials itself). Raises while the server cannot
        be reached or answers 5xx (the caller asks again later)."""
        from mlflow.utils.rest_utils import http_request

        response = http_request(self.creds(), ROUTE, "GET", max_retries=0, timeout=30)
        if response.status_code in (401, 403, 404, 405):
            return False
        if response.status_code != 200:
            raise OSError(f"{ROUTE} answered HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            return False  # something else answers there (a proxy's page)
        supported = isinstance(answer, dict) and answer.get("supported") is True
        if not supported and isinstance(answer, dict) and answer.get("reason"):
            log.warning(
                "the MLflow server cannot write in bulk (%s); writing through MLflow's API",
                answer["reason"],
            )
        return supported

    def write(self, writes: Sequence[RunWrite]) -> None:
        """One round, in one transaction on the server; raises as :meth:`SqlBulk.write` (a
        ``RestException`` carrying MLflow's error) or on a transport error (retried by the
        caller: a round sent twice is written once, see ``SqlBulk._unseen``)."""
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        response = http_request(self.creds(), ROUTE, "POST", json=encode(writes))
        verify_rest_response(response, ROUTE)


def _newer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """MLflow's order for a key's latest value: larger (step, timestamp, value) wins."""
    return (a["step"], a["timestamp"], a["value"]) > (b["step"], b["timestamp"], b["value"])


def _identity(row: dict[str, Any]) -> tuple:
    """A metric row's primary key in MLflow's ``metrics`` table."""
    return (
        row["run_uuid"],
        row["key"],
        row["timestamp"],
        row["step"],
        float(row["value"]),
        bool(row["is_nan"]),
    )


def _chunks(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [rows[i : i + _ROWS_PER_INSERT] for i in range(0, len(rows), _ROWS_PER_INSERT)]


def supported(tracking_uri: str) -> bool:
    """Whether the runs of ``tracking_uri`` may be written in bulk: ``FLATSWEEP_MLFLOW_BULK``
    is on, the URI is a SQLite or PostgreSQL database (which MLflow serves with its SQL
    store), and MLflow's run tables have exactly ``COLUMNS``. Decided from the URI and
    MLflow's table definitions, without opening the database: a store that is down for a
    while is retried, not written some other way."""
    if not enabled():
        return False
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if tracking_uri.startswith(("http://", "https://")):
        return True  # if the server has flatsweep's app: asked at the first write
    try:
        backend = make_url(tracking_uri).get_backend_name()
    except ArgumentError:  # a plain path: a file store
        return False
    if backend not in DIALECTS:
        return False
    differ = tables_match()
    if differ is not None:
        log.warning(
            "MLflow's run tables differ from those flatsweep writes in bulk; writing through "
            "MLflow's API (slower). Columns: %s",
            differ,
        )
        return False
    return True


def tables_match() -> str | None:
    """None if MLflow's run tables have exactly ``COLUMNS``, else what differs."""
    from mlflow.store.tracking.dbmodels.models import (
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )

    tables = (m.__table__ for m in (SqlRun, SqlTag, SqlParam, SqlMetric, SqlLatestMetric))
    found = {t.name: {c.name for c in t.columns} for t in tables}
    if found == COLUMNS:
        return None
    return str({k: sorted(v ^ COLUMNS.get(k, set())) for k, v in found.items()})


def for_client(client: MlflowClient) -> SqlBulk | HttpBulk:
    """A bulk writer on ``client``'s own store (for a URI :func:`supported` accepts): for a
    database, :class:`SqlBulk` on the store MLflow opens on first use (raises while the
    database is unreachable); for a server, :class:`HttpBulk` (ask it :meth:`~HttpBulk.
    available` first)."""
    from mlflow.store.tracking.rest_store import RestStore

    store = client._tracking_client.store
    if isinstance(store, RestStore):
        return HttpBulk(store)
    return SqlBulk(store)
