"""Security defaults as tests: no code execution from spec data, inert fields, safe names,
hostile specs refused in one line, and no test touching a Ray it did not start."""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sweeps.cli import app
from tests.conftest import RAY_INIT
from tests.sweeps.conftest import sweep_dict
from tests.trainers.test_yaml import flow_lists, laughs
from trainers._yaml import MAX_BYTES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p
    for pkg in ("trainers", "search_spaces", "sweeps", "examples", "infra", "benchmarks", "docs")
    for p in (ROOT / pkg).rglob("*.py")
)


def calls(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                out.append(f.id)
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                out.append(f"{f.value.id}.{f.attr}")
    return out


def test_the_sources_are_scanned():
    assert len(SOURCES) > 20


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_eval_exec_unsafe_yaml_or_pickle(path):
    tree = ast.parse(path.read_text())
    found = set(calls(tree)) & {
        "eval",
        "exec",
        "yaml.load",
        "yaml.unsafe_load",
        "pickle.load",
        "pickle.loads",
        "os.system",
    }
    # trainers/_yaml.py calls yaml.load with its own SafeLoader subclass, checked below
    if path.name == "_yaml.py":
        found.discard("yaml.load")
        assert "Loader=_StrictSafeLoader" in path.read_text()
    # The MLflow writer process and its driver unpickle only what the other wrote into an
    # anonymous pipe between the two (stdin and stdout of the child): no socket, no file.
    if path.name == "writer_process.py":
        found.discard("pickle.load")
        text = path.read_text()
        assert "stdin=subprocess.PIPE" in text and "stdout=subprocess.PIPE" in text
        assert "socket" not in text and "Listener" not in text
    assert not found, f"{path}: {found}"
    for node in ast.walk(tree):  # no subprocess with a shell
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                assert not (kw.arg == "shell" and getattr(kw.value, "value", False) is True), path


def test_python_object_tags_are_refused():
    from trainers._yaml import load_yaml

    with pytest.raises(ValueError, match="invalid YAML"):
        load_yaml("name: !!python/object/apply:os.system ['touch pwned']\n")


def test_shell_metacharacters_in_spec_fields_stay_inert(tmp_path, monkeypatch, ray_local):
    """A smoke sweep whose free-text fields hold shell syntax runs and creates no file."""
    monkeypatch.chdir(tmp_path)
    d = sweep_dict("inert", num_samples=2)
    d["train"]["data"]["root"] = "$(touch PWNED1)"  # ignored by mnist1d, must not run
    d["train"]["provenance"] = {"note": "; touch PWNED2 `touch PWNED3`"}
    d["storage_path"] = str(tmp_path / "ray")
    d["tracking_uri"] = f"sqlite:///{tmp_path / 'm.db'}"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(d))
    result = CliRunner().invoke(app, ["run", "spec.yaml", "--smoke-test", "--quiet"])
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().rglob("PWNED*"))


def test_export_sanitises_names_used_in_paths():
    from sweeps.export import _safe

    assert _safe("../../etc/passwd") == ".._.._etc_passwd"
    assert "/" not in _safe("a/b\\c") and _safe("ok-1.2_x") == "ok-1.2_x"


# A spec is user input that may reach a cluster; tests/trainers/test_yaml.py covers each
# family of hostile YAML against the loader, these check what a user sees from both CLIs.
HOSTILE = {
    "alias_bomb": laughs(9, 10),  # 10**9 nodes from 545 bytes
    "deep_nesting": flow_lists(20_000),
    "oversized": "#" * MAX_BYTES + "\nname: x\n",
}
BIN = Path(sys.executable).parent


def one_error_line(run: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-3000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_sweeps_validate_refuses_a_hostile_spec_in_one_line_with_exit_code_2(tmp_path, kind):
    (tmp_path / "spec.yaml").write_text(HOSTILE[kind])
    run = subprocess.run(
        [str(BIN / "sweeps"), "validate", "spec.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert one_error_line(run).startswith("error: spec.yaml: YAML ")


def test_python_m_trainers_refuses_a_hostile_config_in_one_line(tmp_path):
    (tmp_path / "config.yaml").write_text(HOSTILE["alias_bomb"])
    run = subprocess.run(
        [sys.executable, "-m", "trainers", "config.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0
    assert "more than" in one_error_line(run) and run.stdout == ""


_RAY_PROBE = r"""
import json, sys
import ray

kwargs = json.loads(sys.argv[1])
# What the fixture did before: without address="local" Ray joins the stale cluster and fails.
try:
    ray.init(**{k: v for k, v in kwargs.items() if k != "address"})
    joined = "started"
    ray.shutdown()
except Exception as e:
    joined = str(e)
context = ray.init(**kwargs)
print(json.dumps({"joined": joined, "gcs": context.address_info["gcs_address"],
                  "session": context.address_info["session_dir"],
                  "cpus": ray.cluster_resources().get("CPU")}))
ray.shutdown()
"""


def test_the_session_ray_is_its_own_even_where_a_dead_cluster_is_recorded():
    """The ``ray_local`` fixture's ``ray.init`` starts a new Ray on a machine whose
    ``ray_current_cluster`` names one that is gone (as ``ray start`` leaves it). The stale file
    is planted in a private ``RAY_TMPDIR``: the machine's own /tmp/ray is never touched."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    try:
        (Path(tmp) / "ray").mkdir()
        (Path(tmp) / "ray" / "ray_current_cluster").write_text(dead)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        run = subprocess.run(
            [sys.executable, "-c", _RAY_PROBE, json.dumps(RAY_INIT)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**env, "RAY_TMPDIR": tmp, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"},
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    probe = json.loads(run.stdout.strip().splitlines()[-1])
    # The planted file is what Ray reads: joining it is the failure the issue reported.
    assert "num_cpus and num_gpus must not be provided" in probe["joined"], probe
    assert probe["gcs"] != dead and probe["session"].startswith(tmp), probe
    assert probe["cpus"] == RAY_INIT["num_cpus"], probe
