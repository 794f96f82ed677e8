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
# What docs/mlflow_screenshot.py writes and docs/mlflow-ui.md shows, in the page's order.
EXPECTED = (
    "mlflow-ui.png",
    "mlflow-ui-children.png",
    "mlflow-ui-compare.png",
    "mlflow-ui-compare-metric.png",
    "mlflow-ui-run.png",
    "mlflow-ui-report.png",
    "mlflow-ui-report-figure.png",
    "optuna-dashboard.png",
)


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
    assert tuple(shots) == EXPECTED, "the script writes other screenshots"
    images = _images(PAGE.read_text())
    assert tuple(images) == EXPECTED, "the page shows other screenshots, or in another order"
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
    pngs = [*DOCS.glob("mlflow-ui*.png"), *DOCS.glob("optuna-dashboard*.png")]
    stale = [p.name for p in pngs if p.name not in shown]
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


def test_the_page_gives_the_dashboard_command_for_the_default_study_storage() -> None:
    text = PAGE.read_text()
    assert "## The Optuna study" in text
    study = text.split("## The Optuna study", 1)[1].split("\n## ", 1)[0]
    # The storage beside the default tracking store, as sweeps.spec derives it.
    assert "optuna-dashboard sqlite:///$(pwd)/flatsweep.optuna.db" in study
    assert "--host 127.0.0.1" in study and "optuna-dashboard.png" in study


class _Pipe:
    """Stands in for Chromium's end of the DevTools pipe: records what the script sends."""

    def __init__(self, script: ModuleType) -> None:
        self.cdp = script.Chromium.__new__(script.Chromium)  # no browser started
        self.cdp.origin, self.cdp.session, self.cdp.frames = "http://127.0.0.1:5000", "tab", []
        self.cdp._id, self.cdp._replies = 0, {}
        self.sent: list[tuple[str, dict, bool | str]] = []

        def post(method: str, params: dict | None, session: bool | str) -> int:
            self.sent.append((method, params or {}, session))
            return 0

        self.cdp._post = post


def _paused(url: str, session: str) -> dict:
    return {
        "method": "Fetch.requestPaused",
        "sessionId": session,
        "params": {"requestId": "r1", "request": {"url": url}},
    }


def test_a_frame_of_the_tab_gets_the_same_request_filter_before_it_runs() -> None:
    pipe = _Pipe(_script())
    pipe.cdp._dispatch(
        {
            "method": "Target.attachedToTarget",
            "params": {"sessionId": "frame1", "targetInfo": {"type": "iframe"}},
        }
    )
    assert [(m, s) for m, _, s in pipe.sent] == [
        ("Fetch.enable", "frame1"),  # first the filter,
        ("Runtime.runIfWaitingForDebugger", "frame1"),  # then it may load
    ]
    assert pipe.cdp.frames == ["frame1"]
    pipe.sent.clear()
    # Answered in the session that asked: the local server and data URIs pass, the rest fails.
    pipe.cdp._dispatch(_paused("data:image/png;base64,AAAA", "frame1"))
    pipe.cdp._dispatch(_paused("https://fonts.example.com/x.woff", "frame1"))
    pipe.cdp._dispatch(_paused("http://127.0.0.1:5000/ajax-api/x", "tab"))
    assert [(m, s) for m, _, s in pipe.sent] == [
        ("Fetch.continueRequest", "frame1"),
        ("Fetch.failRequest", "frame1"),
        ("Fetch.continueRequest", "tab"),
    ]
    pipe.cdp._dispatch({"method": "Target.detachedFromTarget", "params": {"sessionId": "frame1"}})
    assert pipe.cdp.frames == []


def test_the_local_origin_check_does_not_let_a_longer_port_through() -> None:
    pipe = _Pipe(_script())
    pipe.cdp._dispatch(_paused("http://127.0.0.1:50001/", "tab"))  # origin is :5000
    assert [m for m, _, _ in pipe.sent] == ["Fetch.failRequest"]
