"""benchmarks/ray_start.py in its --quick mode: one fresh Ray per arm, side by side.

Speed is measured, never asserted. What is asserted is the behaviour the service's setting
rests on: its own Ray starts no idle workers, Ray's default starts some, and Tune's trials
never run on them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "ray_start.py"

pytestmark = pytest.mark.cluster


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", cell)]


def test_quick_run_appends_both_arms(tmp_path: Path) -> None:
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
    assert "--quick" in text and "UTC" in text and "- machine: CPU " in text
    rows = {
        cells[0]: cells[1:]
        for line in text.splitlines()
        if line.startswith("| service") or line.startswith("| default")
        for cells in [[c.strip() for c in line.strip().strip("|").split("|")]]
    }
    assert set(rows) == {"service", "default"}
    for arm, (starts, init, _idle, fit, trials, cpu) in rows.items():
        assert numbers(starts) == [1], arm
        assert numbers(init)[0] > 0 and numbers(fit)[0] > 0 and numbers(cpu)[0] > 0, arm
        # Both trials ran, and never in a worker Ray had prestarted.
        assert numbers(trials) == [2, 0], (arm, trials)
    assert numbers(rows["service"][2])[0] == 0  # the service's own Ray: no idle workers
    assert numbers(rows["default"][2])[0] >= 1  # Ray's default prestarts some
