"""``sweeps reproduce``: one paper row re-run and printed next to the published numbers.

``register(app)`` adds the command to the ``sweeps`` app in ``sweeps.cli``; the work is in
``sweeps.reproduce``. Like ``sweeps.jobs_cli``, this module never imports ``sweeps.cli`` at the
top, so ``sweeps.cli`` can import it like any other module.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from sweeps._console import err, fail, out
from sweeps.spec import SpecError

#: Exit code of a run stopped by Ctrl-C or SIGTERM, as ``sweeps run`` (128 + SIGINT).
EXIT_INTERRUPTED = 130

_HELP = (
    "Re-run a paper row: train a preset's method and its baseline (ERM; plain PGD-AT for AWP) "
    "with N fresh seeds as Ray Tune trials under one MLflow parent run (default name "
    "PRESET's name + '-repro'), then print and log (the parent run's reproduction.md and "
    "reproduce.* metrics) a table: the paper's number, the official logs' number where one "
    "exists, and ours as mean ± std over seeds at the best-validation epoch and at the last "
    "epoch.\n\n"
    "PRESET is a name in examples/paper (amp_cifar10, amp_cifar100, amp_svhn, awp_cifar10) or a "
    "spec file; its published numbers come from examples/paper/reference/papers.yaml. A full "
    "reproduction needs a GPU and hours: see benchmarks/REPRODUCTION.md.\n\n"
    "--epochs shortens every training (LR milestones move to the same fraction of it); --data "
    "mnist1d (or digits) swaps in a small dataset and model on the CPU: a smoke test of the "
    "pipeline, named NAME-repro-smoke and labelled so, never a reproduction.\n\n"
    "--address http://HOST:8265 runs the same command as the Ray job flatsweep-NAME on that "
    "cluster (as `sweeps submit`: the token from RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / "
    "~/.ray/auth_token; follow it with `sweeps logs NAME --address ...`)."
)


def register(app: typer.Typer) -> None:
    """Add ``reproduce`` to ``app``."""
    app.command(help=_HELP)(reproduce)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def reproduce(
    preset: Annotated[
        str, typer.Argument(help="a preset name in examples/paper (amp_cifar10, ...) or a file")
    ],
    seeds: Annotated[
        int | None, typer.Option("--seeds", help="training seeds per side (default: the preset's)")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", help="epochs per training; milestones scale with it"),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="sweep and parent run name (default NAME-repro)")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="smoke test: mnist1d or digits replaces data and model"),
    ] = None,
    data_root: Annotated[
        str | None, typer.Option("--data-root", help="directory of the dataset's files")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri")] = None,
    storage_path: Annotated[
        str | None, typer.Option("--storage-path", help="Ray Tune storage (default ./.flatsweep)")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray dashboard URL: run as a Ray job on that cluster"),
    ] = None,
    shared_storage: Annotated[
        bool, typer.Option("--shared-storage", help="with --address: storage is mounted on all")
    ] = False,
    pip: Annotated[
        bool, typer.Option("--pip", help="with --address: install the pinned dependencies")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue an interrupted reproduction of this name")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="check and print the plan; start nothing")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no live display")] = False,
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="published numbers (default examples/paper/reference)"),
    ] = None,
) -> None:
    from sweeps import reproduce as rp

    try:
        p = rp.plan(
            preset,
            seeds=seeds,
            epochs=epochs,
            name=name,
            data=data,
            data_root=data_root,
            tracking_uri=tracking_uri,
            storage_path=storage_path,
            reference_file=reference,
            # Data roots are checked where the trials run: here, or by the job on the cluster.
            check_files=address is None,
        )
    except SpecError as e:
        raise fail(str(e)) from None
    s = p.spec
    method, baseline = rp.sides(p)
    kind = f"smoke test on {p.smoke}" if p.smoke else "reproduction"
    out.print(
        f"{kind} {s.name!r} of {p.path.name}: {method.label} and {baseline.label}, seeds "
        f"{p.seeds}, {s.train.epochs} epochs each (preset: {p.preset_epochs}), milestones "
        f"{s.train.schedule.milestones}; reference: "
        f"{'yes' if p.reference else 'none for ' + repr(p.preset)}",
        markup=False,
        highlight=False,
    )
    if dry_run:
        return
    if address is not None:
        logging.getLogger("ray.dashboard.modules.dashboard_sdk").setLevel(logging.WARNING)
        logging.getLogger("ray._private.runtime_env.packaging").setLevel(logging.WARNING)
        try:
            r = rp.submit(p, address, shared_storage=shared_storage, pip=pip)
        except SpecError as e:
            raise fail(str(e)) from None
        what = "already submitted, not started again:" if r.existed else "submitted"
        out.print(
            f"{what} Ray job {r.job_id} ({r.status}); follow it with: sweeps logs {s.name} "
            f"--address {address} --follow",
            markup=False,
            highlight=False,
        )
        return
    _run_here(p, resume=resume, quiet=quiet)


def _run_here(p, *, resume: bool, quiet: bool) -> None:  # noqa: ANN001 - a sweeps.reproduce.Plan
    from sweeps import reproduce as rp
    from sweeps.runner import Interrupted

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    # As `sweeps run`: SIGTERM outside Tune's run ends like Ctrl-C, so the runs end KILLED.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result, table = rp.run(p, resume=resume, progress=not quiet)
    except SpecError as e:
        raise fail(str(e)) from None
    except (Interrupted, KeyboardInterrupt):
        err.print(
            f"interrupted: {p.spec.name!r} is recorded as KILLED; its finished trials are kept. "
            f"Continue it with the same command plus --resume",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    out.print(rp.format_table(table), markup=False, highlight=False)
    out.print(
        f"logged on MLflow parent run {result.parent_run_id}: reproduction.md, "
        f"reproduction.json, reproduce.* metrics",
        markup=False,
        highlight=False,
    )
    out.print(result.browse_hint(), markup=False, highlight=False)
