"""``sweeps submit / logs / stop`` and ``job_status`` (``sweeps.jobs``, ``sweeps.jobs_cli``) and
the checks of a spec against a cluster address (``sweeps.preflight``): a sweep as a Ray job.

The fast tests use a stand-in for ``JobSubmissionClient``; the ``cluster`` tests start a real
Ray head with token authentication (its own ports, temp dir and HOME) and submit to it.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import typer
import yaml
from typer.testing import CliRunner

from sweeps import jobs
from sweeps import preflight as pf
from sweeps.jobs_cli import register
from sweeps.spec import SpecError, SweepSpec, load_spec
from tests._ports import free_ports
from tests.sweeps.conftest import sweep_dict

# Ray's answer to a duplicate submission_id (2.60: the job manager's ValueError, relayed by the
# dashboard as a 500 with the traceback).
DUPLICATE = (
    "Request failed with status code 500: Traceback (most recent call last):\n  ...\n"
    "ValueError: Job with submission_id flatsweep-{name} already exists. Please use a "
    "different submission_id.\n."
)
SECRET_ENV = (
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_AUTH_MODE",
    "RAY_ADDRESS",
    "MLFLOW_TRACKING_URI",
    "FLATSWEEP_STORAGE",
)


def make_app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def spec_of(**over: Any) -> SweepSpec:
    return SweepSpec.model_validate(sweep_dict("p", **over))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No Ray token, address or storage settings leak in from the developer's shell."""
    for k in SECRET_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# --- preflight ----------------------------------------------------------------------------------

REMOTE = "http://10.1.2.3:8265"


@pytest.mark.parametrize(
    "address,loopback",
    [
        ("http://127.0.0.1:8265", True),
        ("http://127.9.8.7:8265", True),
        ("http://localhost:8265", True),
        ("http://[::1]:8265", True),
        ("http://10.1.2.3:8265", False),
        ("https://ray.example.com", False),
        ("http://0.0.0.0:8265", False),
    ],
)
def test_loopback_addresses(address, loopback):
    assert pf.is_loopback(address) is loopback


def test_remote_with_local_storage_is_refused(tmp_path):
    s = spec_of(storage_path=str(tmp_path / "ray"), tracking_uri="http://mlflow:5000")
    with pytest.raises(SpecError, match=r"^storage_path: .*local to one machine.*s3://"):
        pf.preflight(s, REMOTE)
    with pytest.raises(SpecError, match="storage_path: not set.*s3://"):
        pf.preflight(spec_of(tracking_uri="http://mlflow:5000"), REMOTE)


def test_remote_storage_from_the_environment_is_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("FLATSWEEP_STORAGE", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    with pytest.raises(SpecError, match="^FLATSWEEP_STORAGE: .*s3://"):
        pf.preflight(spec_of(), REMOTE)
    pf.preflight(spec_of(), REMOTE, shared_storage=True)  # "every node mounts this path"
    monkeypatch.setenv("FLATSWEEP_STORAGE", "s3://bucket/ray")
    pf.preflight(spec_of(), REMOTE)


def test_remote_with_sqlite_tracking_is_refused(tmp_path):
    s = spec_of(storage_path="s3://bucket/ray", tracking_uri=f"sqlite:///{tmp_path}/m.db")
    with pytest.raises(SpecError, match="^tracking_uri: .*more than one writer.*http"):
        pf.preflight(s, REMOTE)
    with pytest.raises(SpecError, match="default sqlite.*http"):
        pf.preflight(spec_of(storage_path="gs://b/ray"), REMOTE)


def test_shared_storage_needs_an_absolute_path():
    s = spec_of(storage_path="runs/ray", tracking_uri="https://mlflow.example.com")
    with pytest.raises(SpecError, match="^storage_path: --shared-storage needs an absolute"):
        pf.preflight(s, REMOTE, shared_storage=True)
    pf.preflight(
        s.model_copy(update={"storage_path": "/mnt/shared/ray"}), REMOTE, shared_storage=True
    )
    pf.preflight(
        s.model_copy(update={"storage_path": "file:///mnt/shared/ray"}), REMOTE, shared_storage=True
    )


def test_remote_with_object_storage_and_a_server_passes():
    pf.preflight(
        spec_of(storage_path="s3://bucket/ray", tracking_uri="https://m.example.com"), REMOTE
    )


def test_loopback_allows_local_storage_and_sqlite(tmp_path):
    pf.preflight(
        spec_of(storage_path=str(tmp_path / "ray"), tracking_uri=f"sqlite:///{tmp_path}/m.db"),
        "http://127.0.0.1:8265",
    )
    pf.preflight(spec_of(), "http://localhost:8265")  # the cluster's own settings apply


def test_loopback_refuses_paths_relative_to_the_jobs_temp_dir():
    with pytest.raises(SpecError, match="^storage_path: 'runs' is relative"):
        pf.preflight(spec_of(storage_path="runs"), "http://127.0.0.1:8265")
    with pytest.raises(SpecError, match="^tracking_uri: .*relative SQLite"):
        pf.preflight(spec_of(tracking_uri="sqlite:///flatsweep.db"), "http://127.0.0.1:8265")


def test_preflight_messages_do_not_show_passwords(monkeypatch):
    # A spec refuses a password in its own fields; the environment's URI can still hold one.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u:hunter2@db/mlflow")
    with pytest.raises(SpecError) as e:
        pf.preflight(spec_of(storage_path="s3://b/r"), REMOTE)
    assert "hunter2" not in str(e.value) and "u:***@db" in str(e.value)


@pytest.mark.parametrize(
    ("field", "uri"),
    [
        ("tracking_uri", "https://u:hunter2@mlflow.example.com"),
        ("tracking_uri", "postgresql://u@db/mlflow?password=hunter2"),
        ("searcher.storage", "postgresql://optuna:hunter2@db/optuna"),
        ("storage_path", "s3://AKIAEXAMPLE:hunter2@bucket/ray"),
    ],
)
def test_a_spec_with_a_password_is_refused_before_it_is_stored_or_staged(field, uri, tmp_path):
    d = sweep_dict("p")
    if field in ("tracking_uri", "storage_path"):
        d[field] = uri
    else:
        d["searcher"] = {**d["searcher"], "storage": uri}
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(d))
    r = CliRunner().invoke(make_app(), ["submit", str(f), "--address", "http://127.0.0.1:8265"])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"error: {field}: it carries a password")
    assert "hunter2" not in r.output


def test_a_storage_url_with_a_password_in_the_environment_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATSWEEP_STORAGE", "hdfs://alice:hunter2@namenode/ray")
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(sweep_dict("p")))
    from sweeps.cli import app

    r = CliRunner().invoke(app, ["validate", str(f)])
    assert r.exit_code == 2 and r.output.startswith("error: FLATSWEEP_STORAGE: it carries a")
    assert "hunter2" not in r.output


def test_a_job_is_never_sent_a_password_in_a_uris_query(monkeypatch):
    from sweeps import jobs

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://alice@db/mlflow?password=hunter2")
    with pytest.raises(jobs.JobError, match="^MLFLOW_TRACKING_URI: it carries a password"):
        jobs.forwarded_env()


def test_an_unreachable_tracking_server_is_one_line_without_its_password(tmp_path):
    # The MLflow client's own message quotes the URI it was given, password and all.
    import os
    import subprocess
    import sys

    from tests._ports import free_port

    uri = f"http://alice:hunter2@127.0.0.1:{free_port()}/"
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    for args in (["status", "t", "--tracking-uri", uri], ["export", "t", "--tracking-uri", uri]):
        r = subprocess.run(
            [sys.executable, "-m", "sweeps", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert r.returncode == 1, r.stderr
        assert "hunter2" not in r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: the tracking store failed: "), lines
        assert "alice:***@127.0.0.1" in lines[0]


def test_redact_hides_a_password_in_the_authority_or_the_query():
    from sweeps.uris import password_in, redact

    assert redact("postgresql://u:hunter2@db/x") == "postgresql://u:***@db/x"
    assert redact("postgresql://u@db/x?sslmode=require&password=hunter2") == (
        "postgresql://u@db/x?sslmode=require&password=***"
    )
    assert redact("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
    assert not password_in("http://127.0.0.1:5000") and password_in("http://u:p@h")


# --- what is submitted --------------------------------------------------------------------------


class FakeClient:
    """Stands in for ``JobSubmissionClient``; snapshots the staged working_dir on submit."""

    def __init__(self, existing: dict[str, str] | None = None, duplicate: bool = False):
        self.jobs = dict(existing or {})
        self.duplicate = duplicate
        self.submitted: list[dict[str, Any]] = []
        self.staged: dict[str, str] = {}

    def get_job_info(self, sid: str) -> SimpleNamespace:
        if sid not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {sid} does not exist.")
        return SimpleNamespace(
            status=self.jobs[sid],
            submission_id=sid,
            job_id="02000000",
            message="Job is currently running.",
            start_time=1_700_000_000_000,
            end_time=None,
        )

    def submit_job(self, **kw: Any) -> str:
        self.submitted.append(kw)
        root = Path(kw["runtime_env"]["working_dir"])
        self.staged = {
            str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()
        }
        if self.duplicate:
            self.jobs[kw["submission_id"]] = "RUNNING"
            raise RuntimeError(DUPLICATE.format(name=kw["submission_id"].split("-", 1)[1]))
        self.jobs[kw["submission_id"]] = "PENDING"
        return kw["submission_id"]


@pytest.fixture
def fake(monkeypatch):
    f = FakeClient()
    monkeypatch.setattr(jobs, "client", lambda address: f)
    return f


def write_spec(tmp_path: Path, name: str = "meta", **over: Any) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(sweep_dict(name, **over)))
    return p


def test_entrypoint_is_the_fixed_argv_whatever_the_spec_holds(fake, tmp_path):
    pwned = tmp_path / "pwned"
    d = sweep_dict(
        "meta",
        storage_path=f"{tmp_path}/r; touch {pwned}",
        tracking_uri=f"sqlite:///{tmp_path}/m.db`touch {pwned}`",
    )
    d["train"]["data"]["root"] = f"$(touch {pwned})"
    spec = tmp_path / "meta.yaml"
    spec.write_text(yaml.safe_dump(d))
    r = CliRunner().invoke(
        make_app(), ["submit", str(spec), "--smoke-test", "--address", "http://127.0.0.1:8265"]
    )
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "submitted Ray job flatsweep-meta-smoke"
    (job,) = fake.submitted
    assert job["entrypoint"] == "python -m sweeps run sweep.yaml --quiet --smoke-test"
    assert job["submission_id"] == "flatsweep-meta-smoke"
    assert fake.staged["sweep.yaml"] == spec.read_text()  # the spec travels as a file only
    # The shell that runs the entrypoint on the cluster sees exactly that argv.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "python"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\n')
    stub.chmod(0o755)
    subprocess.run(
        ["sh", "-c", job["entrypoint"]], check=True, env={"PATH": f"{bindir}:/usr/bin:/bin"}
    )
    assert (tmp_path / "argv").read_text().split() == [
        "-m",
        "sweeps",
        "run",
        "sweep.yaml",
        "--quiet",
        "--smoke-test",
    ]
    assert not pwned.exists()


def test_without_smoke_test_the_flag_is_absent():
    assert shlex.split(jobs.entrypoint()) == [
        "python",
        "-m",
        "sweeps",
        "run",
        "sweep.yaml",
        "--quiet",
    ]


def submit_cli(spec: Path, *args: str) -> Any:  # noqa: ANN401 (click's Result)
    return CliRunner().invoke(
        make_app(), ["submit", str(spec), *args, "--address", "http://127.0.0.1:8265"]
    )


def test_a_smoke_test_has_its_own_job_and_does_not_block_the_real_sweep(fake, tmp_path):
    spec = write_spec(tmp_path)
    r = submit_cli(spec, "--smoke-test")
    assert r.output == "submitted Ray job flatsweep-meta-smoke\n"
    fake.jobs["flatsweep-meta-smoke"] = "SUCCEEDED"
    r = submit_cli(spec)
    assert r.exit_code == 0 and r.output == "submitted Ray job flatsweep-meta\n", r.output
    smoke_job, real_job = fake.submitted
    assert smoke_job["metadata"]["flatsweep.sweep"] == "meta-smoke"
    assert real_job["metadata"] == {"flatsweep.sweep": "meta", "flatsweep.smoke_test": "False"}
    assert "--smoke-test" not in shlex.split(real_job["entrypoint"])
    # each is reported, not started again, under its own id
    r = submit_cli(spec, "--smoke-test")
    assert r.output.startswith(
        "already submitted, not started again: Ray job flatsweep-meta-smoke is SUCCEEDED"
    )
    assert submit_cli(spec).output.startswith(
        "already submitted, not started again: Ray job flatsweep-meta is PENDING"
    )
    assert len(fake.submitted) == 2


@pytest.mark.parametrize(
    "args,sid,argv_tail",
    [
        (["--name", "meta-v2"], "flatsweep-meta-v2", ["--name", "meta-v2"]),
        (
            ["--name", "meta-v2", "--smoke-test"],
            "flatsweep-meta-v2-smoke",
            ["--name", "meta-v2", "--smoke-test"],
        ),
    ],
)
def test_name_overrides_the_specs_name_in_the_job(fake, tmp_path, args, sid, argv_tail):
    spec = write_spec(tmp_path)
    r = submit_cli(spec, *args)
    assert r.exit_code == 0 and r.output == f"submitted Ray job {sid}\n", r.output
    (job,) = fake.submitted
    assert job["submission_id"] == sid
    assert job["metadata"]["flatsweep.sweep"] == sid.removeprefix("flatsweep-")
    # the staged spec keeps its own name, so the job must be told the new one
    assert yaml.safe_load(fake.staged["sweep.yaml"])["name"] == "meta"
    argv = shlex.split(job["entrypoint"])
    assert argv == ["python", "-m", "sweeps", "run", "sweep.yaml", "--quiet", *argv_tail]
    # an existing job under the spec's own name does not hide the renamed one
    fake.jobs["flatsweep-meta"] = "RUNNING"
    assert submit_cli(spec, *args).output.startswith(
        f"already submitted, not started again: Ray job {sid} is PENDING"
    )


@pytest.mark.parametrize("bad", ["../x", "-rf", "a b", "x" * 65, "", "meta;id"])
def test_a_bad_name_is_refused_before_anything_is_contacted(monkeypatch, tmp_path, bad):
    contacted: list[str] = []
    monkeypatch.setattr(jobs, "client", lambda address: contacted.append(address))
    r = submit_cli(write_spec(tmp_path), f"--name={bad}", "--smoke-test")
    assert r.exit_code == 2
    assert r.output.startswith("error: --name: name must be 1-64 characters"), r.output
    assert r.output.count("\n") == 1 and not contacted
    with pytest.raises(SpecError, match="^name must be"):
        jobs.entrypoint(name=bad)


def test_staged_dir_holds_only_the_three_packages_and_the_spec(tmp_path):
    spec = write_spec(tmp_path)
    staged = jobs.stage(spec, tmp_path / "stage")
    assert sorted(p.name for p in staged.iterdir()) == [
        "search_spaces",
        "sweep.yaml",
        "sweeps",
        "trainers",
    ]
    names = {p.name for p in staged.rglob("*")}
    assert not names & {".venv", ".git", "__pycache__", "tests", "pyproject.toml"}
    assert not any(n.endswith(".pyc") for n in names)
    root = jobs.project_root()
    for pkg in jobs.PACKAGES:
        want = {p.relative_to(root) for p in (root / pkg).rglob("*.py")}
        assert {p.relative_to(staged) for p in (staged / pkg).rglob("*.py")} == want


def test_only_non_secret_settings_reach_the_job(fake, tmp_path, monkeypatch):
    token = secrets.token_hex(16)
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("FLATSWEEP_STORAGE", "rel/results")
    monkeypatch.chdir(tmp_path)
    r = jobs.submit(write_spec(tmp_path), "http://127.0.0.1:8265")
    assert r.job_id == "flatsweep-meta" and not r.existed
    (job,) = fake.submitted
    assert set(job["runtime_env"]) == {"working_dir", "env_vars"}
    assert job["runtime_env"]["env_vars"] == {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        # relative to the submitter's directory, not to the job's temporary one
        "FLATSWEEP_STORAGE": str(tmp_path / "rel" / "results"),
    }
    sent = (
        json.dumps({k: v for k, v in job.items() if k != "runtime_env"})
        + json.dumps(job["runtime_env"]["env_vars"])
        + "".join(fake.staged.values())
    )
    assert token not in sent and "aws-secret" not in sent


def test_a_tracking_uri_with_a_password_is_not_forwarded(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://u:hunter2@mlflow.example.com")
    r = CliRunner().invoke(
        make_app(), ["submit", str(write_spec(tmp_path)), "--address", "http://127.0.0.1:8265"]
    )
    assert r.exit_code == 2 and r.output.startswith("error: MLFLOW_TRACKING_URI: it carries")
    assert "hunter2" not in r.output and not fake.submitted


def test_pip_adds_the_pinned_runtime_dependencies(fake, tmp_path):
    jobs.submit(write_spec(tmp_path), "http://127.0.0.1:8265", pip=True)
    pins = fake.submitted[0]["runtime_env"]["pip"]
    assert "ray[default,tune]==2.60.0" in pins and "mlflow[auth]==3.17.2" in pins
    assert not any(p.startswith(("pytest", "ruff")) for p in pins)


def test_a_bad_spec_is_one_line_and_nothing_is_submitted(fake, tmp_path):
    spec = write_spec(tmp_path, num_sample=3)
    r = CliRunner().invoke(make_app(), ["submit", str(spec), "--address", "http://127.0.0.1:8265"])
    assert r.exit_code == 2
    assert r.output.startswith("error: num_sample: unknown key; did you mean 'num_samples'?")
    assert r.output.count("\n") == 1
    assert not fake.submitted


def test_data_roots_are_not_checked_on_the_submitting_machine(fake, tmp_path):
    d = sweep_dict("cifar")
    d["train"].update(
        model={"name": "preact_resnet18"}, data={"name": "cifar10", "root": "/data/on/the/cluster"}
    )
    spec = tmp_path / "c.yaml"
    spec.write_text(yaml.safe_dump(d))
    with pytest.raises(SpecError, match="data root"):
        load_spec(spec)
    assert jobs.submit(spec, "http://127.0.0.1:8265").job_id == "flatsweep-cifar"


def test_remote_preflight_runs_before_anything_is_sent(fake, tmp_path):
    spec = write_spec(tmp_path, storage_path=str(tmp_path / "ray"))
    r = CliRunner().invoke(make_app(), ["submit", str(spec), "--address", REMOTE])
    assert r.exit_code == 2 and "s3://" in r.output and not fake.submitted


@pytest.mark.parametrize(
    "ray_address,message",
    [
        (None, "--address: give the Ray dashboard URL"),
        ("auto", "RAY_ADDRESS='auto' is not one"),
        ("127.0.0.1:6379", "is not one"),
    ],
)
def test_address_is_a_dashboard_url(fake, tmp_path, monkeypatch, ray_address, message):
    if ray_address:
        monkeypatch.setenv("RAY_ADDRESS", ray_address)
    r = CliRunner().invoke(make_app(), ["submit", str(write_spec(tmp_path))])
    assert r.exit_code == 2 and message in r.output and not fake.submitted


def test_address_from_ray_address(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265/")
    assert jobs.submit(write_spec(tmp_path), None).job_id == "flatsweep-meta"


def test_second_submit_reports_the_existing_job(fake, tmp_path):
    fake.jobs["flatsweep-meta"] = "RUNNING"
    r = CliRunner().invoke(
        make_app(), ["submit", str(write_spec(tmp_path)), "--address", "http://127.0.0.1:8265"]
    )
    assert r.exit_code == 0, r.output
    assert r.output.startswith(
        "already submitted, not started again: Ray job flatsweep-meta is RUNNING"
    )
    assert not fake.submitted


def test_a_racing_duplicate_is_caught_from_rays_answer(fake, tmp_path):
    fake.duplicate = True
    r = jobs.submit(write_spec(tmp_path), "http://127.0.0.1:8265")
    assert r.existed and r.status == "RUNNING" and r.job_id == "flatsweep-meta"


def test_job_status_and_unknown_jobs(fake):
    fake.jobs["flatsweep-meta"] = "RUNNING"
    d = jobs.job_status("meta", "http://127.0.0.1:8265")
    assert d == {
        "name": "meta",
        "submission_id": "flatsweep-meta",
        "job_id": "02000000",
        "status": "RUNNING",
        "message": "Job is currently running.",
        "start_time": "2023-11-14T22:13:20+00:00",
        "end_time": None,
    }
    with pytest.raises(SpecError, match="^name: no Ray job 'flatsweep-other'"):
        jobs.job_status("other", "http://127.0.0.1:8265")
    r = CliRunner().invoke(make_app(), ["logs", "other", "--address", "http://127.0.0.1:8265"])
    assert r.exit_code == 2 and r.output.startswith("error: name: no Ray job")
    r = CliRunner().invoke(make_app(), ["stop", "../x", "--address", "http://127.0.0.1:8265"])
    assert r.exit_code == 2 and "name must be" in r.output


# --- the Ray token ------------------------------------------------------------------------------


def test_token_sources_in_rays_order(monkeypatch, tmp_path):
    home = Path(os.environ["HOME"])
    assert jobs.auth_headers() == {}
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    assert jobs.auth_headers() == {"Authorization": "Bearer from-home"}
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert jobs.read_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.read_token() == "from-env"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.read_token() is None


def test_an_unreadable_token_path_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(SpecError, match="^RAY_AUTH_TOKEN_PATH: cannot read the token file"):
        jobs.read_token()


def test_an_unreachable_dashboard_is_one_line(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = CliRunner().invoke(make_app(), ["logs", "x", "--address", f"http://127.0.0.1:{port}"])
    assert r.exit_code == 2
    assert r.output == (
        f"error: cannot reach the Ray dashboard at http://127.0.0.1:{port} (is "
        "the cluster up, and is that its dashboard port, 8265 by default?)\n"
    )


# --- a real Ray head with token authentication ----------------------------------------------

BIN = Path(sys.executable).parent


def kill_session(leader: subprocess.Popen, grace_s: float = 60) -> None:
    """Stop the Ray head we started and everything in its session (GCS, raylet, dashboard,
    workers); `ray stop --force` would also kill every other Ray on this machine."""
    import psutil

    leader.send_signal(signal.SIGTERM)
    try:
        leader.wait(grace_s)
    except subprocess.TimeoutExpired:
        leader.kill()
    members = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == leader.pid:
                members.append(p)
        except (OSError, psutil.Error):
            pass
    for p in members:
        p.terminate()
    _, alive = psutil.wait_procs(members, timeout=10)
    for p in alive:
        p.kill()


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head on 127.0.0.1 with token auth on, its token in a temporary HOME."""
    tmp = tmp_path_factory.mktemp("cluster")
    home = tmp / "home"
    home.mkdir()
    # Unix socket paths under --temp-dir must stay short (107 bytes): not under tmp_path.
    ray_tmp = Path(tempfile.mkdtemp(prefix="fsw-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env.update(
        HOME=str(home), PATH=f"{BIN}:{env.get('PATH', '')}", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0"
    )
    # `ray start` never generates a token; `ray get-auth-token --generate` writes
    # ~/.ray/auth_token, and with RAY_AUTH_MODE=token the head requires it.
    subprocess.run(
        [BIN / "ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True
    )
    token = (home / ".ray" / "auth_token").read_text().strip()
    env["RAY_AUTH_MODE"] = "token"
    gcs, dash, client_port, agent = free_ports(4)
    log = (tmp / "ray.log").open("w")
    proc = subprocess.Popen(
        [
            BIN / "ray",
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--port={gcs}",
            f"--dashboard-port={dash}",
            f"--ray-client-server-port={client_port}",
            f"--dashboard-agent-listen-port={agent}",
            "--num-cpus=2",
            "--include-dashboard=true",
            f"--temp-dir={ray_tmp}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp / "ray.log").read_text()[-3000:]
            try:
                r = requests.get(
                    f"{address}/api/jobs/", timeout=5, headers={"Authorization": f"Bearer {token}"}
                )
                if r.status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "the Ray head did not come up in 180 s"
            time.sleep(1)
        yield SimpleNamespace(address=address, token=token, home=home, tmp=tmp, ray_tmp=ray_tmp)
    finally:
        kill_session(proc)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def cli(head, *args: str, **env: str | None):  # noqa: ANN201
    """Run a ``sweeps`` jobs command with the environment a user's shell would have."""
    full = {k: None for k in SECRET_ENV} | {"HOME": str(head.home), "RAY_AUTH_MODE": "token"}
    return CliRunner().invoke(make_app(), [*args, "--address", head.address], env=full | env)


def tiny_spec(head, name: str, epochs: int = 1, **over: Any) -> Path:
    """MNIST-1D cnn1d on 300 examples; one MLflow store and Tune directory for the module."""
    d = sweep_dict(
        name,
        **{
            "num_samples": 2,
            "storage_path": str(head.tmp / "ray"),
            "tracking_uri": f"sqlite:///{head.tmp / 'mlflow.db'}",
            **over,
        },
    )
    d["train"]["data"] = {
        "name": "mnist1d",
        "num_train": 300,
        "num_test": 100,
        "root": f"$(touch {head.tmp / 'pwned'})",
    }  # ignored by mnist1d
    d["train"]["epochs"] = epochs
    p = head.tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def wait_for(head, name: str, statuses: tuple[str, ...], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(head.home))
        while True:
            d = jobs.job_status(name, head.address)
            if d["status"] in statuses or time.monotonic() > deadline:
                return d
            time.sleep(2)


@pytest.mark.cluster
def test_the_dashboard_refuses_requests_without_the_token(head, tmp_path):
    assert requests.get(f"{head.address}/api/jobs/", timeout=10).status_code == 401
    spec = tiny_spec(head, "noauth")
    r = cli(head, "submit", str(spec), HOME=str(tmp_path))  # no ~/.ray/auth_token there
    assert r.exit_code == 2
    assert r.output == (
        f"error: the Ray dashboard at {head.address} refused the request (401):"
        " set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH\n"
    )
    r = cli(head, "submit", str(spec), RAY_AUTH_TOKEN="0" * 64)
    assert r.exit_code == 2 and "refused the token (403)" in r.output
    assert head.token not in r.output
    r = cli(head, "logs", "noauth")
    assert r.exit_code == 2 and r.output.startswith("error: name: no Ray job 'flatsweep-noauth'")


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_submit_runs_the_sweep_once_on_the_cluster(head, tmp_path):
    from mlflow.tracking import MlflowClient

    from sweeps.tracking import find_children, find_parent

    spec = tiny_spec(head, "remote")
    t0 = time.monotonic()
    r = cli(head, "submit", str(spec), "--smoke-test")  # token from ~/.ray/auth_token
    assert r.exit_code == 0, r.output
    assert r.output == "submitted Ray job flatsweep-remote-smoke\n"
    assert head.token not in r.output
    d = wait_for(head, "remote-smoke", jobs.TERMINAL, 240)
    logs = cli(head, "logs", "remote-smoke", RAY_AUTH_TOKEN=head.token)
    assert d["status"] == "SUCCEEDED", logs.output[-3000:]
    print(f"submitted sweep finished in {time.monotonic() - t0:.0f} s")
    assert d["end_time"] >= d["start_time"] and d["job_id"]

    assert logs.exit_code == 0
    assert "python -m sweeps run sweep.yaml --quiet --smoke-test" in logs.output
    assert "sweep 'remote-smoke': 2 trials" in logs.output

    # a second submit reports the job instead of starting a twin
    (tmp_path / "tok").write_text(head.token + "\n")
    again = cli(
        head,
        "submit",
        str(spec),
        "--smoke-test",
        HOME=str(tmp_path),
        RAY_AUTH_TOKEN_PATH=str(tmp_path / "tok"),
    )
    assert again.exit_code == 0, again.output
    assert again.output.startswith(
        "already submitted, not started again: Ray job flatsweep-remote-smoke is SUCCEEDED"
    )
    # the finished smoke test does not block the real sweep (stopped here: it is not the test)
    real = cli(head, "submit", str(spec))
    assert real.output == "submitted Ray job flatsweep-remote\n", real.output
    assert cli(head, "stop", "remote").exit_code == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(head.home))
        listed = jobs.client(head.address).list_jobs()
    assert [j.submission_id for j in listed].count("flatsweep-remote-smoke") == 1

    client = MlflowClient(f"sqlite:///{head.tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("remote-smoke")
    parent = find_parent(client, exp.experiment_id, "remote-smoke")
    children = find_children(client, exp.experiment_id, parent.info.run_id)
    assert len(client.search_runs([exp.experiment_id])) == 3 and len(children) == 2
    assert {r.info.status for r in [parent, *children]} == {"FINISHED"}
    assert not (head.tmp / "pwned").exists()


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_driver_and_trial_workers_import_the_staged_packages(head, monkeypatch):
    """The job's working_dir reaches every worker, so a cluster without flatsweep installed
    runs the submitted code (here the checkout is installed too, so check where it came from)."""
    monkeypatch.setenv("HOME", str(head.home))
    spec = load_spec(tiny_spec(head, "probe"), check_files=False)
    code = (
        "import json, ray, sweeps, trainers\n"
        "ray.init()\n"
        "@ray.remote(num_cpus=1)\n"
        "def worker():\n"
        "    import search_spaces, sweeps, trainers\n"
        "    return [m.__file__ for m in (sweeps, trainers, search_spaces)]\n"
        "print('PROBE', json.dumps({'driver': [sweeps.__file__, trainers.__file__],"
        " 'worker': ray.get(worker.remote())}))\n"
    )
    c = jobs.client(head.address)
    with tempfile.TemporaryDirectory() as d:
        job = jobs.build_submission(spec, jobs.stage(head.tmp / "probe.yaml", Path(d)))
        sid = c.submit_job(
            entrypoint=shlex.join(["python", "-c", code]), runtime_env=job.runtime_env
        )
    deadline = time.monotonic() + 240
    while c.get_job_status(sid) not in jobs.TERMINAL and time.monotonic() < deadline:
        time.sleep(1)
    logs = c.get_job_logs(sid)
    assert c.get_job_status(sid) == "SUCCEEDED", logs[-3000:]
    line = next(ln for ln in logs.splitlines() if ln.startswith("PROBE "))
    files = json.loads(line.removeprefix("PROBE "))
    for f in files["driver"] + files["worker"]:
        assert f.startswith(str(head.ray_tmp)) and "working_dir_files" in f, f
        assert not f.startswith(str(jobs.project_root()))


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_stop_ends_a_running_sweep(head):
    spec = tiny_spec(head, "long", epochs=500, num_samples=4)
    assert cli(head, "submit", str(spec)).exit_code == 0
    assert wait_for(head, "long", ("RUNNING", *jobs.TERMINAL), 120)["status"] == "RUNNING"
    r = cli(head, "stop", "long")
    assert r.exit_code == 0, r.output
    assert r.output == "Ray job flatsweep-long stopped; status STOPPED\n"
    r = cli(head, "stop", "long")
    assert r.output == "Ray job flatsweep-long was not running; status STOPPED\n"
