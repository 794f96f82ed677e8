"""Submit a sweep to a running Ray cluster through the Ray Jobs API, and follow it there.

The job runs ``python -m sweeps run sweep.yaml --quiet [--name NAME] [--smoke-test]`` on the
head node: a fixed argv, so nothing from the spec reaches a shell (``NAME`` is checked against
``NAME_RE``, so it is one inert word). Its working directory is a staged copy of the
``trainers``, ``search_spaces`` and ``sweeps`` packages plus the spec, which Ray uploads and puts
on the path of the driver and of every trial worker. The job's submission id is
``flatsweep-<name>`` with the name the job's sweep runs under (``--name``, else the spec's,
``-smoke`` appended for ``--smoke-test``), so one sweep is one job, submitting it again reports
the existing one, and a finished smoke test never blocks the real sweep.

Credentials never travel in the job: the Ray token only authenticates this client's HTTP
requests (``Authorization: Bearer``, as Ray's own clients send it), and only non-secret settings
(``MLFLOW_TRACKING_URI``, ``FLATSWEEP_STORAGE``) are forwarded as job environment variables.
The checks of the spec against the cluster's address are in ``sweeps.preflight``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sweeps.dbinit import sqlite_path
from sweeps.preflight import preflight, resolve_address
from sweeps.spec import NAME_RE, SpecError, SweepSpec, as_run, load_spec
from sweeps.uris import password_in

PACKAGES = ("trainers", "search_spaces", "sweeps")
SPEC_NAME = "sweep.yaml"  # the spec's name inside the job's working directory
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "FLATSWEEP_STORAGE")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobError(SpecError):
    """A submission or job query that cannot proceed; the message is one line."""


def _check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise JobError(
            f"name must be 1-64 characters of letters, digits, '_', '.', '-' "
            f"starting with a letter or digit, but got {name!r}"
        )
    return name


def submission_id(name: str) -> str:
    """The Ray submission id of sweep ``name`` (names are already inert, see ``NAME_RE``)."""
    return f"flatsweep-{_check_name(name)}"


def entrypoint(*, smoke_test: bool = False, name: str | None = None) -> str:
    """The job's command line: a fixed argv, whatever the spec holds.

    ``name`` is the ``--name`` override, passed on so that the job's sweep runs under the name
    its submission id was made from (the staged spec still holds its own name).
    """
    argv = ["python", "-m", "sweeps", "run", SPEC_NAME, "--quiet"]
    if name is not None:
        argv += ["--name", _check_name(name)]
    if smoke_test:
        argv.append("--smoke-test")
    return shlex.join(argv)


# --- what is submitted -------------------------------------------------------------------------


def project_root() -> Path:
    """The directory holding the installed ``trainers``, ``search_spaces``, ``sweeps``."""
    import sweeps

    return Path(sweeps.__file__).resolve().parent.parent


def stage(spec_path: Path, dest: Path) -> Path:
    """Fill ``dest`` with the three packages and the spec as ``sweep.yaml``; return ``dest``."""
    root = project_root()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
    for pkg in PACKAGES:
        shutil.copytree(root / pkg, dest / pkg, ignore=ignore)
    shutil.copyfile(spec_path, dest / SPEC_NAME)
    return dest


def forwarded_env() -> dict[str, str]:
    """Non-secret settings of this shell that the job needs; relative paths made absolute."""
    env = {}
    storage = os.environ.get("FLATSWEEP_STORAGE")
    if storage:
        env["FLATSWEEP_STORAGE"] = (
            storage if "://" in storage else str(Path(storage).expanduser().resolve())
        )
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if password_in(uri):  # in the authority, or in the query (libpq's ?password=)
            # Job env vars are stored in the cluster and shown by the dashboard: never a secret.
            raise JobError(
                "MLFLOW_TRACKING_URI: it carries a password, which sweeps submit "
                "does not send to the cluster; drop it from the URI and give the "
                "cluster MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
            )
        db = sqlite_path(uri)
        if db is not None and not os.path.isabs(os.path.expanduser(db)):
            uri = f"sqlite:///{Path(db).expanduser().resolve()}"
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def pinned_requirements() -> list[str]:
    """flatsweep's own runtime requirements (no extras), as installed from pyproject.toml."""
    from importlib.metadata import requires

    return [r for r in requires("flatsweep") or [] if "extra ==" not in r]


@dataclass
class Submission:
    """Everything ``submit_job`` is called with."""

    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)


def build_submission(
    spec: SweepSpec,
    staged: Path,
    *,
    name: str | None = None,
    smoke_test: bool = False,
    pip: bool = False,
) -> Submission:
    """The job for ``spec`` (as its file holds it) staged in ``staged``; ``name`` and
    ``smoke_test`` as for ``as_run``, ``pip``: Ray installs the pinned requirements."""
    sweep = as_run(spec, name=name, smoke_test=smoke_test)
    runtime_env: dict[str, Any] = {"working_dir": str(staged), "env_vars": forwarded_env()}
    if pip:
        runtime_env["pip"] = pinned_requirements()
    return Submission(
        submission_id(sweep.name),
        entrypoint(smoke_test=smoke_test, name=name),
        runtime_env,
        {"flatsweep.sweep": sweep.name, "flatsweep.smoke_test": str(smoke_test)},
    )


# --- talking to the dashboard ------------------------------------------------------------------


def read_token() -> str | None:
    """The Ray token, found where Ray's own clients look: RAY_AUTH_TOKEN, the file at
    RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. None under RAY_AUTH_MODE=disabled."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as e:
            raise JobError(
                f"RAY_AUTH_TOKEN_PATH: cannot read the token file {path!r} ({e.strerror})"
            ) from None
        if not token:
            raise JobError(f"RAY_AUTH_TOKEN_PATH: the token file {path!r} is empty")
        return token
    try:
        return (Path.home() / ".ray" / "auth_token").read_text().strip() or None
    except OSError:
        return None


def auth_headers() -> dict[str, str]:
    """The header Ray's dashboard checks (``authorization: Bearer <token>``), if a token is
    known. Given explicitly, so it does not depend on RAY_AUTH_MODE being set in this shell."""
    token = read_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _status_code(e: Exception) -> int | None:
    m = re.search(r"status code (\d{3})", str(e))
    return int(m.group(1)) if m else None


@contextlib.contextmanager
def _dashboard(address: str) -> Iterator[None]:
    """Turn the Jobs SDK's failures into one-line ``JobError``s (never echoing a header)."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as e:
        if str(e).startswith("Authentication failed"):
            raise JobError(
                f"the Ray dashboard at {address} refused the token (403): "
                "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token does not "
                "hold this cluster's token (`ray get-auth-token` on the head prints "
                "it)"
            ) from None
        raise JobError(
            f"the Ray dashboard at {address} refused the request (401): set "
            "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
        ) from None
    except (ConnectionError, requests.exceptions.RequestException):
        raise JobError(
            f"cannot reach the Ray dashboard at {address} (is the cluster up, and is "
            "that its dashboard port, 8265 by default?)"
        ) from None


def client(address: str):  # noqa: ANN201
    """A ``JobSubmissionClient`` for ``address`` that sends the Ray token, if any."""
    from ray.job_submission import JobSubmissionClient

    with _dashboard(address):
        return JobSubmissionClient(address, headers=auth_headers())


def _iso(ms: int | None) -> str | None:
    return (
        None
        if ms is None
        else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")
    )


def _find(c: Any, name: str, address: str) -> Any | None:
    """The ``JobDetails`` of sweep ``name``'s job, or None if the cluster has no such job."""
    sid = submission_id(name)
    with _dashboard(address):
        try:
            return c.get_job_info(sid)
        except RuntimeError as e:
            if _status_code(e) == 404:
                return None
            raise JobError(
                f"the Ray dashboard at {address} failed to answer for job "
                f"{sid!r} (status {_status_code(e)})"
            ) from None


def _info(c: Any, name: str, address: str) -> Any:
    info = _find(c, name, address)
    if info is None:
        raise JobError(
            f"name: no Ray job {submission_id(name)!r} (sweep {name!r}) on the cluster at {address}"
        )
    return info


def _status_dict(name: str, info: Any) -> dict[str, Any]:
    status = getattr(info.status, "value", info.status)
    return {
        "name": name,
        "submission_id": info.submission_id,
        "job_id": info.job_id,
        "status": str(status),
        "message": info.message or "",
        "start_time": _iso(info.start_time),
        "end_time": _iso(info.end_time),
    }


def job_status(name: str, address: str | None) -> dict[str, Any]:
    """The Ray job of sweep ``name``: status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED),
    Ray's message, and start/end times (ISO 8601 UTC, None until set)."""
    address = resolve_address(address)
    return _status_dict(name, _info(client(address), name, address))


@dataclass
class SubmitResult:
    """The job a ``submit`` left on the cluster; ``existed``: it was there already."""

    job_id: str
    status: str
    existed: bool
    message: str = ""


def submit(
    spec_path: Path,
    address: str | None,
    *,
    name: str | None = None,
    smoke_test: bool = False,
    shared_storage: bool = False,
    pip: bool = False,
) -> SubmitResult:
    """Validate, preflight and submit the sweep at ``spec_path``; nothing is submitted on error.

    The job is ``flatsweep-<name>`` for the name the sweep runs under (``as_run``: ``name``
    overrides the spec's, a smoke test gets ``NAME-smoke``). A sweep already submitted under
    that name (any status) is not submitted again: Ray refuses a duplicate submission id, and
    the existing job is returned instead. Every local check, ``name`` included, runs before
    the dashboard is contacted.
    """
    spec = load_spec(spec_path, check_files=False)  # data roots are checked on the cluster
    sweep = as_run(spec, name=name, smoke_test=smoke_test)
    address = resolve_address(address)
    preflight(sweep, address, shared_storage=shared_storage)
    forwarded_env()  # refuses a tracking URI with a password before anything is sent
    c = client(address)
    sid = submission_id(sweep.name)
    existing = _find(c, sweep.name, address)
    if existing is not None:  # checked first so that nothing is uploaded for a duplicate
        return _existing(sweep.name, existing)
    with tempfile.TemporaryDirectory(prefix="flatsweep-submit-") as d:
        sub = build_submission(
            spec, stage(Path(spec_path), Path(d)), name=name, smoke_test=smoke_test, pip=pip
        )
        with _dashboard(address):
            try:
                job_id = c.submit_job(
                    entrypoint=sub.entrypoint,
                    submission_id=sid,
                    runtime_env=sub.runtime_env,
                    metadata=sub.metadata,
                )
            except RuntimeError as e:
                # Submitted by someone else since the check above: Ray 2.60 answers 500 with
                # the job manager's "Job with submission_id ... already exists" in the text.
                if "already exists" not in str(e):
                    raise JobError(
                        f"the Ray dashboard at {address} refused job {sid!r} "
                        f"(status {_status_code(e)}): "
                        f"{_last_line(str(e))}"
                    ) from None
                return _existing(sweep.name, _info(c, sweep.name, address))
    return SubmitResult(job_id, "PENDING", existed=False)


def _existing(name: str, info: Any) -> SubmitResult:
    d = _status_dict(name, info)
    return SubmitResult(d["submission_id"], d["status"], existed=True, message=d["message"])


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].rstrip(".") if lines else ""


def job_logs(name: str, address: str | None) -> str:
    """Everything the job's driver has printed so far."""
    address = resolve_address(address)
    c = client(address)
    _info(c, name, address)
    with _dashboard(address):
        return c.get_job_logs(submission_id(name))


def follow_logs(name: str, address: str | None, write: Callable[[str], Any]) -> None:
    """Stream the driver's output to ``write`` until the job ends."""
    import asyncio

    address = resolve_address(address)
    c = client(address)
    _info(c, name, address)

    async def tail() -> None:
        async for chunk in c.tail_job_logs(submission_id(name)):
            write(chunk)

    with _dashboard(address):
        asyncio.run(tail())


def stop_job(name: str, address: str | None, *, wait_s: float = 60) -> dict[str, Any]:
    """Ask Ray to stop the sweep's job (SIGTERM, then SIGKILL) and wait up to ``wait_s`` for it
    to end; return its status dict with ``stopped``: whether it was running."""
    import time

    address = resolve_address(address)
    c = client(address)
    _info(c, name, address)
    with _dashboard(address):
        stopped = c.stop_job(submission_id(name))
    deadline = time.monotonic() + wait_s
    while True:
        d = _status_dict(name, _info(c, name, address))
        if d["status"] in TERMINAL or time.monotonic() > deadline:
            return {**d, "stopped": stopped}
        time.sleep(0.5)
