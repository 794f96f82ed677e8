"""Screenshot a sweep in the MLflow UI: the parent run with its child runs, and their curves.

Usage (from the repository root)::

    .venv/bin/python docs/mlflow_screenshot.py                     # runs a tiny demo sweep
    .venv/bin/python docs/mlflow_screenshot.py \\
        --tracking-uri sqlite:///$(pwd)/flatsweep.db --sweep quickstart  # an existing sweep

Without ``--tracking-uri`` it writes a 4-trial, 3-epoch spec named ``screenshot-demo`` (the
base spec copied from ``examples/quickstart.yaml``) into a temporary directory, checks it with
``sweeps validate`` and runs it with ``sweeps run --quiet`` against a SQLite store in that
directory (one trial at a time: a minute or two on 2 CPUs). Nothing is written to the
project's own ``flatsweep.db``.

It then starts ``mlflow ui`` on a free localhost port (waiting for ``/health``), and drives
headless Chromium (``chromium`` on PATH, the Debian package) to take three PNGs:

``--out`` (default ``docs/mlflow-ui.png``)
    ``#/experiments/<id>/runs``, the runs table, with the sweep's parent run expanded to show
    its child runs (one per trial) and columns for the objective, the searched parameters and
    the ``flatsweep.*`` tags;
``<out>-run.png``
    the same page in chart mode, with the per-epoch ``test_acc`` / ``test_loss`` / ``train_loss``
    curves of every trial (x axis: step = epoch);
``<out>-child.png``
    the best trial's run page: parent link, ``flatsweep.*`` tags, metrics and params.

How the browser is driven: Chromium's ``--screenshot`` flag can only photograph a page as it
loads, and MLflow 3.17 opens the runs table with parent runs collapsed (and its assistant panel
open). The table's state (expanded parents, selected columns, charts) lives in the page's
``localStorage``, so the script speaks the DevTools protocol over ``--remote-debugging-pipe``
(NUL-separated JSON on file descriptors 3 and 4: no websocket package needed), lets the UI
write its default state once, edits that state from an inert same-origin page (``/health``),
and reloads. If the state format ever changes it falls back to clicking the parent's expand
button. Every request to anything but the local MLflow server is failed, and downloads are
denied. The ``mlflow ui`` process group and Chromium are always stopped at the end.
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
CHART_METRICS = ("test_acc", "test_loss", "train_loss")
# (the trial id is also the end of each child run's name)
TAG_COLUMNS = ("flatsweep.stopped_early", "flatsweep.best_trial")
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


def run_demo_sweep(workdir: Path, name: str, timeout: float = 1200) -> str:
    """Run a 4-trial, 3-epoch copy of examples/quickstart.yaml; return its tracking URI."""
    import yaml

    spec = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    spec["name"] = name
    spec["train"]["epochs"] = 3
    spec["num_samples"] = 4
    spec["max_concurrent"] = 1  # one trial at a time: one CPU
    # Let ASHA stop weak trials after their first epoch (it keeps about the better half), so
    # the demo has stopped_early=1 children beside a full 3-epoch curve.
    spec["scheduler"]["grace_period"] = 1
    spec["scheduler"]["reduction_factor"] = 2
    path = workdir / "sweep.yaml"
    path.write_text(
        "# Written by docs/mlflow_screenshot.py: examples/quickstart.yaml, shrunk.\n"
        + yaml.safe_dump(spec, sort_keys=False)
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
    }
    sweeps = str(BIN / "sweeps")
    subprocess.run([sweeps, "validate", str(path)], cwd=workdir, env=env, check=True)
    log(f"running the demo sweep {name!r} in {workdir} (a minute or two)")
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
    """A minimal DevTools-protocol client over ``--remote-debugging-pipe``."""

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

    def _post(self, method: str, params: dict | None, session: bool) -> int:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        return self._id

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if "id" in msg:
            self._replies[msg["id"]] = msg
        elif msg.get("method") == "Fetch.requestPaused":
            # Only the local MLflow server: nothing leaves the machine, nothing is downloaded.
            p = msg["params"]
            url = p["request"]["url"]
            if url.startswith((self.origin + "/", "data:", "blob:")) or url == self.origin:
                self._post("Fetch.continueRequest", {"requestId": p["requestId"]}, True)
            else:
                self._post(
                    "Fetch.failRequest",
                    {"requestId": p["requestId"], "errorReason": "BlockedByClient"},
                    True,
                )

    def call(
        self, method: str, params: dict | None = None, session: bool = True, timeout: float = 60
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
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.resize(self.width, self.height)

    def resize(self, width: int, height: int) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def goto(self, url: str, settle: float = 1.0) -> None:
        self.call("Page.navigate", {"url": url})
        self.pump(settle)

    def js(self, expression: str) -> Any:
        r = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"JS error: {r['exceptionDetails'].get('text')} in {expression}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str = "") -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                if self.js(f"!!({expression})"):
                    return True
            self.pump(0.5)
        log(f"timed out waiting for {what or expression}")
        return False

    def screenshot(self, path: Path, height: int | None = None) -> None:
        params: dict[str, Any] = {"format": "png"}
        if height:
            params["clip"] = {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1}
        data = self.call("Page.captureScreenshot", params)["data"]
        path.write_bytes(base64.b64decode(data))
        shrink(path)
        log(f"wrote {path} ({path.stat().st_size // 1024} KB)")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", session=False, timeout=10)
        stop(self.proc, group=False)
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


def shrink(path: Path, limit: int = 450_000) -> None:
    """Keep a PNG under ``limit`` bytes (palette PNG via Pillow, if installed)."""
    if path.stat().st_size <= limit:
        return
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as im:
        im.convert("RGB").quantize(256).save(path, optimize=True)


# -- the screenshots ------------------------------------------------------------------------------


def _state_key(cdp: Chromium, exp_id: str) -> str | None:
    """The localStorage key holding the experiment page's table/chart state."""
    return cdp.js(f"""Object.keys(localStorage).find(k => k.includes('ExperimentPage-')
        && k.includes({json.dumps(json.dumps([exp_id]))}) && k.endsWith('ReactComponentState'))
        || null""")


def _edit_state(cdp: Chromium, key: str, edit) -> None:  # noqa: ANN001
    """Apply ``edit(state)`` to the UI's stored state, from /health (no app there to undo it)."""
    cdp.goto(f"{cdp.origin}/health", settle=0.5)
    state = json.loads(cdp.js(f"localStorage.getItem({json.dumps(key)})") or "{}")
    edit(state)
    cdp.js(f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(state))})")
    cdp.js("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')")
    cdp.js("localStorage.setItem('mlflow.workflowType_v1', '\"machine_learning\"')")


def _bottom(cdp: Chromium, selector: str, pad: int = 24) -> int | None:
    b = cdp.js(f"""Math.max(0, ...[...document.querySelectorAll({json.dumps(selector)})]
        .map(e => e.getBoundingClientRect().bottom))""")
    return min(cdp.height, int(b) + pad) if b else None


def _collapse_sidebar(cdp: Chromium) -> None:
    cdp.js("document.querySelector('button[aria-label=\"Toggle sidebar\"]')?.click()")
    cdp.pump(1)


def _type_into(cdp: Chromium, placeholder: str, text: str) -> None:
    """Type ``text`` into the input with this placeholder, as a user would."""
    if cdp.js(f"""(() => {{ const i = document.querySelector(
            'input[placeholder={json.dumps(placeholder)}]');
            if (!i) return false; i.scrollIntoView({{block: 'center'}}); i.focus();
            return true; }})()"""):
        cdp.call("Input.insertText", {"text": text})
        cdp.pump(1.5)


def take_screenshots(
    chromium: str,
    base: str,
    exp_id: str,
    parent: Any,
    children: list,
    best_id: str | None,
    out: Path,
) -> list[Path]:
    metric = parent.data.params.get("metric", "test_acc")
    searched = sorted(
        k.removeprefix("space.") for k in parent.data.params if k.startswith("space.")
    )
    names = [c.info.run_name for c in children]
    runs_url = f"{base}/#/experiments/{exp_id}/runs"
    all_children_shown = (
        f"(() => {{ const t = document.body.innerText; "
        f"return {json.dumps(names)}.every(n => t.includes(n)); }})()"
    )
    # The parent's range for the first searched hyperparameter (the radius, for AMP/AWP/SAM).
    shown_range = next((k for k in searched if k.endswith(".radius")), searched[:1] or None)
    columns = (
        [f"metrics.`best_{metric}`", f"metrics.`{metric}`"]
        + ([f"params.`space.{shown_range}`"] if shown_range else [])
        + [f"params.`{k}`" for k in searched]
        + [f"tags.`{t}`" for t in TAG_COLUMNS]
    )
    widths = {
        "attributes.`Run Name`": 265,
        f"metrics.`best_{metric}`": 120,
        f"metrics.`{metric}`": 85,
        "tags.`flatsweep.stopped_early`": 175,
        "tags.`flatsweep.best_trial`": 150,
    }
    # Wide enough for the header (about 7 px a character) and a full float value.
    widths.update({f"params.`{k}`": max(160, 12 + 7 * len(k)) for k in searched})
    widths.update({f"params.`space.{k}`": 12 + 7 * len(f"space.{k}") for k in searched})
    written: list[Path] = []
    cdp = Chromium(chromium, base, width=1880, height=1000)
    try:
        cdp.open_tab()
        # 1. Let the UI write its default state, then expand the parent and pick columns.
        cdp.goto(runs_url)
        cdp.wait_for(
            f"document.body.innerText.includes({json.dumps(parent.info.run_name)})",
            what="the runs table",
        )
        key = None
        for _ in range(20):
            if key := _state_key(cdp, exp_id):
                break
            cdp.pump(0.5)
        if key:

            def table(state: dict) -> None:
                state["runsExpanded"] = {parent.info.run_id: True}
                state["selectedColumns"] = columns

            _edit_state(cdp, key, table)
            cdp.goto(runs_url)
            # Widths apply only to columns named in columnOrder: take the order as rendered.
            cdp.wait_for(
                f"document.querySelector('[col-id={json.dumps(columns[0])}]')",
                timeout=30,
                what="the selected columns",
            )
            order = cdp.js("""[...document.querySelectorAll('.ag-header-cell[col-id]')]
                .map(e => e.getAttribute('col-id')).filter(c => c && !/^[0-9]+$/.test(c))""")
            if order:

                def sizes(state: dict) -> None:
                    state["columnOrder"] = order
                    state["columnWidths"] = {c: w for c, w in widths.items() if c in order}

                _edit_state(cdp, key, sizes)
                cdp.goto(runs_url)
        else:
            log("no stored UI state found; clicking the parent's expand button instead")
        if not cdp.wait_for(all_children_shown, timeout=30, what="the child runs"):
            cdp.js(f"""(() => {{ for (const c of document.querySelectorAll('.ag-cell'))
                if (c.innerText.trim() === {json.dumps(parent.info.run_name)}) {{
                  const b = c.querySelector('button'); if (b) {{ b.click(); return true; }} }}
                return false; }})()""")
            cdp.wait_for(all_children_shown, timeout=30, what="the child runs (after click)")
        _collapse_sidebar(cdp)
        cdp.pump(2)
        written.append(out)
        cdp.screenshot(out, _bottom(cdp, ".ag-row", pad=40))

        # 2. Chart mode: only the curves worth showing, in a useful order; the parent (which
        # has no per-epoch metrics) left out of the legends.
        chart_url = f"{runs_url}?compareRunsMode=CHART"
        plots = "document.querySelectorAll('.js-plotly-plot').length"
        cdp.goto(chart_url)
        cdp.wait_for(f"{plots} > 0", what="the charts")
        cdp.pump(2)
        if key:

            def charts(state: dict) -> None:
                cs = state.get("compareRunCharts") or []
                keep = {m: i for i, m in enumerate(CHART_METRICS)}
                for c in cs:
                    c["deleted"] = c.get("metricKey") not in keep
                cs.sort(key=lambda c: keep.get(c.get("metricKey"), len(keep)))
                state["compareRunCharts"] = cs
                sections = {c.get("metricSectionId") for c in cs if not c["deleted"]}
                for sec in state.get("compareRunSections") or []:
                    if sec.get("uuid") in sections:  # taller cards: all four legend entries
                        sec["cardHeight"] = 460
                state["runsVisibilityMap"] = {parent.info.run_id: False}

            _edit_state(cdp, key, charts)
            cdp.goto(chart_url)
            cdp.wait_for(f"{plots} >= {len(CHART_METRICS)}", what="the metric charts")
        cdp.wait_for(all_children_shown, timeout=20, what="the child runs in chart mode")
        _collapse_sidebar(cdp)
        cdp.pump(3)
        run_png = out.with_name(f"{out.stem}-run{out.suffix}")
        written.append(run_png)
        cdp.screenshot(run_png, _bottom(cdp, ".js-plotly-plot", pad=60))

        # 3. The best trial's own page: parent link, tags, metrics, the searched params.
        if best_id:
            cdp.width, cdp.height = 1600, 1300
            cdp.resize(cdp.width, cdp.height)
            cdp.goto(f"{base}/#/experiments/{exp_id}/runs/{best_id}")
            cdp.wait_for("document.body.innerText.includes('Parameters')", what="the run page")
            cdp.pump(2)
            prefix = os.path.commonprefix(searched).rsplit(".", 1)[0] if searched else ""
            if prefix:
                _type_into(cdp, "Search parameters", prefix)
            cdp.js(
                "window.scrollTo(0, 0); document.querySelectorAll('*').forEach(e => "
                "{ if (e.scrollTop) e.scrollTop = 0; })"
            )
            cdp.pump(1)
            child_png = out.with_name(f"{out.stem}-child{out.suffix}")
            written.append(child_png)
            cdp.screenshot(child_png, _bottom(cdp, "[role=row], tr", pad=40))
    finally:
        cdp.close()
    return written


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tracking-uri",
        help="an existing tracking store (default: run a demo sweep in a temporary directory)",
    )
    ap.add_argument("--sweep", default=DEMO_NAME, help=f"the sweep's name (default {DEMO_NAME})")
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "mlflow-ui.png",
        help="runs-table PNG; -run and -child PNGs go beside it",
    )
    ap.add_argument("--port", type=int, default=0, help="mlflow ui port (default: a free one)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args(argv)
    if not Path(args.chromium).exists():
        ap.error(f"--chromium: {args.chromium} not found (apt-get install chromium)")

    from mlflow.tracking import MlflowClient

    from sweeps.tracking import find_children, find_parent

    workdir = Path(tempfile.mkdtemp(prefix="fs-shot-"))  # short: Ray's socket paths
    ui: subprocess.Popen | None = None
    try:
        uri = args.tracking_uri or run_demo_sweep(workdir, args.sweep)
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(args.sweep)
        parent = find_parent(client, exp.experiment_id, args.sweep) if exp else None
        if parent is None:
            raise SystemExit(f"no sweep {args.sweep!r} in {uri}")
        children = sorted(
            find_children(client, exp.experiment_id, parent.info.run_id),
            key=lambda r: r.info.start_time,
        )
        best_id = parent.data.tags.get("flatsweep.best_run_id") or (
            children[0].info.run_id if children else None
        )
        log(
            f"experiment {exp.experiment_id}: parent {parent.info.run_id}, "
            f"{len(children)} child runs"
        )

        port = args.port or free_port()
        base = f"http://127.0.0.1:{port}"
        logfile = workdir / "mlflow-ui.log"
        ui = start_mlflow_ui(uri, port, logfile)
        wait_healthy(ui, base, logfile)
        log(f"mlflow ui up at {base}/#/experiments/{exp.experiment_id}/runs")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        take_screenshots(
            args.chromium, base, exp.experiment_id, parent, children, best_id, args.out.resolve()
        )
    finally:
        stop(ui, group=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
