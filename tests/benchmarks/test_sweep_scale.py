"""benchmarks/sweep_scale.py: its measuring helpers (fast), and a 12-trial run end to end.

The end-to-end run starts two drivers, each with its own local Ray (about 1.5-2 min on 2 busy
cores), so it is a ``cluster`` test. Speed is measured, never asserted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests._scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "sweep_scale.py"
COLUMNS = [
    "N",
    "service wall s",
    "plain wall s",
    "ratio",
    "training s/trial (service / plain)",
    "driver CPU ms/trial (service + its MLflow writer process / plain)",
    "peak RSS MB (service driver + writer process / plain)",
    "MLflow calls/trial (driver process)",
    "MLflow bytes/trial (driver process)",
    "Optuna ms/suggestion, first → last 10% (service)",
    "(plain)",
    "lost records",
]


@pytest.fixture(scope="module")
def scale() -> ModuleType:
    return load_benchmark("sweep_scale")


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", cell.replace("*", ""))]


def first_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and data rows of the first markdown table in ``text``."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    start = text.splitlines().index(lines[0])
    block = []
    for line in text.splitlines()[start:]:
        if not line.startswith("|"):
            break
        block.append([c.strip() for c in line.strip().strip("|").split("|")])
    return block[0], block[2:]


# -- the measuring helpers -------------------------------------------------------------------


def test_bucket_means_average_each_tenth_in_call_order(scale: ModuleType) -> None:
    seconds = [float(i) for i in range(20)]  # 2 calls per bucket
    assert scale.bucket_means(seconds) == [0.5 + 2 * b for b in range(10)]
    # Fewer calls than buckets: empty buckets are None, never a made-up 0.
    means = scale.bucket_means([1.0, 3.0, 5.0])
    assert [m for m in means if m is not None] == [1.0, 3.0, 5.0]
    assert means.count(None) == 7
    assert means[0] == 1.0 and means[-1] is None


def test_payload_bytes_counts_keys_values_and_mlflow_entities(scale: ModuleType) -> None:
    from mlflow.entities import Metric, Param

    assert scale.payload_bytes(None) == 0
    assert scale.payload_bytes("héllo") == 6  # UTF-8 bytes, not characters
    assert scale.payload_bytes({"ab": 1.5}) == 2 + 3
    assert scale.payload_bytes([Param("lr", "0.1")]) == len("key") + 2 + len("value") + 3
    metric = scale.payload_bytes(Metric("val_acc", 0.5, 1000, 2))
    assert metric >= len("val_acc") + len("0.5") + len("1000") + 1


def test_meter_measures_outermost_calls_and_skips_what_a_class_does_not_define(
    scale: ModuleType,
) -> None:
    class Client:
        def outer(self, text: str) -> str:
            return self.inner(text) + "!"

        def inner(self, text: str) -> str:
            return text.upper()

    class Child(Client):
        pass

    meter = scale.Meter()
    seen: list[Any] = []
    assert meter.wrap(Client, "outer", "c", size=True, observe=lambda a, k, o, s, d: seen.append(o))
    assert meter.wrap(Client, "inner", "c", size=True)
    assert not meter.wrap(Child, "outer", "c")  # inherited: measured where it is defined
    assert not meter.wrap(Client, "missing", "c")
    meter.start()
    assert Client().outer("abc") == "ABC!"
    # inner ran inside outer (same group, same thread): one call, one payload.
    assert dict(meter.calls) == {"c.outer": 1}
    assert meter.bytes["c.outer"] == 3
    assert seen == ["ABC!"]
    # Another thread's calls are its own, and are timed under its thread's name.
    worker = threading.Thread(target=lambda: Client().inner("x"), name="writer")
    worker.start()
    worker.join()
    assert meter.calls["c.inner"] == 1 and "c@writer" in meter.thread_seconds
    meter.paused = True
    Client().outer("z")
    assert meter.calls["c.outer"] == 1


def arm(name: str, wall: float) -> dict[str, Any]:
    """One arm's measurements at N = 10, as a driver subprocess returns them (the summary's)."""
    return {
        "arm": name,
        "n": 10,
        "wall_s": wall,
        "epoch_seconds": wall / 20,
        "driver_cpu_s": 0.5,
        "rss_peak_mb": 900.0,
        "writer_cpu_s": 0.2,
        "writer_rss_peak_mb": 250.0,
        "suggest_s": [0.001 * (i + 1) for i in range(10)],
        "calls": {"mlflow.log_batch": 30},
        "seconds": {"mlflow.log_batch": 1.5},
        "bytes": {"mlflow.log_batch": 10_000},
    }


def test_table_and_lost_line_from_measurements(scale: ModuleType) -> None:
    svc, plain = arm("service", 30.0), arm("plain", 20.0)
    svc["records"] = {
        "parents": 1,
        "parent_status": ["FINISHED"],
        "children": 10,
        "children_status": {"FINISHED": 10},
        "running": 0,
        "complete": 10,
        "lost": 0,
        "ok": True,
    }
    cells = [c.strip() for c in scale.summary_row(10, svc, plain).strip("|").split("|")]
    assert len(cells) == len(COLUMNS)
    assert numbers(cells[3]) == [1.5]  # 30 / 20
    assert numbers(cells[4]) == [0.15, 0.1]  # Σ epoch_seconds / 10 trials, service / plain
    assert numbers(cells[5]) == [50.0, 20.0, 50.0]  # 0.5 s / 10 trials in ms, + the writer's
    assert numbers(cells[6]) == [900.0, 250.0, 900.0]
    assert numbers(cells[7]) == [3.0] and numbers(cells[8]) == [1000.0]
    assert numbers(cells[9]) == [1.0, 10.0]  # first and last tenth, ms
    line = scale.nothing_lost_line(svc)
    assert line.startswith("- nothing lost at N=10:") and "10/10 FINISHED" in line
    svc["records"].update(children=9, complete=8, running=1, lost=2, ok=False)
    svc["records"]["children_status"] = {"FINISHED": 8, "RUNNING": 1}
    assert "NOT ALL RECORDS (2 lost)" in scale.nothing_lost_line(svc)


def test_repeats_give_a_row_each_and_the_ratios_median_and_range(scale: ModuleType) -> None:
    runs = [
        {"n": 10, "rep": 1, "service": arm("service", 30.0), "plain": arm("plain", 20.0)},
        {"n": 10, "rep": 2, "service": arm("service", 24.0), "plain": arm("plain", 20.0)},
        {"n": 10, "rep": 3, "service": arm("service", 21.0), "plain": arm("plain", 20.0)},
        {"n": 10, "rep": 4, "service": arm("service", 1.0), "plain": arm("plain", 20.0)},
    ]
    for run in runs:
        run["service"]["records"] = {"lost": 0, "ok": True}
    runs[3]["service"]["failed"] = "exit 1"  # a failed run counts in no ratio
    (line,) = scale.spread_lines(runs, 4)
    assert line == (
        "- ratio at N=10 over 3 of 4 runs: median **1.20**, range 1.05–1.50 "
        "(in run order: 1.50, 1.20, 1.05)"
    )
    assert scale.spread_lines(runs[:1], 1) == []  # one run: its row says it all
    row = scale.summary_row(10, runs[1]["service"], runs[1]["plain"], "2/4")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == len(COLUMNS) and cells[0] == "10 (2/4)" and numbers(cells[3]) == [1.2]
    failed = scale.summary_row(10, runs[3]["service"], runs[3]["plain"], "4/4")
    assert failed.startswith("| 10 (4/4) | failed: service exit 1 |")
    assert failed.count("|") == len(COLUMNS) + 1
    assert scale.nothing_lost_line(
        runs[0]["service"] | {"records": None, "failed": "x"}, "1/4"
    ) == ("- N=10 (run 1/4): service run failed (x): records not checked")
    assert scale.parse_args(["--repeats", "3"]).repeats == 3
    with pytest.raises(SystemExit):
        scale.parse_args(["--repeats", "0"])


def test_rss_slope_is_the_growth_from_a_quarter_to_95_percent_of_the_trials(
    scale: ModuleType,
) -> None:
    # 1 MB per 10 trials, then a one-off 100 MB at the end (the report's imports, as the
    # last trials run): the slope is the per-trial growth, not the one-off.
    points = [(n, 500.0 + n / 10) for n in range(50, 1001, 50)]
    points[-1] = (1000, points[-1][1] + 100.0)
    assert scale.rss_slope({"rss_by_trials": points}) == "525 → 595 (100)"
    assert scale.rss_slope({"rss_by_trials": points[:1]}) == "-"


def test_flags_and_a_tracking_uri_without_credentials(scale: ModuleType) -> None:
    with pytest.raises(SystemExit):
        scale.parse_args(["--trials", "0"])
    assert scale.parse_args(["--trials", "12,30"]).trials == [12, 30]
    assert scale.redact("http://user:secret@host:5000") == "http://host:5000"
    assert scale.redact("postgresql://u:p@db/mlflow") == "postgresql://db/mlflow"
    assert scale.redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.cluster
def test_twelve_trials_side_by_side(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--trials",
            "12",
            "--no-record",
            "--results",
            str(results),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        # The writer process the benchmark's 1000s of trials get by default (12 would get
        # threads of the driver: runner.PROCESS_WRITER_MIN_TRIALS).
        env={**os.environ, "FLATSWEEP_MLFLOW_PROCESS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not results.exists()  # --no-record
    out = proc.stdout
    assert "## sweep_scale: the service against plain Ray Tune, N trials" in out
    assert "load average at start" in out and "os.cpu_count()" in out
    assert re.search(r"- command: `[^`]*` with (\S+, )*FLATSWEEP_MLFLOW_PROCESS=1\b", out)
    header, rows = first_table(out)
    assert header == COLUMNS
    (row,) = rows
    assert numbers(row[0]) == [12]
    service_wall, plain_wall, ratio = (numbers(c)[0] for c in row[1:4])
    assert service_wall > 0 and plain_wall > 0
    assert ratio == pytest.approx(service_wall / plain_wall, rel=0.02)
    training = numbers(row[4])  # seconds of training per trial, service / plain
    assert len(training) == 2 and all(0 < t < 5 for t in training)
    for cell in row[5:7]:  # CPU and peak RSS: the service's driver, its writer, plain's driver
        values = numbers(cell)
        assert len(values) == 3 and all(v > 0 for v in values)
    # The child runs' writes (3 calls each, tests/sweeps/test_writer.py) are the writer
    # process's: the driver itself makes the parent's few calls only.
    assert numbers(row[7])[0] < 3
    for cell in row[9:11]:  # Optuna ms per suggestion, first and last tenth
        values = numbers(cell)
        assert len(values) == 2 and all(v > 0 for v in values)
    assert numbers(row[11]) == [0]
    assert (
        "- nothing lost at N=12: MLflow holds 1 parent (FINISHED) and 12 children "
        "(FINISHED 12), 0 RUNNING, 12/12 FINISHED with val_acc and test_acc" in out
    )
    # Both arms did the same work: 12 trials of 2 epochs each, seen by the driver.
    assert "| trials completed (driver saw) / errors | 12 / 0 | 12 / 0 |" in out
    assert "| Tune results (epochs) seen by the searcher | 24 | 24 |" in out
    # The driver's CPU between completions, per tenth of the 11 gaps: ten numbers per arm.
    (cpu_row,) = [
        line for line in out.splitlines() if line.startswith("| driver CPU ms per trial ")
    ]
    for cell in cpu_row.split("|")[2:4]:
        values = numbers(cell)
        assert len(values) == 10 and all(v >= 0 for v in values) and sum(values) > 0
