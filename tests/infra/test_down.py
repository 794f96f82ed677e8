"""infra/local/down.sh on stand-in servers: which sessions it stops and which it leaves alone.

The stand-ins are shell processes whose command line reads like the server's (down.sh
recognises its servers by that), each the leader of its own session with a child in it, as
up.sh starts them. No Ray or MLflow is started; tests/infra/test_local_stack.py runs the real
stack.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOWN = ROOT / "infra" / "local" / "down.sh"


def alive(pid: int) -> bool:
    """Not exited: a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def down(state: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env["FLATSWEEP_STATE_DIR"] = str(state)
    return subprocess.run([DOWN], env=env, capture_output=True, text=True, timeout=120)


def start_leader(script: str, argv0: str) -> tuple[subprocess.Popen, int]:
    """A session leader named argv0 running script, which starts a child that prints its pid."""
    proc = subprocess.Popen(
        ["bash", "-c", f"exec -a \"{argv0}\" bash -c '{script}'"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    child = int(proc.stdout.readline())
    return proc, child


@pytest.fixture
def procs():
    started: list[int] = []
    yield started
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_stops_the_servers_session_children_included(tmp_path, procs):
    leader, child = start_leader(
        "sleep 300 & echo $!; wait", "python /venv/bin/ray start --head --block"
    )
    procs += [leader.pid, child]
    (tmp_path / "ray.pid").write_text(f"{leader.pid}\n")

    r = down(tmp_path)

    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: not alive(child)), "the server's child outlived down.sh"
    leader.wait(timeout=10)
    assert not (tmp_path / "ray.pid").exists()
    assert "Ray head stopped" in r.stderr


def test_a_crashed_leader_not_yet_reaped_still_gets_its_session_stopped(tmp_path, procs):
    """The leader exited (its parent, this test, has not reaped it: a zombie) and left a child
    running: that child is the server's, not a stranger's, and must be stopped."""
    leader, child = start_leader("sleep 300 & echo $!", "python /venv/bin/ray start --head")
    procs.append(child)
    assert wait_until(lambda: not alive(leader.pid))
    assert Path(f"/proc/{leader.pid}").exists()  # a zombie: exited, not reaped
    (tmp_path / "ray.pid").write_text(f"{leader.pid}\n")

    r = down(tmp_path)

    assert r.returncode == 0, r.stderr
    assert "was reused" not in r.stderr
    assert wait_until(lambda: not alive(child)), "the crashed server's child outlived down.sh"
    assert not (tmp_path / "ray.pid").exists()
    leader.wait(timeout=10)


def test_a_pid_reused_by_another_program_is_left_alone(tmp_path, procs):
    stranger, child = start_leader("sleep 300 & echo $!; wait", "some-other-program")
    procs += [stranger.pid, child]
    (tmp_path / "ray.pid").write_text(f"{stranger.pid}\n")

    r = down(tmp_path)

    assert r.returncode == 0, r.stderr
    assert "was reused" in r.stderr
    assert alive(stranger.pid) and alive(child)
    assert not (tmp_path / "ray.pid").exists()


def test_a_process_that_ignores_every_polite_signal_is_killed(tmp_path, procs):
    leader, child = start_leader(
        'trap "" TERM; sleep 300 & echo $!; while :; do wait; done',
        "python /venv/bin/mlflow server",
    )
    procs += [leader.pid, child]
    (tmp_path / "mlflow.pid").write_text(f"{leader.pid}\n")

    r = down(tmp_path)

    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: not alive(leader.pid) and not alive(child))
    assert "MLflow stopped" in r.stderr
