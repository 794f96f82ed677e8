"""benchmarks/step_cost.py end to end in its --quick mode: one row per method, sane values.

Speed is measured, never asserted: no timing thresholds here.
"""

from __future__ import annotations

import math
from pathlib import Path

from tests._scripts import load_benchmark

# (label, closure calls): ERM 1, SAM 2, AMP 1 + K for K = 1, 2, 3, AWP 1 + inner_steps.
EXPECTED = [("ERM", 1), ("SAM", 2), ("AMP K=1", 2), ("AMP K=2", 3), ("AMP K=3", 4), ("AWP", 2)]


def table_rows(text: str) -> list[list[str]]:
    """The data rows of the last markdown table in ``text``, as lists of cells."""
    lines = text.rstrip().splitlines()
    rows: list[list[str]] = []
    for line in reversed(lines):
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    rows.reverse()
    return rows[2:]  # drop the header and the |---| rule


def test_quick_run_appends_one_row_per_method(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    step_cost = load_benchmark("step_cost")

    rows = step_cost.main(["--quick", "--device", "cpu", "--results", str(results)])

    assert [(r["method"], r["closure_calls"]) for r in rows] == EXPECTED
    for r in rows:
        assert r["median_s"] > 0 and r["mean_s"] > 0 and r["std_s"] >= 0
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
    assert rows[0]["ratio"] == 1.0

    text = results.read_text()
    assert text.startswith("# Benchmark results")  # the intro of a new file
    assert "## step_cost — " in text and "--quick" in text and "no PGD" in text
    cells = table_rows(text)
    assert [(c[0], int(c[1])) for c in cells] == EXPECTED
    for c in cells:
        assert float(c[2]) > 0  # median seconds
        mean, std = (float(v) for v in c[3].split("±"))
        assert mean > 0 and std >= 0


def test_second_run_appends_without_repeating_the_intro(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nearlier entries\n")
    step_cost = load_benchmark("step_cost")

    step_cost.main(["--quick", "--device", "cpu", "--repeats", "1", "--results", str(results)])

    text = results.read_text()
    assert text.startswith("# Benchmark results\n\nearlier entries\n")
    assert text.count("# Benchmark results") == 1 and text.count("## step_cost") == 1
    assert len(table_rows(text)) == len(EXPECTED)
