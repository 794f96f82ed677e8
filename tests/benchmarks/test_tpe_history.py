"""benchmarks/tpe_history.py in its --quick mode: its three arms, one seed, recorded to a file.

Speed and search quality are measured, never asserted; what is asserted is that the section
is complete and that each number is what its column says.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "tpe_history.py"


def test_quick_run_appends_every_arm(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--results", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    text = results.read_text()
    assert text.startswith("# Benchmark results")
    assert "## tpe_history:" in text and "--quick" in text and "- machine: CPU " in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    header, *data = rows
    assert header.count("ms per trial at") == 3  # at 200, 400 and 600 trials
    assert [r.split("|")[1].strip() for r in data] == [
        "Optuna's TPE",
        "the service's (incremental)",
        "bounded, max_history 250",
    ]
    # The service's TPE makes Optuna's suggestions: the same search, to the last digit.
    optuna_arm, service, _ = ([c.strip() for c in r.strip("|").split("|")] for r in data)
    assert optuna_arm[4:] == service[4:]
    for row in data:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(float(c) > 0 for c in cells[1:4])  # ms per trial
        best = float(cells[4])
        last = [float(x) for x in re.findall(r"-?\d+\.\d+", cells[5])]
        assert len(last) == 2 and last[0] == last[1]  # one seed: its value, and the mean
        assert last[0] < best  # a mean of 500 values is below their maximum
    assert "(quick: one seed, not a measurement)" in text


def test_bad_arguments_are_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--trials", "10", "--no-record"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--trials must be >= 500" in proc.stderr.strip().splitlines()[-1]
