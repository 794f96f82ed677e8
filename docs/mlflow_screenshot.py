"""Photograph a finished sweep in the MLflow UI, as a fresh browser shows it.

Usage (from the repository root)::

    .venv/bin/python docs/mlflow_screenshot.py                     # runs a small demo sweep
    .venv/bin/python docs/mlflow_screenshot.py \\
        --tracking-uri sqlite:///$(pwd)/flatsweep.db --sweep quickstart  # an existing sweep

Without ``--tracking-uri`` it writes a shrunk copy of ``examples/quickstart.yaml`` named
``screenshot-demo`` (6 search trials of 6 epochs, ASHA after epoch 2, then the top 2 configs and
ERM on 2 seeds; 1500 MNIST-1D training samples) into a temporary directory, checks it with
``sweeps validate`` and runs it with ``sweeps run --quiet`` on a private local Ray instance and a
throw-away SQLite store (1-2 minutes on 2 CPUs). The project's ``flatsweep.db`` is not touched.

It then starts ``mlflow ui`` on a free localhost port and drives headless Chromium (the Debian
``chromium`` package) with a new, empty profile, so the UI starts from its defaults exactly as in
a browser that never saw it. Each step is a real mouse click or drag on what a user would click;
a control that cannot be found stops the script, so the docs never describe clicks that no longer
work. It writes these 1280x800 PNGs (:data:`SHOTS`) into ``--out-dir`` (default ``docs/``):

``mlflow-ui.png``
    ``#/experiments/<id>/runs`` before any click: the runs table, parent collapsed.
``mlflow-ui-children.png``
    after closing the assistant panel, clicking the parent's **[+]** and dragging the *Run Name*
    column wider: the child runs by name, with their colours.
``mlflow-ui-compare.png``
    after the second click, the chart-view button: every visible run's metrics, one line per run.
``mlflow-ui-compare-metric.png``
    the sweep's objective typed into *Search metric charts*, its chart full screen.
``mlflow-ui-run.png``
    the parent run's page (a click on its name): the description with the verdict, ``final.*``.
``mlflow-ui-report.png``
    the parent's *Artifacts* tab with ``report/report.html`` selected (MLflow shows it in a
    sandboxed frame).
``mlflow-ui-report-figure.png``
    the same frame scrolled to the report's first figure, to show that its figures display.
``optuna-dashboard.png``
    ``optuna-dashboard <storage>`` (the parent's ``flatsweep.optuna_storage`` tag) on another
    free port, in a second fresh browser: the study's page with its history plot.

It also logs what it found (columns of the fresh table, runs hidden in the chart view, how many of
``report.html``'s figures displayed and how many of ``report.md``'s were left as text, the trials
in the dashboard's history plot), which is how ``docs/mlflow-ui.md`` is kept honest.

The browser is driven over the DevTools protocol on ``--remote-debugging-pipe`` (NUL-separated
JSON on file descriptors 3 and 4: no websocket package needed). Every request to anything but the
local server is failed, in the page and in its out-of-process frames alike, and downloads are
denied. The servers' process groups and Chromium are always stopped, and the temporary directory
removed, at the end.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEMO_NAME = "screenshot-demo"
WIDTH, HEIGHT = 1280, 800  # px; a common laptop viewport, and small PNGs
PNG_LIMIT = 400_000  # bytes per PNG in docs/
RUN_NAME_WIDTH = 400  # px the *Run Name* column is dragged to (MLflow's default is 190)
SHOTS = (
    "mlflow-ui.png",
    "mlflow-ui-children.png",
    "mlflow-ui-compare.png",
    "mlflow-ui-compare-metric.png",
    "mlflow-ui-run.png",
    "mlflow-ui-report.png",
    "mlflow-ui-report-figure.png",
    "optuna-dashboard.png",
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]


def log(msg: str) -> None:
    print(f"[mlflow_screenshot] {msg}", file=sys.stderr, flush=True)


# -- the demo sweep -------------------------------------------------------------------------------


def demo_spec(name: str) -> dict[str, Any]:
    """``examples/quickstart.yaml`` shrunk to 1-2 minutes on 2 CPUs, every stage kept."""
    import yaml

    spec = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    spec["name"] = name
    spec["num_samples"] = 6
    spec["train"]["epochs"] = 6
    spec["train"]["data"]["num_train"] = 1500
    # ASHA may stop trials after epoch 2, so the demo has stopped_early=1 children too.
    spec["scheduler"]["grace_period"] = 2
    spec["scheduler"]["reduction_factor"] = 2
    spec["finalists"] = {"top_k": 2, "seeds": 2}
    return spec


def run_demo_sweep(workdir: Path, name: str, timeout: float = 1200) -> str:
    """Run :func:`demo_spec` in ``workdir``; return its tracking URI."""
    import yaml

    path = workdir / "sweep.yaml"
    path.write_text(
        "# Written by docs/mlflow_screenshot.py: examples/quickstart.yaml, shrunk.\n"
        + yaml.safe_dump(demo_spec(name), sort_keys=False)
    )
    uri = f"sqlite:///{workdir / 'flatsweep.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "FLATSWEEP_STORAGE": str(workdir / "ray_results"),
        # A private, throw-away Ray instance: never join a cluster already running on this
        # machine (ray.init() would), and keep its sockets and session files in workdir.
        "RAY_ADDRESS": "local",
        "RAY_TMPDIR": str(workdir),
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        # The report's scratch directory (tempfile) lands in workdir and goes with it.
        "TMPDIR": str(workdir),
    }
    sweeps = str(BIN / "sweeps")
    subprocess.run([sweeps, "validate", str(path)], cwd=workdir, env=env, check=True)
    log(f"running the demo sweep {name!r} in {workdir} (1-2 minutes)")
    # Own process group, so a sweep that hangs is stopped with its Ray processes.
    sweep = subprocess.Popen(
        [sweeps, "run", str(path), "--quiet"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        rc = sweep.wait(timeout)
    finally:
        stop(sweep, group=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sweep.pid, signal.SIGTERM)  # any Ray process the sweep left behind
    if rc != 0:
        raise SystemExit(f"the demo sweep failed (exit code {rc})")
    return uri


# -- mlflow ui ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_ui(uri: str, port: int, logfile: Path) -> subprocess.Popen:
    mlflow = BIN / "mlflow"
    cmd = [str(mlflow)] if mlflow.exists() else [sys.executable, "-m", "mlflow"]
    cmd += ["ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    # Served as infra/local/up.sh serves it (gunicorn, see docs/cluster.md), so the pictures
    # are of the UI users get.
    cmd += ["--gunicorn-opts", "--timeout 300 --no-control-socket"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    # Own process group: the server's workers are stopped together with it.
    return subprocess.Popen(
        cmd, stdout=logfile.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def wait_healthy(proc: subprocess.Popen, base: str, logfile: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mlflow ui exited ({proc.returncode}):\n"
                + logfile.read_text(errors="replace")[-2000:]
            )
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                if r.status == 200:
                    return
        time.sleep(1)
    raise RuntimeError(f"mlflow ui not healthy after {timeout:.0f} s")


def stop(proc: subprocess.Popen | None, group: bool) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        proc.wait(5)


# -- headless Chromium over the DevTools protocol --------------------------------------------


class Chromium:
    """A minimal DevTools-protocol client over ``--remote-debugging-pipe``, new empty profile."""

    def __init__(self, binary: str, origin: str, width: int, height: int) -> None:
        self.origin, self.width, self.height = origin, width, height
        self.profile = tempfile.mkdtemp(prefix="flatsweep-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds_3_and_4() -> None:  # in the child, before exec: fd 3 = commands, fd 4 = replies
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        # close_fds=False keeps the inheritable fds 3 and 4; Python's own fds are close-on-exec.
        self.proc = subprocess.Popen(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            preexec_fn=fds_3_and_4,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self.session: str | None = None
        # Sessions of the page's out-of-process frames (MLflow shows an HTML artifact in a
        # sandboxed frame, its own DevTools target), newest last.
        self.frames: list[str] = []

    # transport
    def _read(self, timeout: float) -> dict[str, Any] | None:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._from_chrome], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def _post(self, method: str, params: dict | None, session: bool | str) -> int:
        """Send a command: to the browser, the tab (``True``) or the session named."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        sid = session if isinstance(session, str) else self.session if session else None
        if sid:
            msg["sessionId"] = sid
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        return self._id

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if "id" in msg:
            self._replies[msg["id"]] = msg
            return
        method, p = msg.get("method"), msg.get("params", {})
        sid = msg.get("sessionId", True)
        if method == "Fetch.requestPaused":
            # Only the local server: nothing leaves the machine, nothing is downloaded.
            url = p["request"]["url"]
            if url.startswith((self.origin + "/", "data:", "blob:")) or url == self.origin:
                self._post("Fetch.continueRequest", {"requestId": p["requestId"]}, sid)
            else:
                self._post(
                    "Fetch.failRequest",
                    {"requestId": p["requestId"], "errorReason": "BlockedByClient"},
                    sid,
                )
        elif method == "Target.attachedToTarget":
            # A frame or worker of the tab, paused before it runs: the same request filter
            # applies to it, then it may start.
            child = p["sessionId"]
            if p["targetInfo"]["type"] == "iframe":
                self.frames.append(child)
                self._post("Fetch.enable", {"patterns": [{"urlPattern": "*"}]}, child)
            self._post("Runtime.runIfWaitingForDebugger", None, child)
        elif method == "Target.detachedFromTarget" and p.get("sessionId") in self.frames:
            self.frames.remove(p["sessionId"])

    def call(
        self,
        method: str,
        params: dict | None = None,
        session: bool | str = True,
        timeout: float = 60,
    ) -> dict[str, Any]:
        i = self._post(method, params, session)
        deadline = time.monotonic() + timeout
        while i not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(method)
            msg = self._read(left)
            if msg is not None:
                self._dispatch(msg)
        reply = self._replies.pop(i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def pump(self, seconds: float) -> None:
        """Wait, answering paused requests meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self._read(left)
            if msg is not None:
                self._dispatch(msg)
        self._replies.clear()

    # page
    def open_tab(self) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        self.session = self.call(
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True},
            session=False,
        )["sessionId"]
        self.call("Browser.setDownloadBehavior", {"behavior": "deny"}, session=False)
        self.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]})
        self.call(
            "Target.setAutoAttach",
            {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True},
        )
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )

    def goto(self, url: str, settle: float = 1.0) -> None:
        self.call("Page.navigate", {"url": url})
        self.pump(settle)

    def js(self, expression: str, frame: bool = False) -> Any:
        """Evaluate ``expression`` in the tab, or (``frame``) in its newest out-of-process frame."""
        if frame and not self.frames:
            raise RuntimeError("no out-of-process frame to evaluate in")
        r = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.frames[-1] if frame else True,
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"JS error: {r['exceptionDetails'].get('text')} in {expression}")
        return r["result"].get("value")

    def wait_for(
        self, expression: str, what: str, timeout: float = 60, frame: bool = False
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                if self.js(f"!!({expression})", frame=frame):
                    return
            self.pump(0.5)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")

    # input: real mouse events, so a click lands only where a user's click would
    def _center(self, element: str) -> list[float] | None:
        return self.js(f"""(() => {{ const e = {element}; if (!e) return null;
            e.scrollIntoView({{block: 'nearest', inline: 'nearest'}});
            const r = e.getBoundingClientRect();
            return r.width ? [r.x + r.width / 2, r.y + r.height / 2] : null; }})()""")

    def _mouse(self, kind: str, x: float, y: float) -> None:
        self.call(
            "Input.dispatchMouseEvent",
            {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
        )

    def click(self, element: str, what: str, settle: float = 1.5, required: bool = True) -> bool:
        """Click the middle of ``element`` (a JS expression for one element)."""
        xy = self._center(element)
        if xy is None:
            if required:
                raise RuntimeError(f"cannot find {what} to click")
            log(f"no {what} to click")
            return False
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self._mouse(kind, *xy)
        self.pump(settle)
        return True

    def drag(self, element: str, dx: float, what: str) -> None:
        xy = self._center(element)
        if xy is None:
            raise RuntimeError(f"cannot find {what} to drag")
        x, y = xy
        self._mouse("mouseMoved", x, y)
        self._mouse("mousePressed", x, y)
        for i in range(1, 11):  # in steps, as a hand would: the grid follows mousemove
            self._mouse("mouseMoved", x + dx * i / 10, y)
        self._mouse("mouseReleased", x + dx, y)
        self.pump(1)

    def type_text(self, element: str, text: str, what: str) -> None:
        self.click(element, what, settle=0.3)
        self.call("Input.insertText", {"text": text})
        self.pump(2)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        optimise(path)
        log(f"wrote {path} ({path.stat().st_size // 1024} KB)")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", session=False, timeout=10)
        stop(self.proc, group=False)
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)
        # Chromium's helper processes can still write the profile a moment after it exits.
        for _ in range(5):
            shutil.rmtree(self.profile, ignore_errors=True)
            if not os.path.exists(self.profile):
                break
            time.sleep(1)


def optimise(path: Path, limit: int = PNG_LIMIT) -> None:
    """Re-save as a 256-colour palette PNG (UI screenshots have few colours) if Pillow is there."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256)
    small.save(path, optimize=True)
    if path.stat().st_size > limit:
        log(f"warning: {path.name} is {path.stat().st_size // 1024} KB, over {limit // 1000} KB")


# -- the screenshots ------------------------------------------------------------------------------


def q(css: str) -> str:
    """A JS expression for the first element matching ``css``."""
    return f"document.querySelector({json.dumps(css)})"


def by_text(text: str, within: str = "document") -> str:
    """A JS expression for the innermost visible element whose whole text is ``text``."""
    return f"""[...{within}.querySelectorAll('*')].reverse().find(e =>
        e.children.length <= 2 && e.innerText && e.innerText.trim() === {json.dumps(text)}
        && e.getBoundingClientRect().width > 0)"""


RUN_NAME = '[col-id="attributes.`Run Name`"]'
EXPAND = q(f".ag-pinned-left-cols-container {RUN_NAME} button")
PARENT_LINK = q(f".ag-pinned-left-cols-container {RUN_NAME} a")
RESIZE = q(f".ag-header-cell{RUN_NAME} .ag-header-cell-resize")
# The assistant panel opens by itself on a first visit; its close button is the only
# "Close" in the right-hand part of the window.
# The table / chart / artifact switch above the runs table: a radio input inside its label.
VIEW_BUTTON = "document.querySelector('input[value={}]')?.closest('label, button, span')"
# A markdown image, ``![alt](x.png)``, that the viewer left as text (it drops the "!").
RAW_IMAGE = r"/^!?\[[^\]]*\]\([^)]+\.png\)$/"
ASSISTANT_CLOSE = f"""[...document.querySelectorAll('button[aria-label="Close"]')]
    .find(b => b.getBoundingClientRect().x > {WIDTH} * 0.6)"""


def full_screen(metric: str) -> str:
    """A JS expression for the full-screen button of the chart titled ``metric``."""
    return f"""(() => {{
        for (const menu of document.querySelectorAll(
            '[data-testid=experiment-view-compare-runs-card-menu]')) {{
          let card = menu;
          while (card && !card.querySelector('.js-plotly-plot')) card = card.parentElement;
          if (!card || ![...card.querySelectorAll('*')].some(e => !e.children.length
              && e.innerText && e.innerText.trim() === {json.dumps(metric)})) continue;
          const buttons = [...card.querySelectorAll('button')];
          return buttons[buttons.indexOf(menu) - 1];
        }} }})()"""


def take_screenshots(
    chromium: str,
    base: str,
    exp_id: str,
    parent: Any,
    children: list,
    out_dir: Path,
) -> list[Path]:
    """Click through the UI as a first-time user would; write the ``mlflow-ui*`` :data:`SHOTS`."""
    metric = parent.data.params.get("metric", "val_acc").strip('"')
    names = [c.info.run_name for c in children]
    runs_url = f"{base}/#/experiments/{exp_id}/runs"
    all_children = f"{json.dumps(names)}.every(n => document.body.innerText.includes(n))"
    cdp = Chromium(chromium, base, WIDTH, HEIGHT)
    try:
        cdp.open_tab()
        # (a) The link that `sweeps run` prints, in a browser that never saw MLflow.
        cdp.goto(runs_url)
        cdp.wait_for(EXPAND, "the parent's [+] button in the runs table")
        cdp.pump(3)  # the assistant panel slides in
        cols = cdp.js("""[...document.querySelectorAll('.ag-header-cell[col-id]')]
            .map(e => e.innerText.trim()).filter(Boolean)""")
        log(f"fresh runs table: columns {cols}")
        cdp.screenshot(out_dir / "mlflow-ui.png")

        # (b) Close the assistant, click [+], drag the Run Name column wider.
        cdp.click(ASSISTANT_CLOSE, "the assistant panel's close button", required=False)
        cdp.click(EXPAND, "the parent's [+] button")
        cdp.wait_for(all_children, "the child runs")
        cdp.drag(RESIZE, RUN_NAME_WIDTH - 190, "the Run Name column's edge")
        cdp.screenshot(out_dir / "mlflow-ui-children.png")

        # (e) The second click: the chart-view button. Then the objective's chart, full screen.
        cdp.click(VIEW_BUTTON.format("CHART"), "the chart-view button", settle=3)
        cdp.wait_for("document.querySelector('.js-plotly-plot')", "the charts")
        hidden = cdp.js("document.body.innerText.split('Unhide run').length - 1")
        log(f"chart view: {hidden} of {len(names) + 1} runs hidden by default")
        cdp.screenshot(out_dir / "mlflow-ui-compare.png")
        cdp.type_text(
            q('input[placeholder="Search metric charts"]'), metric, "the chart search box"
        )
        cdp.click(full_screen(metric), f"the {metric} chart's full-screen button", settle=3)
        cdp.screenshot(out_dir / "mlflow-ui-compare-metric.png")
        cdp.click(q('[role=dialog] button[aria-label="Close"]'), "the full-screen chart's close")

        # (c) Back to the table; click the parent's name.
        cdp.click(VIEW_BUTTON.format("TABLE"), "the table-view button")
        cdp.click(PARENT_LINK, "the parent's name")
        cdp.wait_for("document.body.innerText.includes('Description')", "the run page")
        cdp.pump(2)
        desc = cdp.js("document.body.innerText.split('Description')[1]?.split('Metrics (')[0]")
        log(f"parent description: {(desc or '').strip()[:200]!r}")
        cdp.screenshot(out_dir / "mlflow-ui-run.png")

        # (d) Artifacts tab -> report -> report.html, the page the description points to.
        # MLflow shows an HTML artifact in a sandboxed frame: read it in that frame.
        cdp.click(by_text("Artifacts"), "the Artifacts tab")
        cdp.click(by_text("report"), "the report/ folder")
        frames = len(cdp.frames)
        cdp.click(by_text("report.html"), "report.html", settle=3)
        cdp.wait_for(f"{len(cdp.frames)} > {frames}", "the frame of report.html")
        cdp.wait_for("document.querySelector('h2')", "the report in its frame", frame=True)
        cdp.wait_for("[...document.images].every(i => i.complete)", "its figures", frame=True)
        figures = cdp.js(
            "[...document.images].map(i => [i.src.startsWith('data:'), i.naturalWidth])",
            frame=True,
        )
        shown = sum(width > 0 for _, width in figures)
        embedded = sum(data for data, _ in figures)
        log(
            f"report.html in the artifact view: {shown} of {len(figures)} figures displayed"
            f" ({embedded} embedded as data URIs)"
        )
        cdp.screenshot(out_dir / "mlflow-ui-report.png")
        # Scroll the frame (only the frame) to the heading above its first figure.
        cdp.js(
            """(() => { const img = document.images[0]; if (!img) return;
            const above = [...document.querySelectorAll('h2')].filter(h =>
              h.compareDocumentPosition(img) & Node.DOCUMENT_POSITION_FOLLOWING);
            window.scrollTo(0, (above.at(-1) || img).offsetTop - 8); })()""",
            frame=True,
        )
        cdp.pump(1)
        cdp.screenshot(out_dir / "mlflow-ui-report-figure.png")

        # report.md beside it: rendered markdown, but are its relative images displayed?
        cdp.click(by_text("report.md"), "report.md", settle=3)
        cdp.wait_for("[...document.querySelectorAll('h2')].length > 1", "the rendered report.md")
        shown = cdp.js("""[...document.querySelectorAll('img')]
            .filter(i => i.naturalWidth > 0 && !i.src.startsWith('data:image/svg')).length""")
        raw = cdp.js(f"""[...document.querySelectorAll('p, div, span')]
            .filter(e => !e.children.length && {RAW_IMAGE}.test(e.innerText.trim())).length""")
        log(f"report.md in the artifact view: {shown} images displayed, {raw} left as text")
    finally:
        cdp.close()
    return [out_dir / name for name in SHOTS if name.startswith("mlflow-ui")]


# -- optuna-dashboard -----------------------------------------------------------------------------


def start_dashboard(storage: str, port: int, logfile: Path) -> subprocess.Popen:
    """``optuna-dashboard <storage>`` on localhost, in its own process group."""
    exe = BIN / "optuna-dashboard"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "optuna_dashboard"]
    cmd += [storage, "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(
        cmd, stdout=logfile.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def dashboard_study_id(proc: subprocess.Popen, base: str, study: str, timeout: float = 120) -> int:
    """Wait for the dashboard's API, then return the id of the study named ``study``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"optuna-dashboard exited ({proc.returncode})")
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as r:
                body = json.load(r)
            studies = body.get("studies", body.get("study_summaries", []))  # 0.21: the latter
            ids = [s["study_id"] for s in studies if s["study_name"] == study]
            if not ids:
                names = [s["study_name"] for s in studies]
                raise SystemExit(f"optuna-dashboard: no study {study!r}, only {names}")
            return ids[0]
        time.sleep(1)
    raise RuntimeError(f"optuna-dashboard not answering after {timeout:.0f} s")


def dashboard_screenshot(chromium: str, base: str, study_id: int, n_trials: int, out: Path) -> None:
    """The study's page (its history plot) in a fresh browser of its own."""
    cdp = Chromium(chromium, base, WIDTH, HEIGHT)
    try:
        cdp.open_tab()
        cdp.goto(f"{base}/dashboard/studies/{study_id}")
        history = "document.querySelector('.js-plotly-plot')"  # the first plot on the page
        cdp.wait_for(f"{history}?.querySelector('.point')", "the study's history plot")
        cdp.pump(3)  # the other plots draw after the trials arrive
        # One marker per trial (the best-value trace is a line without markers).
        points = cdp.js(f"{history}.querySelectorAll('.point').length")
        log(f"optuna-dashboard: {points} trials in the history plot, {n_trials} search runs")
        cdp.screenshot(out)
    finally:
        cdp.close()


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tracking-uri",
        help="an existing tracking store (default: run a demo sweep in a temporary directory)",
    )
    ap.add_argument("--sweep", default=DEMO_NAME, help=f"the sweep's name (default {DEMO_NAME})")
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=ROOT / "docs",
        help=f"where the PNGs go (default docs/): {', '.join(SHOTS)}",
    )
    ap.add_argument("--port", type=int, default=0, help="mlflow ui port (default: a free one)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args(argv)
    if not Path(args.chromium).exists():
        ap.error(f"--chromium: {args.chromium} not found (apt-get install chromium)")

    from mlflow.tracking import MlflowClient

    from sweeps.tracking import find_children, find_sweep

    workdir = Path(tempfile.mkdtemp(prefix="fs-shot-"))  # short: Ray's socket paths
    ui: subprocess.Popen | None = None
    dashboard: subprocess.Popen | None = None
    try:
        uri = args.tracking_uri or run_demo_sweep(workdir, args.sweep)
        client = MlflowClient(uri)
        sweep = find_sweep(client, args.sweep)
        if sweep is None:
            raise SystemExit(f"--sweep: no sweep {args.sweep!r} in {uri}")
        children = find_children(client, sweep.experiment_id, sweep.parent.info.run_id)
        report_files = [
            Path(a.path).name for a in client.list_artifacts(sweep.parent.info.run_id, "report")
        ]
        log(f"experiment {sweep.experiment_id}: {len(children)} child runs, report {report_files}")

        port = args.port or free_port()
        base = f"http://127.0.0.1:{port}"
        logfile = workdir / "mlflow-ui.log"
        ui = start_mlflow_ui(uri, port, logfile)
        wait_healthy(ui, base, logfile)
        log(f"mlflow ui up at {base}/#/experiments/{sweep.experiment_id}/runs")
        args.out_dir.mkdir(parents=True, exist_ok=True)
        take_screenshots(
            args.chromium,
            base,
            sweep.experiment_id,
            sweep.parent,
            children,
            args.out_dir.resolve(),
        )
        stop(ui, group=True)

        # The sweep's Optuna study, where the parent's tags say it is stored.
        storage = sweep.parent.data.tags.get("flatsweep.optuna_storage")
        study = sweep.parent.data.tags.get("flatsweep.optuna_study", args.sweep)
        if not storage:
            log("the parent has no flatsweep.optuna_storage tag: no optuna-dashboard screenshot")
            return 0
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        dashboard = start_dashboard(storage, port, workdir / "optuna-dashboard.log")
        study_id = dashboard_study_id(dashboard, base, study)
        searched = sum(c.data.tags.get("flatsweep.stage") == "search" for c in children)
        log(f"optuna-dashboard {storage} --host 127.0.0.1 --port {port}: study {study!r}")
        dashboard_screenshot(
            args.chromium, base, study_id, searched, args.out_dir.resolve() / "optuna-dashboard.png"
        )
    finally:
        stop(dashboard, group=True)
        stop(ui, group=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
