"""docs/mlflow-ui.md, its screenshots and docs/mlflow_screenshot.py agree with each other.

No browser and no MLflow server here: these check the files, the PNGs' size limit and that the
demo sweep the script runs is still a valid spec.
"""

from __future__ import annotations

import importlib.util
import re
import struct
from pathlib import Path
from types import ModuleType

import yaml

from sweeps.spec import load_spec

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGE = DOCS / "mlflow-ui.md"
PNG_LIMIT = 400_000  # bytes, per screenshot


def _script() -> ModuleType:
    """docs/mlflow_screenshot.py (not a package): its top level imports only the stdlib."""
    path = DOCS / "mlflow_screenshot.py"
    spec = importlib.util.spec_from_file_location("mlflow_screenshot", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _images(text: str) -> list[str]:
    # One image a line; its alt text may itself hold brackets ("[+]").
    return re.findall(r"^!\[.*\]\(([^)\s]+)\)\s*$", text, flags=re.MULTILINE)


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_every_screenshot_in_the_page_exists_is_small_and_is_one_the_script_writes() -> None:
    shots = _script().SHOTS
    images = _images(PAGE.read_text())
    assert images, "docs/mlflow-ui.md shows no screenshot"
    for name in images:
        path = DOCS / name
        assert path.is_file(), f"docs/mlflow-ui.md shows {name}, which does not exist"
        assert path.stat().st_size < PNG_LIMIT, f"{name}: {path.stat().st_size} bytes"
        assert _png_size(path) == (1280, 800), name
        assert name in shots, f"{name} is not written by docs/mlflow_screenshot.py"
    assert sorted(set(images)) == sorted(shots), "the page and the script list other PNGs"


def test_no_stale_screenshot_is_left_in_docs() -> None:
    shown = set(_images(PAGE.read_text()))
    stale = [p.name for p in DOCS.glob("mlflow-ui*.png") if p.name not in shown]
    assert not stale, f"screenshots no page shows: {stale}"


def test_the_demo_sweep_is_a_valid_spec_with_every_stage(tmp_path: Path) -> None:
    raw = _script().demo_spec("screenshot-demo")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = load_spec(path)
    assert spec.name == "screenshot-demo"
    assert spec.num_samples == 6 and spec.train.epochs == 6
    # Finalists and a baseline, so the demo has a verdict and a report to photograph.
    assert spec.finalists.top_k == 2 and spec.finalists.seeds == 2
    assert spec.finalists.baseline
