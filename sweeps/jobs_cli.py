"""``sweeps submit``, ``sweeps logs``, ``sweeps stop``: a sweep as a job on a running Ray cluster.

``register(app)`` adds the commands to the ``sweeps`` app in ``sweeps.cli``. This module never
imports ``sweeps.cli`` (the console helpers are in ``sweeps._console``), so ``sweeps.cli`` imports
it at the top like any other module.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from sweeps import jobs
from sweeps._console import fail, out
from sweeps.spec import SpecError

AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="the Ray dashboard URL, e.g. http://127.0.0.1:8265; default: "
        "$RAY_ADDRESS when it starts with http",
        show_default=False,
    ),
]
NameArg = Annotated[str, typer.Argument(help="the sweep's name")]

TOKEN_HELP = (
    "The Ray token is read from RAY_AUTH_TOKEN, else the file at RAY_AUTH_TOKEN_PATH, "
    "else ~/.ray/auth_token (none under RAY_AUTH_MODE=disabled); it authenticates "
    "the requests only and is never printed or sent to the job."
)


def register(app: typer.Typer) -> None:
    """Add ``submit``, ``logs`` and ``stop`` to ``app``."""
    app.command(help=_SUBMIT_HELP)(submit)
    app.command(help=f"Print the driver output of a submitted sweep's Ray job. {TOKEN_HELP}")(logs)
    app.command(help=f"Stop a submitted sweep's Ray job (its trials end with it). {TOKEN_HELP}")(
        stop
    )


_SUBMIT_HELP = (
    "Submit a sweep to a running Ray cluster as the Ray job flatsweep-NAME (NAME: --name, else "
    "the spec's name; a smoke test runs as NAME-smoke, so it never blocks the real sweep); a "
    "sweep that is already a job there is reported, not started twice.\n\n"
    "The spec is validated here (data roots are checked on the cluster). The job runs "
    "`python -m sweeps run sweep.yaml --quiet [--name NAME] [--smoke-test]` on the head node "
    "in a copy of this checkout's trainers/, search_spaces/ and sweeps/; MLFLOW_TRACKING_URI "
    "and FLATSWEEP_STORAGE are forwarded when set here.\n\n"
    "Dependencies: the cluster's image must already have flatsweep's (infra/docker builds "
    "one); --pip makes Ray install the pinned ones into a per-job virtualenv instead, which "
    "takes minutes.\n\n"
    "A non-loopback address is treated as a multi-node cluster: storage must be s3:// or gs:// "
    "(or, with --shared-storage, a path every node mounts) and MLflow an http(s):// server.\n\n"
    + TOKEN_HELP
)


def submit(
    spec: Annotated[Path, typer.Argument(help="sweep spec YAML file")],
    address: AddressOpt = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="run the sweep under this name instead of the spec's"),
    ] = None,
    smoke_test: Annotated[
        bool, typer.Option("--smoke-test", help="2 trials of 1 epoch, as the sweep NAME-smoke")
    ] = False,
    shared_storage: Annotated[
        bool, typer.Option("--shared-storage", help="the storage path is mounted on every node")
    ] = False,
    pip: Annotated[
        bool, typer.Option("--pip", help="install the pinned dependencies on the cluster")
    ] = False,
) -> None:
    # Ray's SDK logs every upload at INFO ("Uploading package gcs://..."); keep stderr for errors.
    for logger in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    try:
        r = jobs.submit(
            spec,
            address,
            name=name,
            smoke_test=smoke_test,
            shared_storage=shared_storage,
            pip=pip,
        )
    except SpecError as e:
        raise fail(str(e)) from None
    if r.existed:
        note = f": {r.message}" if r.message else ""
        out.print(
            f"already submitted, not started again: Ray job {r.job_id} is {r.status}{note}",
            markup=False,
            highlight=False,
        )
    else:
        out.print(f"submitted Ray job {r.job_id}", markup=False, highlight=False)


def logs(
    name: NameArg,
    address: AddressOpt = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="stream until the job ends")
    ] = False,
) -> None:
    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        if follow:
            jobs.follow_logs(name, address, write)
        else:
            write(jobs.job_logs(name, address))
    except SpecError as e:
        raise fail(str(e)) from None


def stop(name: NameArg, address: AddressOpt = None) -> None:
    try:
        d = jobs.stop_job(name, address)
    except SpecError as e:
        raise fail(str(e)) from None
    what = "stopped" if d["stopped"] else "was not running"
    out.print(
        f"Ray job {d['submission_id']} {what}; status {d['status']}", markup=False, highlight=False
    )
