"""benchmarks/mlflow_throughput.py: its trial schedule and results (fast), and 20 trials end to
end on SQLite (about 10 s) and, as a ``cluster`` test, on a PostgreSQL-backed ``mlflow server``
(about 1 min on 2 cores: the server's start-up dominates). Speed is measured, never asserted.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests._scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "mlflow_throughput.py"
COLUMNS = [
    "store",
    "writers (threads seen)",
    "MLflow writes",
    "trials",
    "wall s",
    "trials/min",
    ">= 3000/min",
    "MLflow calls/trial",
    "HTTP requests/trial",
    "driver CPU ms/trial",
    "server CPU ms/trial",
    "hooks ms/trial",
    "drain tail s",
]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("mlflow_throughput")


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", cell.replace("*", ""))]


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and data rows of the first markdown table in ``text``."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[0], rows[2:]


def run_script(tmp_path: Path, *args: str, timeout: int) -> subprocess.CompletedProcess[str]:
    results = tmp_path / "RESULTS.md"
    # The tracker's own default writer counts, whatever the caller's environment says.
    env = {k: v for k, v in os.environ.items() if k != "FLATSWEEP_MLFLOW_WRITERS"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--no-record", "--results", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not results.exists()  # --no-record
    return proc


# -- the synthetic trials ----------------------------------------------------------------------


@pytest.mark.parametrize(("n", "concurrent"), [(1, 8), (20, 8), (7, 3), (5, 1)])
def test_schedule_runs_each_trial_through_its_hooks_in_order(
    bench: ModuleType, n: int, concurrent: int
) -> None:
    events: dict[int, list[int]] = {}
    running, most = set(), 0
    for index, event in bench.schedule(n, concurrent):
        events.setdefault(index, []).append(event)
        if event == 0:
            running.add(index)
        elif event == bench.EVENTS - 1:
            running.discard(index)
        most = max(most, len(running))
    assert sorted(events) == list(range(n))
    assert all(e == list(range(bench.EVENTS)) for e in events.values())
    assert most == min(n, concurrent)  # interleaved, never more than --concurrent at once


def test_results_carry_what_a_real_trial_reports(bench: ModuleType) -> None:
    from trainers import EPOCH_METRICS, FINAL_METRICS

    trial = bench.Trial("abc_00000", {"perturbation.radius": 0.01})
    rng = random.Random(0)
    first, last = (bench.epoch_result(trial, e, 2, rng) for e in (1, 2))
    # Every training metric is one the trainers report: a renamed metric there fails here.
    extras = {"oom", "restored_from_epoch", "device_used", "gpu_reserved_on_cpu"}
    tune_keys = {k for k in first if k not in EPOCH_METRICS | FINAL_METRICS | extras}
    assert tune_keys <= {
        "timestamp",
        "checkpoint_dir_name",
        "done",
        "training_iteration",
        "trial_id",
        "date",
        "time_this_iter_s",
        "time_total_s",
        "pid",
        "hostname",
        "node_ip",
        "config",
        "time_since_restore",
        "iterations_since_restore",
    }
    assert {"val_acc", "val_loss", "train_loss", "epoch_seconds"} <= set(first)
    assert "test_acc" not in first  # only the last epoch reports the test set
    assert {"test_acc", "test_loss", "train_seconds_total"} <= set(last)
    assert set(last) - set(first) <= FINAL_METRICS


def test_points_lie_in_the_sweeps_space(bench: ModuleType) -> None:
    spec, _ = bench.make_spec("t", "sqlite:///unused.db")
    ranges = spec.ranges()
    rng = random.Random(0)
    for _ in range(50):
        point = bench.sample_point(ranges, rng)
        assert set(point) == set(ranges)
        for key, value in point.items():
            r = ranges[key]
            assert r.low <= value <= r.high
            assert isinstance(value, int) == bool(r.integer)


def test_flags_and_the_plan_of_runs(bench: ModuleType) -> None:
    assert bench.parse_writers("1,default,4") == [1, None, 4]
    assert bench.parse_processes("0, 2") == [0, 2]
    assert bench.parse_args([]).processes == [0]
    assert bench.parse_args([]).bulk == [True]  # as a sweep writes
    assert bench.parse_args(["--bulk", "1,0"]).bulk == [True, False]
    with pytest.raises(Exception, match="--bulk must be among 0, 1, but got 2"):
        bench.parse_bulk("1,2")
    for bad in ("-1", "x", "", "33"):
        with pytest.raises(Exception, match="--processes"):
            bench.parse_processes(bad)
    for bad in ("0", "x", ""):
        with pytest.raises(Exception, match="--writers"):
            bench.parse_writers(bad)
    with pytest.raises(SystemExit):
        bench.parse_args(["--store", "sqlite,files"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--trials", "0"])
    assert bench.parse_args([]).store == ["sqlite", "http"]
    # A tracker with writers: its default everywhere, and one writer against it over HTTP.
    assert bench.plan(["sqlite", "http"], None, True) == [
        ("sqlite", None),
        ("http", 1),
        ("http", None),
    ]
    assert bench.plan(["http"], [2, 8], True) == [("http", 2), ("http", 8)]
    # The same server under gunicorn is asked for by name, and runs as http does.
    assert bench.parse_args(["--store", "gunicorn"]).store == ["gunicorn"]
    assert bench.plan(["gunicorn"], None, True) == [("gunicorn", 1), ("gunicorn", None)]
    # ... with the options the server infra/ starts has.
    up = (ROOT / "infra" / "local" / "up.sh").read_text()
    assert f'--gunicorn-opts "{bench.GUNICORN_OPTS}"' in up
    # A tracker without it: one run per store, whatever --writers says.
    assert bench.plan(["sqlite", "http"], [2], False) == [("sqlite", None), ("http", None)]


# -- end to end ----------------------------------------------------------------------------------


def check_output(out: str, store: str, n: int) -> list[list[float]]:
    """The table's rows for ``store``: sane numbers, and every record found."""
    assert "## mlflow_throughput: MLflow recording through MLflowTracker" in out
    assert "- machine:" in out and "- code:" in out and "- command:" in out
    assert "- load average (1/5/15 min): before" in out
    header, rows = table(out)
    assert header == COLUMNS
    assert rows and all(r[0] == store for r in rows)
    parsed = []
    for r in rows:
        assert r[2] in ("bulk", "API")
        assert numbers(r[3]) == [n]
        wall, per_min = numbers(r[4])[0], numbers(r[5])[0]
        assert wall > 0 and per_min > 0
        # wall is printed to 0.01 s, trials/min to 1
        assert 60 * n / (wall + 0.005) - 1 <= per_min <= 60 * n / (wall - 0.005) + 1
        if "process" in r[1]:
            assert r[7] == "-"  # made in the writer processes, not seen by this one
        elif r[2] == "API":
            assert numbers(r[7])[0] >= 3  # at least create, log and close each child run
        else:
            assert 0 < numbers(r[7])[0] <= 1  # transactions of several runs' writes
        assert numbers(r[9])[0] > 0  # driver CPU
        parsed.append([numbers(c)[0] if numbers(c) else float("nan") for c in r[3:]])
    found = re.findall(
        rf"- all recorded \({store}, writers [^)]*\), (?:bulk|API)\): {n} children "
        rf"\(FINISHED {n}\), "
        rf"0 RUNNING, {n}/{n} FINISHED with val_acc and test_acc \((\d+) metrics each\), "
        rf"{n + 1} runs in the experiment",
        out,
    )
    assert len(found) == len(rows), out
    assert all(int(k) >= 15 for k in found)  # the last epoch's metrics, test_acc included
    assert "MISSING" not in out
    return parsed


def test_twenty_trials_on_sqlite(tmp_path: Path) -> None:
    args = ("--trials", "20", "--store", "sqlite", "--processes", "0,2", "--bulk", "1,0")
    proc = run_script(tmp_path, *args, timeout=300)
    check_output(proc.stdout, "sqlite", 20)
    _, rows = table(proc.stdout)
    assert len(rows) == 4
    assert all(r[8] == "-" and r[10] == "-" for r in rows)  # no HTTP requests, no server
    # SQLite's writes go through one writer thread (the tracker's default for SQLite), then
    # through two writer processes, each in bulk rounds and through MLflow's API.
    assert [r[1:3] for r in rows] == [
        ["default (1)", "bulk"],
        ["default (1)", "API"],
        ["default (2 processes)", "bulk"],
        ["default (2 processes)", "API"],
    ]
    assert re.search(r"their start-up before the timing: \d+\.\d s of CPU in all", proc.stdout)
    assert "View run" not in proc.stdout


def test_twenty_trials_on_postgresql_in_bulk_and_through_the_api(tmp_path: Path) -> None:
    import psycopg2

    args = ("--trials", "20", "--store", "postgresql", "--bulk", "1,0")
    proc = run_script(tmp_path, *args, timeout=300)
    check_output(proc.stdout, "postgresql", 20)
    _, rows = table(proc.stdout)
    assert [r[2] for r in rows] == ["bulk", "API"]
    assert all(numbers(r[10])[0] > 0 for r in rows)  # the database's backends worked
    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    try:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'flatsweep_bench_%'")
        assert cur.fetchone() == (0,)  # dropped
    finally:
        conn.close()


@pytest.mark.cluster
def test_twenty_trials_on_the_postgresql_backed_http_server(tmp_path: Path) -> None:
    import psycopg2

    def databases() -> set[str]:
        conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
        try:
            cur = conn.cursor()
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE 'flatsweep_bench_%'")
            return {name for (name,) in cur.fetchall()}
        finally:
            conn.close()

    before = databases()
    proc = run_script(
        tmp_path,
        *("--trials", "20", "--store", "http", "--warmup", "5", "--server-workers", "2"),
        *("--writers", "1", "--bulk", "1,0"),
        timeout=900,
    )
    rows = check_output(proc.stdout, "http", 20)
    _, cells = table(proc.stdout)
    assert [(r[1].split(" ")[0], r[2]) for r in cells] == [("1", "bulk"), ("1", "API")]
    for r in cells:
        assert numbers(r[8])[0] >= numbers(r[7])[0]  # each client call is at least 1 request
        assert numbers(r[10])[0] > 0  # the server worked
    assert len(rows) == 2
    # Bulk: the server (--app-name flatsweep) took the trials in rounds, a fraction of a
    # request each; API: three requests a trial, one run created per trial.
    assert numbers(cells[0][8])[0] < 1 and numbers(cells[1][8])[0] >= 3
    assert "POST /api/2.0/flatsweep/runs/bulk-write" in proc.stdout
    assert "POST runs/create 1.00" in proc.stdout
    # The server runs as infra/ runs it: the CLI, uvicorn and its 2 workers (and perhaps a
    # multiprocessing helper), not MLflow 3's job runner and huey consumers (13 processes).
    procs = [
        int(n) for n in re.findall(r"the server's process group: (\d+) processes", proc.stdout)
    ]
    assert len(procs) == len(rows) and all(n <= 2 + 3 for n in procs), procs
    # the driver's environment stops set_terminated from reading each run back to print it
    assert "GET runs/get 1.00" not in proc.stdout
    assert databases() == before  # the benchmark's database was dropped
    assert "View run" not in proc.stdout
