"""The ``sweeps`` command line: validate, run, status, resume, export (typer + rich).

Every user error is one line naming the field and the allowed values, exit code 2, no
traceback, and nothing created: validation runs before Ray starts or MLflow is written.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sweeps.spec import SpecError, load_spec, smoke

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hyperparameter sweeps for flat-minima regularizers on Ray Tune + "
                       "Optuna, tracked in MLflow.")
out = Console(soft_wrap=True)
err = Console(stderr=True)

SpecArg = Annotated[Path, typer.Argument(help="sweep spec YAML file")]


def fail(message: str) -> typer.Exit:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _client(tracking_uri: str | None):  # noqa: ANN202
    import os

    from mlflow.tracking import MlflowClient

    from sweeps.spec import DEFAULT_TRACKING_DB

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{Path(DEFAULT_TRACKING_DB).resolve()}"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise fail(f"--tracking-uri: no tracking store at {uri} (run a sweep first, or set "
                   f"MLFLOW_TRACKING_URI)")
    return MlflowClient(uri)


AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="Ray dashboard URL (http://HOST:8265) of the cluster to check against")]


@app.command()
def validate(spec: SpecArg, address: AddressOpt = None,
             shared_storage: Annotated[bool, typer.Option(
                 "--shared-storage", help="storage_path is a path every node mounts")] = False
             ) -> None:
    """Check a spec completely without starting Ray or touching MLflow."""
    try:
        # Data roots are checked where the trials run: here, or on the cluster.
        s = load_spec(spec, check_files=address is None)
        if address is not None:
            from sweeps.submit import preflight, resolve_address

            preflight(s, resolve_address(address), shared_storage=shared_storage)
    except SpecError as e:
        raise fail(str(e)) from None
    out.print(f"ok: sweep {s.name!r}: {s.num_samples} trials of space {s.space.name!r}, "
              f"{s.metric} ({s.mode}), scheduler {s.scheduler.name}")


@app.command()
def run(spec: SpecArg,
        smoke_test: Annotated[bool, typer.Option("--smoke-test",
                                                 help="2 trials of 1 epoch")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", help="no live display")] = False) -> None:
    """Run a sweep on local Ray (or the cluster this driver runs in)."""
    try:
        s = load_spec(spec)
    except SpecError as e:
        raise fail(str(e)) from None
    if smoke_test:
        s = smoke(s)
    _run(s, spec.read_text(), resume=False, quiet=quiet)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run(s, text: str, *, resume: bool, quiet: bool) -> None:  # noqa: ANN001
    from sweeps.runner import run_sweep

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # `ray job stop` and schedulers send SIGTERM: end like Ctrl-C, so the sweep's MLflow runs
    # are closed as KILLED instead of being left RUNNING.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_sweep(s, text, resume=resume, progress=not quiet)
    except SpecError as e:
        raise fail(str(e)) from None
    best = result.best
    out.print(f"sweep {result.name!r}: {result.num_trials} trials; MLflow experiment "
              f"{result.experiment_id}, parent run {result.parent_run_id}")
    if best:
        metric = s.primary[0]
        out.print(f"best {metric} = {best[metric]:.4f} (trial {best['trial_id']})")
    out.print(f"browse: mlflow ui --backend-store-uri {result.tracking_uri} "
              f"--host 127.0.0.1 --port 5000  ->  {result.ui_url()}")


@app.command()
def resume(name: Annotated[str, typer.Argument(help="the sweep's name")],
           spec: Annotated[Path | None, typer.Option(help="spec file, else the one stored "
                                                          "in MLflow")] = None,
           tracking_uri: Annotated[str | None, typer.Option()] = None,
           quiet: bool = False) -> None:
    """Finish an interrupted sweep: finished trials are kept, the Optuna study continues."""
    import tempfile

    if spec is None:
        client = _client(tracking_uri)
        from sweeps.tracking import find_parent

        exp = client.get_experiment_by_name(name)
        parent = find_parent(client, exp.experiment_id, name) if exp else None
        if parent is None:
            raise fail(f"name: no sweep {name!r} in {client.tracking_uri}")
        with tempfile.TemporaryDirectory() as d:
            path = Path(client.download_artifacts(parent.info.run_id, "sweep.yaml", d))
            text = path.read_text()
            try:
                s = load_spec(path)
            except SpecError as e:
                raise fail(str(e)) from None
    else:
        text = spec.read_text()
        try:
            s = load_spec(spec)
        except SpecError as e:
            raise fail(str(e)) from None
    if s.name != name:
        raise fail(f"name: the spec names sweep {s.name!r}, not {name!r}")
    if tracking_uri:
        s = s.model_copy(update={"tracking_uri": tracking_uri})
    _run(s, text, resume=True, quiet=quiet)


@app.command()
def status(name: Annotated[str, typer.Argument(help="the sweep's name")],
           tracking_uri: Annotated[str | None, typer.Option()] = None,
           as_json: Annotated[bool, typer.Option("--json")] = False,
           address: Annotated[str | None, typer.Option(
               "--address", help="Ray dashboard URL: show the sweep's Ray job")] = None
           ) -> None:
    """Trials of a sweep and their status, from MLflow (or its Ray job, with --address)."""
    from rich.table import Table

    if address is not None:
        from sweeps.submit import job_status

        try:
            d = job_status(name, address)
        except SpecError as e:
            raise fail(str(e)) from None
        if as_json:
            print(json.dumps(d))
            return
        out.print(f"Ray job {d['submission_id']}: {d['status']} ({d['message']}); started "
                  f"{d['start_time']}, ended {d['end_time'] or '-'}", markup=False,
                  highlight=False)
        return

    from sweeps.tracking import TAG_TRIAL, find_children, find_parent

    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(name)
    parent = find_parent(client, exp.experiment_id, name) if exp else None
    if parent is None:
        raise fail(f"name: no sweep {name!r} in {client.tracking_uri}")
    metric = parent.data.params.get("metric", "test_acc")
    children = find_children(client, exp.experiment_id, parent.info.run_id)
    rows = sorted(({"trial": c.data.tags.get(TAG_TRIAL, ""), "status": c.info.status,
                    metric: c.data.metrics.get(metric),
                    "stopped_early": c.data.tags.get("flatsweep.stopped_early") == "1",
                    "diverged": c.data.tags.get("flatsweep.diverged") == "1"}
                   for c in children), key=lambda r: r["trial"])
    if as_json:
        print(json.dumps({"sweep": name, "status": parent.info.status, "trials": rows}))
        return
    table = Table(title=f"sweep {name} ({parent.info.status})")
    for col in ("trial", "status", metric, "stopped early", "diverged"):
        table.add_column(col)
    for r in rows:
        v = r[metric]
        table.add_row(r["trial"], r["status"], "-" if v is None else f"{v:.4f}",
                      "yes" if r["stopped_early"] else "", "yes" if r["diverged"] else "")
    out.print(table)


@app.command()
def export(name: Annotated[str, typer.Argument(help="the sweep's name")],
           top: Annotated[int, typer.Option(help="how many of the best trials")] = 1,
           out_dir: Annotated[Path, typer.Option("--out", help="output directory")] = Path(
               "best"),
           fmt: Annotated[str, typer.Option("--format", help="yaml or json")] = "yaml",
           tracking_uri: Annotated[str | None, typer.Option()] = None) -> None:
    """Write the best trials' TrainSpecs, re-runnable with `python -m trainers FILE`."""
    from sweeps.export import export_best

    if fmt not in ("yaml", "json"):
        raise fail(f"--format must be one of yaml, json, but got {fmt!r}")
    if top < 1:
        raise fail(f"--top must be >= 1, but got {top}")
    try:
        files = export_best(_client(tracking_uri), name, top=top, out=out_dir, fmt=fmt)
    except SpecError as e:
        raise fail(str(e)) from None
    for f in files:
        out.print(f"wrote {f}  (re-run: python -m trainers {f})")


from sweeps.jobs_cli import register  # noqa: E402  (needs `app`; avoids an import cycle)

register(app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
