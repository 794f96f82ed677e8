"""MLflow recording throughput: N synthetic trials through ``MLflowTracker``, per tracking store.

Issue 10 §1 sets the target "MLflow recording >= 3000 trials per minute on SQLite and on the
PostgreSQL-backed HTTP server". This script measures the recording alone, with no Ray and no
training: the sweep service's Tune callback (``sweeps.tracking.MLflowTracker``) is driven
through its public hooks exactly as Tune's controller calls them, so what is timed is the
tracker (its hooks only enqueue) and its writer thread(s) delivering to MLflow.

Per trial, as Tune would: ``on_trial_start``, two ``on_trial_result`` calls with the results a
real 2-epoch trial reports (``trainers`` EPOCH_METRICS, the trainable's device and restore
fields, Tune's auto-filled keys; the last epoch adds the FINAL_METRICS ``test_acc``,
``test_loss`` and the run totals), then ``on_trial_complete`` with Tune's ``last_result`` set.
``--concurrent`` trials are interleaved round-robin (one hook per trial in turn, a finished
trial's slot taking the next one), and trials start at ``--rate`` per minute (0: as fast as
possible). A trial then spans about ``concurrent / rate`` minutes (Little's law): as fast as
possible, every trial's hooks reach the writer within one of its delivery rounds; a rate with
many concurrent trials spreads them over several rounds, as long trials do. A parent run is
first created with ``sweeps.tracking.open_parent`` from a real ``SweepSpec``, so the children
are real child runs of a sweep.

Stores (``--store sqlite,http``), each run on a fresh one:

- **sqlite**: ``sqlite:///<tmp>/mlflow.db`` after ``sweeps.tracking.tune_sqlite()`` (WAL, as the
  driver sets it); the store's work runs in this process, so it is in the driver CPU.
- **postgresql** (asked for by name): MLflow's SQL store in this process on a fresh PostgreSQL
  database ``flatsweep_bench_<hex>`` (127.0.0.1:5432, user postgres; dropped at the end), as a
  sweep with a ``postgresql://`` tracking URI writes; its backends' CPU is the server CPU.
- **http**: a real ``mlflow server`` on 127.0.0.1 (a free port, ``--server-workers`` worker
  processes) on a fresh PostgreSQL database ``flatsweep_bench_<hex>`` (127.0.0.1:5432, user
  postgres), artifacts in a local temporary directory. Its process group is stopped and the
  database dropped at the end, also on an error. MLflow 3.17 serves with uvicorn.
- **gunicorn** (asked for by name): the same server as ``infra/`` starts it, with
  ``--gunicorn-opts "--timeout 300 --no-control-socket"`` and N workers. uvicorn, as
  ``mlflow server --workers`` starts it, answers each request on a kept-alive connection about
  40 ms late: it never sets ``TCP_NODELAY`` (Kludex/uvicorn#3149), so its response body waits
  for the client's delayed ACK of the headers (44 ms per ``/health`` measured here, 4 ms on a
  fresh connection), and one writer's requests are latency-bound. gunicorn's sync workers
  close each connection.

Both servers run as ``infra/`` runs them, without MLflow 3's server jobs (GenAI scorers,
prompt optimisation; ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` unless the environment sets
it): on a database store they would start eight more processes that import MLflow.

``--bulk 1,0`` runs each store both ways: a delivery round's runs in one transaction
(``sweeps.sqlbulk``, what a sweep does on a database URI and on a server started with
``--app-name flatsweep``; the default, ``1``) and through MLflow's API, three calls per trial
(``0``). The servers are started as ``infra/`` starts them, with ``--app-name flatsweep``
(``sweeps.mlflow_app``: MLflow's server plus the bulk route), in both cases.

When ``MLflowTracker`` takes ``writers`` (several writer threads for HTTP stores), the http
store runs twice: ``writers=1`` and the tracker's default; otherwise once, with the single
writer the tracker has. ``--writers`` chooses other counts.

``--processes 0,2`` runs each of those also through that many writer processes
(``MLflowTracker(process=True, processes=N)``, ``sweeps.writer_process``, as a sweep's driver
does with ``FLATSWEEP_MLFLOW_PROCESS=N``); 0, the default, is writer threads of this process.
The processes are started, and have opened the store, before the timing starts (a sweep's
driver starts them while Tune starts). Their MLflow calls are not seen here ("-"); their CPU
is added to the driver's, read from /proc as they are drained.

Before each measured run ``--warmup`` trials (default 50) are recorded, untimed, under a sweep
of their own: a server is long-lived, and a fresh one spends its first requests importing and
connecting in each worker process (about 0.5 s of server CPU per trial over its first 40).

Measured per run, from the first hook to ``drain()`` returning True:

- wall seconds and trials recorded per minute (N / wall);
- MLflow calls per trial: every public ``MlflowClient`` method, outermost calls only (a method
  calling another one counts once), by method; the threads that made them (the writers used);
  for http also the REST requests actually sent (``mlflow.utils.rest_utils.http_request``), by
  endpoint, and their mean round trip: ``set_terminated`` on a REST store also fetches the run
  (``GET runs/get``) to print its URL, unless ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` is set
  (the driver's environment, ``sweeps.runner._DRIVER_ENV``, which this script applies, sets it);
- the driver's CPU seconds per trial (``getrusage(RUSAGE_SELF)``: the main thread and the
  writers); for http also the server's (its process group and its PostgreSQL backends, from
  /proc);
- the main thread's seconds inside the tracker's hooks (what Tune's event loop pays);
- the drain tail: from the last hook to every write delivered.

Afterwards MLflow must hold exactly N child runs of the parent (N + 1 runs in the experiment),
none RUNNING, each FINISHED with ``val_acc`` and ``test_acc``; otherwise the script exits 1.

    python benchmarks/mlflow_throughput.py                           # 1000 trials, sqlite + http
    python benchmarks/mlflow_throughput.py --trials 1000 --store sqlite,http
    python benchmarks/mlflow_throughput.py --trials 20 --store sqlite --no-record  # the test's
    python benchmarks/mlflow_throughput.py --store http --rate 3000 --concurrent 256  # ~5 s trials
    python benchmarks/mlflow_throughput.py --store http --writers 1,2,4,8
    python benchmarks/mlflow_throughput.py --store sqlite --processes 0,1,2
    python benchmarks/mlflow_throughput.py --store sqlite,postgresql --bulk 1,0  # bulk vs API

Prints a markdown section and appends it to ``benchmarks/RESULTS.md`` (``--results``
elsewhere) with the date (UTC), the machine, the code state, the exact command and the load
average before and after, unless ``--no-record``. Exit code 1 when a run failed or a record is
missing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import io
import math
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_host.py, sweep_scale.py
from _host import code_state, cpu_model  # noqa: E402
from sweep_scale import FINAL_METRICS, TRAIN, Meter, append, cpu_s, fmt_load  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
TITLE = "mlflow_throughput: MLflow recording through MLflowTracker, trials per minute"
STORES = ("sqlite", "postgresql", "http", "gunicorn")
SERVERS = ("http", "gunicorn")  # the stores that are an mlflow server
DATABASES = ("postgresql", *SERVERS)  # the stores on a fresh PostgreSQL database
# As infra/ starts the server (local/up.sh, compose, k8s): MLflow 3's server jobs are off unless
# the environment turns them on. On a database store they are on by default and start eight
# processes (a job runner and huey consumers) that each import MLflow (about 2 s of CPU and
# 240 MB each, measured here), inside the measured window and the server's process group.
SERVER_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get(
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"
    )
}
GUNICORN_OPTS = "--timeout 300 --no-control-socket"  # as infra/local/up.sh serves MLflow
TARGET_PER_MIN = 3000  # issue 10 §1: ">= 3000 trials per minute on SQLite and on ... HTTP"
WRITERS_ENV = "FLATSWEEP_MLFLOW_WRITERS"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}

# The sweep the children belong to is sweep_scale's (TRAIN, FINAL_METRICS): 2 epochs (so 2
# results per trial, and a trial reporting both is full-length, not stopped early) of an mlp on
# synthetic signals, AMP searched. Only the spec is used: nothing trains.
SPACE: dict[str, Any] = {"name": "amp", "ranges": {}}  # the amp space's default ranges
EPOCHS = TRAIN["epochs"]
EVENTS = EPOCHS + 2  # hooks per trial: start, one result per epoch, complete


# -- the synthetic trials ------------------------------------------------------------------------


@dataclass
class Trial:
    """What ``MLflowTracker`` reads of Tune's ``Trial``: its id, config, status, last result."""

    trial_id: str
    config: dict[str, Any]
    status: str = "PENDING"
    last_result: dict[str, Any] = field(default_factory=dict)


def sample_point(ranges: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A point of the sweep's space, as OptunaSearch hands Tune a config (dotted names)."""
    point: dict[str, Any] = {}
    for key, r in ranges.items():
        if r.integer:
            point[key] = rng.randint(int(r.low), int(r.high))
        elif r.log:
            point[key] = 10 ** rng.uniform(math.log10(r.low), math.log10(r.high))
        else:
            point[key] = rng.uniform(r.low, r.high)
    return point


def epoch_result(trial: Trial, epoch: int, epochs: int, rng: random.Random) -> dict[str, Any]:
    """One Tune result of ``sweeps.trainable.train_trial`` at ``epoch``: the names and kinds of
    values a real 2-epoch trial of ``TRAIN`` reports (taken from ``trainers.fit``), the
    trainable's extras, and the keys Tune fills in itself. The last epoch adds the test-set
    metrics and the run totals (``trainers.FINAL_METRICS``)."""
    train_s = rng.uniform(0.02, 0.05)
    now = time.time()
    result: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": rng.uniform(1.5, 2.5),
        "train_acc": rng.uniform(0.1, 0.6),
        "lr": 0.1 * (1 - epoch / epochs) / 2,
        "closure_passes": 30,
        "train_seconds": train_s,
        "images_per_s": 128 / train_s,
        "diverged": 0.0,
        "val_loss": rng.uniform(1.5, 2.5),
        "val_acc": rng.uniform(0.1, 0.6),
        "gen_gap": rng.uniform(-0.1, 0.1),
        "epoch_seconds": train_s + 0.002,
        # sweeps.trainable.train_trial's extras
        "oom": 0.0,
        "restored_from_epoch": 0.0,
        "device_used": "cpu",
        "gpu_reserved_on_cpu": False,
        # Tune's auto-filled keys (the tracker skips them)
        "timestamp": int(now),
        "checkpoint_dir_name": "checkpoint_000000" if epoch == epochs else None,
        "done": False,
        "training_iteration": epoch,
        "trial_id": trial.trial_id,
        "date": time.strftime("%Y-%m-%d_%H-%M-%S"),
        "time_this_iter_s": train_s + 0.01,
        "time_total_s": epoch * (train_s + 0.01),
        "pid": os.getpid(),
        "hostname": platform.node(),
        "node_ip": "127.0.0.1",
        "config": dict(trial.config),
        "time_since_restore": epoch * (train_s + 0.01),
        "iterations_since_restore": epoch,
    }
    if epoch == epochs:
        result.update(
            test_loss=rng.uniform(1.5, 2.5),
            test_acc=rng.uniform(0.1, 0.6),
            train_seconds_total=epochs * train_s,
            closure_passes_total=30 * epochs,
        )
    return result


def schedule(n: int, concurrent: int) -> Iterator[tuple[int, int]]:
    """``(trial index, event)`` in the order Tune's controller would call the hooks with
    ``concurrent`` trials running: event 0 start, 1..``epochs`` results, then complete
    (``EVENTS - 1``). Slots take turns, one event each; a slot whose trial completed starts
    the next trial on its following turn."""
    slots: list[list[int]] = []  # [trial index, next event]
    started = 0
    while started < n or slots:
        while len(slots) < concurrent and started < n:
            slots.append([started, 0])
            started += 1
        for slot in list(slots):
            index, event = slot
            yield index, event
            slot[1] += 1
            if slot[1] == EVENTS:
                slots.remove(slot)


# -- measuring -----------------------------------------------------------------------------------


def proc_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) of processes ``pids`` so far, from /proc; 0 for a gone one."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def group_pids(pgid: int) -> list[int]:
    """The processes in process group ``pgid`` (a server and the workers it forked)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:  # field 5, pgrp
            out.append(int(entry.name))
    return out


def writers_supported() -> bool:
    """Whether ``MLflowTracker`` takes ``writers`` (the tracker with several writer threads)."""
    from sweeps.tracking import MLflowTracker

    return "writers" in inspect.signature(MLflowTracker.__init__).parameters


# -- the stores ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode} at start")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback only
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _pg(sql: str) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(**PG)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@dataclass
class Store:
    """A fresh tracking store for one run: its URI and, for http, the server's processes."""

    kind: str
    uri: str
    server: subprocess.Popen[bytes] | None = None
    db: str | None = None

    def server_pids(self) -> list[int]:
        """The mlflow server's processes and the database's PostgreSQL backends (none for
        sqlite)."""
        if self.db is None:
            return []
        backends = _pg(f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.db}'")
        server = group_pids(self.server.pid) if self.server is not None else []
        return server + [int(pid) for (pid,) in backends]


@contextlib.contextmanager
def open_store(kind: str, tmp: Path, server_workers: int) -> Iterator[Store]:
    """A fresh store of ``kind`` under ``tmp``; an http server is stopped (its whole process
    group, which this function created) and its database dropped on the way out."""
    if kind == "sqlite":
        from sweeps.tracking import tune_sqlite

        tune_sqlite()  # as the driver does before opening any SQLite database
        yield Store(kind, f"sqlite:///{tmp / 'mlflow.db'}")
        return
    db = f"flatsweep_bench_{uuid.uuid4().hex[:10]}"
    _pg(f"CREATE DATABASE {db}")
    database_uri = f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{db}"
    server = None
    try:
        if kind == "postgresql":  # MLflow's SQL store in this process, on the database
            yield Store(kind, database_uri, None, db)
            return
        port = _free_port()
        log = (tmp / "mlflow-server.log").open("ab")
        server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                database_uri,
                "--artifacts-destination",
                str(tmp / "mlartifacts"),
                "--app-name",
                "flatsweep",
                *(
                    ["--workers", str(server_workers), "--gunicorn-opts", GUNICORN_OPTS]
                    if kind == "gunicorn"
                    else ["--workers", str(server_workers)]
                ),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **SERVER_ENV},
        )
        log.close()  # the server holds its own descriptor
        uri = f"http://127.0.0.1:{port}"
        _wait_http(f"{uri}/health", 180, server)
        yield Store(kind, uri, server, db)
    finally:
        if server is not None:
            _stop_group(server)
        _pg(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (this script started it in a session of its own),
    SIGKILL it if it has not exited after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- one run -------------------------------------------------------------------------------------


def make_spec(name: str, uri: str) -> tuple[Any, str]:
    """The sweep the children belong to: a validated ``SweepSpec`` and its YAML text."""
    import yaml

    from sweeps.spec import SweepSpec

    raw = {
        "name": name,
        "train": TRAIN,
        "space": SPACE,
        "scheduler": {"name": "fifo"},
        "metric": "val_acc",
        "mode": "max",
        "finalists": {"top_k": 0},
        "tracking_uri": uri,
    }
    return SweepSpec.model_validate(raw), yaml.safe_dump(raw, sort_keys=False)


class Calls:
    """What ``Meter``'s observers saw: the threads that made MLflow calls (the writers used)
    and the HTTP requests MLflow's REST client sent, by method and endpoint."""

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self.threads.clear()
            self.requests.clear()

    def seen(self, args: tuple, kwargs: dict, out: Any, start: float, dt: float) -> None:
        if threading.current_thread() is not threading.main_thread():
            with self._lock:
                self.threads.add(threading.get_ident())

    def request(self, args: tuple, kwargs: dict, out: Any, start: float, dt: float) -> None:
        # http_request(host_creds, endpoint, method, ...), called with keywords by MLflow
        endpoint = kwargs.get("endpoint", args[1] if len(args) > 1 else "?")
        method = kwargs.get("method", args[2] if len(args) > 2 else "?")
        with self._lock:
            self.requests[f"{method} {endpoint.removeprefix('/api/2.0/mlflow/')}"] += 1


def install(meter: Meter, calls: Calls) -> None:
    """Count every public MlflowClient method (outermost calls) and the HTTP requests they
    send, and time the tracker's hooks."""
    from mlflow.tracking import MlflowClient
    from mlflow.utils import rest_utils

    from sweeps.sqlbulk import HttpBulk, SqlBulk
    from sweeps.tracking import MLflowTracker

    for name in list(vars(MlflowClient)):
        if not name.startswith("_"):
            meter.wrap(MlflowClient, name, "mlflow", label=f"mlflow.{name}", observe=calls.seen)
    # A bulk round's transaction: one call for the runs of a round, not three per run.
    meter.wrap(SqlBulk, "write", "mlflow", label="mlflow.bulk_write", observe=calls.seen)
    meter.wrap(HttpBulk, "write", "mlflow", label="mlflow.bulk_write", observe=calls.seen)
    for hook in ("on_trial_start", "on_trial_result", "on_trial_complete"):
        meter.wrap(MLflowTracker, hook, "hooks", label=f"hooks.{hook}")
    # Every REST call goes through this module-level function (call_endpoint looks it up at
    # each call), including requests an MlflowClient method makes beyond its own endpoint.
    meter.wrap(rest_utils, "http_request", "http", label="http.request", observe=calls.request)


def check_records(client: Any, experiment_id: str, parent_id: str, n: int) -> dict[str, Any]:
    """What MLflow holds: the parent's children by status, those FINISHED with the final
    metrics, and every run of the experiment (the parent + N children, no duplicates)."""
    from sweeps.tracking import find_children

    kids = find_children(client, experiment_id, parent_id)
    runs, token = 0, None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += len(page)
        token = page.token
        if not token:
            break
    statuses = Counter(r.info.status for r in kids)
    complete = sum(
        r.info.status == "FINISHED" and all(m in r.data.metrics for m in FINAL_METRICS)
        for r in kids
    )
    return {
        "metric_keys": sorted({len(r.data.metrics) for r in kids}),
        "children": len(kids),
        "children_status": dict(statuses),
        "running": statuses.get("RUNNING", 0),
        "complete": complete,
        "runs": runs,
        "missing": max(0, n - complete),
        "ok": len(kids) == complete == n and runs == n + 1,
    }


def _feed(tracker: Any, trials: list[Trial], concurrent: int, rate: float) -> float:
    """Call the tracker's hooks for every trial, as Tune's controller would (``schedule``),
    starting trial i no earlier than i / ``rate`` minutes in (0: no limit); returns when the
    last hook returned."""
    rng = random.Random(1)  # the metric values
    running: list[Trial] = []
    gap = 60.0 / rate if rate > 0 else 0.0
    t0 = time.perf_counter()
    for index, event in schedule(len(trials), concurrent):
        trial = trials[index]
        if event == 0:
            delay = t0 + index * gap - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            trial.status = "RUNNING"
            running.append(trial)
            tracker.on_trial_start(0, running, trial)
        elif event <= EPOCHS:
            result = epoch_result(trial, event, EPOCHS, rng)
            tracker.on_trial_result(0, running, trial, result)
            trial.last_result = result  # Tune updates it after its callbacks' on_trial_result
        else:
            trial.status = "TERMINATED"
            running.remove(trial)
            tracker.on_trial_complete(0, running, trial)
    return time.perf_counter()


def run_once(
    store: Store,
    n: int,
    writers: int | None,
    args: argparse.Namespace,
    meter: Meter,
    calls: Calls,
    tag: str,
    processes: int = 0,
    bulk: bool = False,
) -> dict[str, Any]:
    """Record ``n`` trials into ``store`` through a fresh tracker (``processes``: through
    that many writer processes, 0: threads of this one; ``bulk``: rounds of runs in one
    transaction, ``sweeps.sqlbulk``, else MLflow's API); what was measured."""
    from mlflow.tracking import MlflowClient

    from sweeps.tracking import MLflowTracker, open_parent

    meter.paused = True  # the parent, the warm-up and the checks are not measured
    client = MlflowClient(store.uri)
    name = f"bench-{tag}-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"
    kwargs: dict[str, Any] = {
        "drain_timeout_s": args.timeout_s,
        "stage": "search",
        "fresh": True,
        "bulk": bulk,
    }
    if writers is not None:
        kwargs["writers"] = writers
    if processes:
        kwargs.update(process=True, processes=processes)
    rng = random.Random(0)  # the searched points

    def sweep_and_trials(name: str, count: int) -> tuple[Any, Any, list[Trial]]:
        """A parent run, a tracker writing under it and ``count`` trials of its space."""
        spec, text = make_spec(name, store.uri)
        sweep = open_parent(client, spec, text, resume=False)
        base = spec.train.model_dump(mode="json")
        base["num_threads"] = max(1, int(spec.resources.cpu))  # as sweeps.runner builds it
        tracker = MLflowTracker(
            store.uri,
            sweep.experiment_id,
            sweep.parent_id,
            spec.name,
            base,
            spec.train.epochs,
            **kwargs,
        )
        prefix = uuid.uuid4().hex[:5]
        ranges = spec.ranges()
        trials = [Trial(f"{prefix}_{i:05d}", sample_point(ranges, rng)) for i in range(count)]
        return sweep, tracker, trials

    if args.warmup:
        # A server is long-lived; a fresh one spends its first requests importing and
        # connecting in every worker process. Its own sweep, so the records checked are N.
        _, warm, warm_trials = sweep_and_trials(f"{name}-warmup", args.warmup)
        with contextlib.redirect_stdout(io.StringIO()):
            _feed(warm, warm_trials, args.concurrent, 0.0)
            warm.drain()
        warm.close()
    sweep, tracker, trials = sweep_and_trials(name, n)
    if processes:
        tracker.start()
        if not tracker._outbox.ready(120):
            raise RuntimeError("the writer processes did not open the store within 120 s")
    load_before = os.getloadavg()
    server0 = proc_cpu_s(store.server_pids())
    cpu0 = cpu_s()
    writers_cpu0 = proc_cpu_s(tracker._outbox.pids) if processes else 0.0
    meter.start()
    calls.clear()
    meter.paused = False
    # MLflow prints two "View run" lines to stdout per run it terminates on a REST store
    # (after a get_run request, which is counted): kept out of the report, not skipped.
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        last_hook = _feed(tracker, trials, args.concurrent, args.rate)
        drained = tracker.drain()
        end = time.perf_counter()
    meter.paused = True
    wall, driver_cpu = end - t0, cpu_s() - cpu0
    if processes:
        # Theirs within the timing; their start-up before it (imports, opening the store)
        # is reported apart.
        driver_cpu += proc_cpu_s(tracker._outbox.pids) - writers_cpu0
    server_cpu = proc_cpu_s(store.server_pids()) - server0 if store.db is not None else None
    server_procs = len(group_pids(store.server.pid)) if store.server is not None else None
    tracker.on_experiment_end(trials)  # as Tune ends the experiment (all trials closed: no-op)
    tracker.close()
    records = check_records(client, sweep.experiment_id, sweep.parent_id, n)
    with contextlib.redirect_stdout(io.StringIO()):
        client.set_terminated(sweep.parent_id, "FINISHED")
    mlflow_calls = {
        k.removeprefix("mlflow."): v for k, v in meter.calls.items() if k.startswith("mlflow.")
    }
    return {
        "store": store.kind,
        "writers": writers,
        "processes": processes,
        "bulk": bulk,
        "writers_startup_cpu_s": writers_cpu0,
        "threads": len(calls.threads),
        "n": n,
        "drained": drained,
        "wall_s": wall,
        "tail_s": end - last_hook,
        "per_min": 60 * n / wall,
        "calls": mlflow_calls,
        "requests": dict(calls.requests),
        "request_s": meter.seconds.get("http.request", 0.0),
        "driver_cpu_s": driver_cpu,
        "server_cpu_s": server_cpu,
        "server_procs": server_procs,
        "hooks_s": sum(v for k, v in meter.seconds.items() if k.startswith("hooks.")),
        "records": records,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


# -- the report ----------------------------------------------------------------------------------


def _writers_label(r: dict[str, Any]) -> str:
    asked = "default" if r["writers"] is None else str(r["writers"])
    if r.get("processes"):
        procs = r["processes"]
        return f"{asked} ({procs} process{'es' if procs > 1 else ''})"
    return f"{asked} ({r['threads']})"


def row(r: dict[str, Any]) -> str:
    """One table row: a store with a writer count."""
    n = r["n"]
    writes = "bulk" if r.get("bulk") else "API"
    if "failed" in r:
        return (
            f"| {r['store']} | {_writers_label(r)} | {writes} | {n} | failed: {r['failed']} |"
            + " |" * 8
        )
    per_trial = sum(r["calls"].values()) / n
    # A bulk transaction carries many trials: its fraction of a call per trial needs digits.
    calls = f"{per_trial:.{2 if per_trial >= 0.1 else 3}f}" if not r.get("processes") else "-"
    server = "-" if r["server_cpu_s"] is None else f"{r['server_cpu_s'] * 1000 / n:.1f}"
    http = f"{sum(r['requests'].values()) / n:.2f}" if r["requests"] else "-"
    meets = "yes" if r["per_min"] >= TARGET_PER_MIN and r["records"]["ok"] else "**no**"
    return (
        f"| {r['store']} | {_writers_label(r)} | {writes} | {n} | {r['wall_s']:.2f} | "
        f"**{r['per_min']:.0f}** | {meets} | {calls} | {http} | "
        f"{r['driver_cpu_s'] * 1000 / n:.1f} | {server} | {r['hooks_s'] * 1000 / n:.2f} | "
        f"{r['tail_s']:.1f} |"
    )


def records_line(r: dict[str, Any]) -> str:
    """The verdict on one run's records."""
    where = f"{r['store']}, writers {_writers_label(r)}, {'bulk' if r.get('bulk') else 'API'}"
    if "failed" in r:
        return f"- {where}: run failed ({r['failed']}): records not checked"
    c = r["records"]
    status = ", ".join(f"{k} {v}" for k, v in sorted(c["children_status"].items())) or "none"
    head = "all recorded" if c["ok"] and r["drained"] else f"**{c['missing']} MISSING**"
    drained = "" if r["drained"] else "; drain() timed out"
    return (
        f"- {head} ({where}): {c['children']} children ({status}), {c['running']} RUNNING, "
        f"{c['complete']}/{r['n']} FINISHED with {' and '.join(FINAL_METRICS)} "
        f"({'/'.join(map(str, c['metric_keys'])) or '-'} metrics each), "
        f"{c['runs']} runs in the experiment (parent + children){drained}; load "
        f"{fmt_load(r['load_before'])} → {fmt_load(r['load_after'])}"
    )


def calls_line(r: dict[str, Any]) -> str:
    """One run's MLflow calls per trial by method, and its HTTP requests by endpoint."""
    if "failed" in r:
        return ""
    n = r["n"]

    def per_trial(counts: dict[str, int]) -> str:
        return "; ".join(
            f"{k} {v / n:.2f}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])
        )

    where = f"{r['store']} writers {_writers_label(r)} {'bulk' if r.get('bulk') else 'API'}"
    if r.get("processes"):
        cpu = r["writers_startup_cpu_s"]
        return (
            f"- per trial, {where}: MLflow calls made in the writer processes (not seen here); "
            f"their start-up before the timing: {cpu:.1f} s of CPU in all"
        )
    line = f"- per trial, {where}: MLflow calls {per_trial(r['calls'])}"
    if r["requests"]:
        count = sum(r["requests"].values())
        line += (
            f"; HTTP requests {per_trial(r['requests'])}; "
            f"{r['request_s'] / count * 1000:.1f} ms per request (mean round trip)"
        )
    if r.get("server_procs") is not None:
        line += f"; the server's process group: {r['server_procs']} processes"
    return line


def report(runs: list[dict[str, Any]], header: str) -> str:
    lines = [
        header,
        "| store | writers (threads seen) | MLflow writes | trials | wall s | trials/min | "
        ">= 3000/min | MLflow calls/trial | HTTP requests/trial | driver CPU ms/trial | "
        "server CPU ms/trial | hooks ms/trial | drain tail s |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [row(r) for r in runs]
    lines.append("")
    lines += [records_line(r) for r in runs]
    lines += [line for line in (calls_line(r) for r in runs) if line]
    return "\n".join(lines) + "\n"


def ok(r: dict[str, Any]) -> bool:
    return "failed" not in r and r["drained"] and r["records"]["ok"]


# -- the command line ----------------------------------------------------------------------------


def _list(text: str, what: str, allowed: Sequence[str] | None = None) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{what} must not be empty, but got {text!r}")
    if allowed is not None:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(
                f"{what} must be among {', '.join(allowed)}, but got {', '.join(bad)}"
            )
    return values


def parse_stores(text: str) -> list[str]:
    return _list(text, "--store", STORES)


def parse_writers(text: str) -> list[int | None]:
    """``"1,default"`` -> ``[1, None]`` (None: the tracker's own default)."""
    out: list[int | None] = []
    for v in _list(text, "--writers"):
        if v == "default":
            out.append(None)
            continue
        try:
            count = int(v)
        except ValueError:
            count = 0
        if count < 1:
            raise argparse.ArgumentTypeError(
                f"--writers must be 'default' or integers >= 1, but got {v!r}"
            )
        out.append(count)
    return out


def parse_processes(text: str) -> list[int]:
    """``"0,2"`` -> ``[0, 2]`` (0: writer threads of this process)."""
    out = []
    for v in _list(text, "--processes"):
        if not (v.isascii() and v.isdigit()) or int(v) > 32:
            raise argparse.ArgumentTypeError(
                f"--processes must be whole numbers from 0 to 32, but got {v!r}"
            )
        out.append(int(v))
    return out


def parse_bulk(text: str) -> list[bool]:
    """``"1,0"`` -> ``[True, False]``: bulk rounds, then MLflow's API."""
    values = _list(text, "--bulk", ("0", "1"))
    return [v == "1" for v in values]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument(
        "--store", type=parse_stores, default=["sqlite", "http"], help="sqlite,http,gunicorn"
    )
    p.add_argument("--concurrent", type=int, default=8, help="trials interleaved at once")
    p.add_argument("--rate", type=float, default=0.0, help="trial starts per minute; 0: no limit")
    p.add_argument(
        "--writers",
        type=parse_writers,
        default=None,
        help="writer counts to run, e.g. 1,4,default (needs a tracker taking writers); "
        "default: the tracker's default, and also 1 for http",
    )
    p.add_argument(
        "--processes",
        type=parse_processes,
        default=[0],
        help="writer process counts to run, e.g. 0,2 (0: threads of this process, the default)",
    )
    p.add_argument(
        "--bulk",
        type=parse_bulk,
        default=[True],
        help="1 bulk rounds (a sweep's default; a server with --app-name flatsweep), "
        "0 MLflow's API; e.g. 1,0 for both",
    )
    p.add_argument("--server-workers", type=int, default=4, help="mlflow server --workers")
    p.add_argument(
        "--warmup", type=int, default=50, help="trials recorded before each measured run"
    )
    p.add_argument("--timeout-s", type=float, default=900.0, help="drain limit per run")
    p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    for flag in ("trials", "concurrent", "server_workers"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, but got {getattr(args, flag)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, but got {args.warmup}")
    if args.rate < 0:
        p.error(f"--rate must be >= 0, but got {args.rate}")
    return args


def plan(stores: Sequence[str], writers: list[int | None] | None, supported: bool) -> list:
    """``(store, writers)`` runs: the tracker's default everywhere, and also ``writers=1`` for
    http (one writer against several over HTTP); ``writers`` given, those counts. A tracker
    without ``writers`` runs once per store, with its one writer."""
    if not supported:
        return [(s, None) for s in stores]
    if writers is not None:
        return [(s, w) for s in stores for w in writers]
    return [(s, w) for s in stores for w in ([1, None] if s in SERVERS else [None])]


def machine(load: Sequence[float]) -> str:
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    # psycopg2 is installed as psycopg2-binary in this project's environment.
    dists = ("mlflow", "sqlalchemy", "psycopg2-binary")
    versions = ", ".join(f"{d} {version(d)}" for d in dists)
    return (
        f"{platform.platform()}, {cpu_model()}, os.cpu_count() {os.cpu_count()}, load average "
        f"at start {fmt_load(load)} (1/5/15 min); {versions}, Python {platform.python_version()}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run every planned (store, writers), print the section and append it; 1 on a failure."""
    args = parse_args(argv)
    command = shlex.join(
        sys.orig_argv if argv is None else ["python", "benchmarks/mlflow_throughput.py", *argv]
    )
    # MLflow's own env would point our clients elsewhere; every run names its store.
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    # The environment the sweep's driver gives its tracker (run_sweep sets the same defaults).
    from sweeps.runner import _DRIVER_ENV

    for key, value in _DRIVER_ENV.items():
        os.environ.setdefault(key, value)
    supported = writers_supported()
    if args.writers is not None and not supported:
        print(
            "[mlflow_throughput] MLflowTracker takes no writers: --writers ignored", file=sys.stderr
        )
    load = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    meter, calls = Meter(), Calls()
    install(meter, calls)
    meter.paused = True
    runs: list[dict[str, Any]] = []
    pg_version = None
    planned = [
        (kind, writers, procs, bulk)
        for kind, writers in plan(args.store, args.writers, supported)
        for procs in args.processes
        for bulk in args.bulk
    ]
    for i, (kind, writers, procs, bulk) in enumerate(planned):
        label = f"{kind} writers={'default' if writers is None else writers}"
        label += f" processes={procs}" if procs else ""
        label += " bulk" if bulk else " API"
        print(f"[mlflow_throughput] {label}: {args.trials} trials ...", file=sys.stderr, flush=True)
        tmp = Path(tempfile.mkdtemp(prefix="mlflow_throughput-"))
        try:
            with open_store(kind, tmp, args.server_workers) as store:
                if kind in DATABASES and pg_version is None:
                    pg_version = _pg("SHOW server_version")[0][0]
                tag = f"{kind}{i}"
                r = run_once(store, args.trials, writers, args, meter, calls, tag, procs, bulk)
        except Exception as e:  # noqa: BLE001 - a failed run is reported, the others still run
            first = (str(e).splitlines() or [""])[0][:200]
            r = {"store": kind, "writers": writers, "threads": 0, "n": args.trials}
            r["processes"], r["bulk"] = procs, bulk
            r["failed"] = f"{type(e).__name__}: {first}"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        runs.append(r)
        if "failed" in r:
            print(f"[mlflow_throughput] {label}: FAILED {r['failed']}", file=sys.stderr)
        else:
            print(
                f"[mlflow_throughput] {label} ({r['threads']} writer threads): "
                f"{r['per_min']:.0f} trials/min, {r['wall_s']:.1f} s, "
                f"{r['records']['complete']}/{args.trials} recorded",
                file=sys.stderr,
                flush=True,
            )
    after = os.getloadavg()
    env = os.environ.get(WRITERS_ENV)
    version = (
        "takes `writers` (default: the tracker's own)"
        if supported
        else "one writer thread (no `writers` argument)"
    )
    rate = "as fast as possible" if args.rate == 0 else f"{args.rate:g} trial starts per minute"
    header = (
        f"## {TITLE} — {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"- machine: {machine(load)}\n"
        f"- code: {code_state()}\n"
        f"- command: `{command}`\n"
        f"- workload: {args.trials} synthetic trials per run through `MLflowTracker`'s hooks "
        f"(no Ray, no training), {args.concurrent} interleaved, {rate}; each trial "
        f"on_trial_start, {EPOCHS} on_trial_result (a real trial's results; the last adds "
        f"test_acc and the run totals), on_trial_complete; the parent made by `open_parent`. "
        f"Before each measured run {args.warmup} trials are recorded untimed under a sweep of "
        f"their own (a fresh server's workers import and connect on their first requests). "
        f"Tracker: {version}"
        f"{f'; ${WRITERS_ENV}={env}' if env else ''}; MLflow writes: bulk (a round's runs in "
        f"one transaction, `sweeps.sqlbulk`, a sweep's default on a database URI and on a "
        f"server with `--app-name flatsweep`) or API "
        f"(`create_run`, `log_batch`, `set_terminated` per trial). Each run on a fresh store: "
        f"SQLite (WAL, `tune_sqlite`) in this process; postgresql: MLflow's SQL store in this "
        f"process on a fresh PostgreSQL database; HTTP: `mlflow server --app-name flatsweep "
        f"--workers "
        f'{args.server_workers}` (uvicorn; gunicorn: `--gunicorn-opts "--workers '
        f'{args.server_workers}"`) on 127.0.0.1 with a fresh PostgreSQL'
        f"{f' {pg_version}' if pg_version else ''} database, local artifacts.\n"
        f"- measured from the first hook to `drain()` returning True: trials/min = N / wall; "
        f"MLflow calls: outermost public MlflowClient calls and bulk transactions; HTTP "
        f"requests: MLflow's "
        f"`rest_utils.http_request` calls (a client method may send more than one); writers: "
        f"asked (threads that made MLflow calls, or writer processes); driver CPU: getrusage "
        f"of this process (all threads; SQLite's work included), and with writer processes "
        f"theirs too (/proc); server CPU: the mlflow server's process group and the database's "
        f"PostgreSQL backends (/proc); hooks: main-thread time in the tracker's hooks; "
        f"drain tail: last hook → drained.\n"
        f"- load average (1/5/15 min): before {fmt_load(load)}, after {fmt_load(after)}\n"
    )
    section = report(runs, header)
    print(section)
    if not args.no_record:
        append(args.results, section)
    return 0 if all(ok(r) for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
