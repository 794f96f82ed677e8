"""infra/local/up.sh and down.sh for real: both servers answer, the dashboard wants the token,
MLflow and the dashboard listen on loopback only, and down.sh leaves no process behind.

Slow (Ray and MLflow take 20-60 s to start), hence the cluster mark. Ray's GCS, raylet and
client server listen on every interface whatever up.sh passes (infra/README.md), so only
the dashboard and MLflow are held to loopback here.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests._ports import free_ports

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
UP = ROOT / "infra" / "local" / "up.sh"
DOWN = ROOT / "infra" / "local" / "down.sh"
PG_URI = "postgresql://postgres@127.0.0.1:5432"  # the trust-auth server of the dev machines
# Settings from the caller's shell that would point up.sh or the checks elsewhere.
FOREIGN_ENV = ("RAY_", "MLFLOW_", "FLATSWEEP_", "AWS_")


def psutil():
    pytest.importorskip("ray")  # Ray ships psutil (ray/thirdparty_files) and puts it on sys.path
    import psutil as module

    return module


def session_members(sid: int) -> list[int]:
    """The session's processes that have not exited, as down.sh counts them: a zombie waits
    only for its parent to reap it."""
    members = []
    for proc in psutil().process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil().STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil().NoSuchProcess):
            pass
    return members


def describe(pids: list[int]) -> list[str]:
    """pid, state, parent and command of each process, for a failure message."""
    out = []
    for pid in pids:
        with contextlib.suppress(psutil().Error):
            proc = psutil().Process(pid)
            out.append(f"{pid} {proc.status()} ppid={proc.ppid()} {' '.join(proc.cmdline())[:120]}")
    return out


def listening(pids: list[int]) -> set[tuple[str, int]]:
    ps = psutil()
    found = set()
    for pid in pids:
        try:
            conns = ps.Process(pid).net_connections(kind="tcp")
        except (ps.NoSuchProcess, ps.AccessDenied):
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == ps.CONN_LISTEN}
    return found


def loopback(ip: str) -> bool:
    return ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def http_status(url: str, token: str | None = None, host: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if host:
        headers["Host"] = host
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def postgres_available() -> bool:
    try:
        import psycopg2
    except ImportError:
        return False
    try:
        psycopg2.connect(f"{PG_URI}/postgres", connect_timeout=3).close()
    except psycopg2.OperationalError:
        return False
    return True


def drop_database(name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{PG_URI}/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    conn.close()


PORT_VARS = (
    "RAY_PORT",
    "RAY_DASHBOARD_PORT",
    "RAY_CLIENT_SERVER_PORT",
    "RAY_DASHBOARD_AGENT_PORT",
    "MLFLOW_PORT",
)


@pytest.fixture
def stack_env():
    """A short state dir (Ray's unix socket paths must stay under 107 bytes) and free ports."""
    state = Path(tempfile.mkdtemp(prefix="fs-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
    env.update(
        FLATSWEEP_STATE_DIR=str(state),
        PYTHON_BIN_DIR=str(ROOT / ".venv" / "bin"),
        RAY_NUM_CPUS="1",
    )
    yield env
    shutil.rmtree(state, ignore_errors=True)


def start_stack(env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run up.sh on fresh free ports, again if another process took one of them meanwhile
    (up.sh's own check says "already in use"; a port taken after it, gRPC "Failed to bind")."""
    for _ in range(3):
        env.update(zip(PORT_VARS, map(str, free_ports(len(PORT_VARS))), strict=True))
        up = subprocess.run([UP], env=env, capture_output=True, text=True, timeout=600)
        lost_a_port = any(s in up.stderr.lower() for s in ("already in use", "failed to bind"))
        if up.returncode == 0 or not lost_a_port:
            return up
    return up


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_up_serves_on_loopback_and_down_leaves_nothing(stack_env, backend):
    if not (ROOT / ".venv" / "bin" / "ray").exists():
        pytest.skip("needs the project venv in .venv")
    env = stack_env
    database = f"flatsweep_infra_test_{os.getpid()}"
    if backend == "postgresql":
        if not postgres_available():
            pytest.skip(f"no PostgreSQL at {PG_URI}")
        env["MLFLOW_BACKEND_STORE_URI"] = f"{PG_URI}/{database}"
    state = Path(env["FLATSWEEP_STATE_DIR"])
    sessions = []
    try:
        up = start_stack(env)
        assert up.returncode == 0, f"up.sh failed:\n{up.stderr}"
        dashboard = f"http://127.0.0.1:{env['RAY_DASHBOARD_PORT']}"
        mlflow = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
        sessions = [int((state / name).read_text()) for name in ("ray.pid", "mlflow.pid")]
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines()
        )
        assert exports["RAY_ADDRESS"] == dashboard
        assert exports["MLFLOW_TRACKING_URI"] == mlflow
        assert exports["RAY_AUTH_MODE"] == "token"
        token = Path(exports["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        assert oct(Path(exports["RAY_AUTH_TOKEN_PATH"]).stat().st_mode & 0o777) == "0o600"

        with urllib.request.urlopen(f"{mlflow}/health", timeout=10) as r:
            assert r.read() == b"OK"
            # Not uvicorn, whose kept-alive answers wait ~40 ms (see up.sh).
            assert r.headers["Server"].startswith("gunicorn"), r.headers
        # A foreign Host header is refused (DNS rebinding), a loopback one with any port served.
        search = f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=1"
        assert http_status(search, host="attacker.example") == 403
        assert http_status(search, host="localhost:8080") == 200
        assert http_status(search) == 200
        # flatsweep's app (--app-name flatsweep): the bulk route, behind the same Host check.
        from sweeps.sqlbulk import ROUTE

        assert http_status(mlflow + ROUTE, host="attacker.example") == 403
        with urllib.request.urlopen(mlflow + ROUTE, timeout=10) as r:
            assert json.load(r) == {"supported": True, "reason": ""}
        assert http_status(f"{dashboard}/api/version") == 401
        assert http_status(f"{dashboard}/api/version", token=token[::-1]) == 403
        with urllib.request.urlopen(
            urllib.request.Request(
                f"{dashboard}/api/version", headers={"Authorization": f"Bearer {token}"}
            ),
            timeout=10,
        ) as r:
            pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
            assert f"ray[default,tune]=={json.load(r)['ray_version']}" in pinned["dependencies"]

        ray_pid, mlflow_pid = sessions
        # No job-execution consumers polling the store (MLFLOW_SERVER_ENABLE_JOB_EXECUTION).
        commands = []
        for pid in session_members(mlflow_pid):
            with contextlib.suppress(psutil().NoSuchProcess):  # a process that just exited
                commands.append(" ".join(psutil().Process(pid).cmdline()))
        assert any("gunicorn" in c for c in commands), commands
        assert not [c for c in commands if "huey" in c], commands
        mlflow_sockets = listening(session_members(mlflow_pid))
        assert ("127.0.0.1", int(env["MLFLOW_PORT"])) in mlflow_sockets
        assert all(loopback(ip) for ip, _ in mlflow_sockets), mlflow_sockets
        ray_sockets = listening(session_members(ray_pid))
        on_dashboard_port = {s for s in ray_sockets if s[1] == int(env["RAY_DASHBOARD_PORT"])}
        assert on_dashboard_port == {("127.0.0.1", int(env["RAY_DASHBOARD_PORT"]))}
        # For the record (pytest -s): what Ray opens beyond loopback.
        print("ray listens on", sorted(s for s in ray_sockets if not loopback(s[0])))
    finally:
        down = subprocess.run([DOWN], env=env, capture_output=True, text=True, timeout=300)
        if backend == "postgresql" and postgres_available():
            drop_database(database)
    assert down.returncode == 0, down.stderr

    deadline = time.monotonic() + 15
    while (left := [p for sid in sessions for p in session_members(sid)]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    assert not left, (
        f"down.sh left processes running: {describe(left)}\ndown.sh said:\n{down.stderr}"
    )
    assert not list(state.glob("*.pid"))
    for port in (env["RAY_PORT"], env["RAY_DASHBOARD_PORT"], env["MLFLOW_PORT"]):
        with socket.socket() as sock:
            # SO_REUSEADDR: our own closed connections linger in TIME_WAIT; a listener would
            # still make the bind fail.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", int(port)))

    again = subprocess.run([DOWN], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
