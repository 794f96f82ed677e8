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

from sweeps import reproduce_cli
from sweeps._console import err, fail, out
from sweeps.dbinit import sqlite_path
from sweeps.jobs_cli import register
from sweeps.spec import SpecError, load_spec, resolve_tracking_uri
from sweeps.uris import redact

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter sweeps for flat-minima regularizers on Ray Tune + "
    "Optuna, tracked in MLflow.",
)

SpecArg = Annotated[Path, typer.Argument(help="sweep spec YAML file")]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="run the sweep under this name instead of the spec's")
]
#: Exit code of a sweep stopped by Ctrl-C or SIGTERM (128 + SIGINT, the shell convention).
EXIT_INTERRUPTED = 130


def _client(tracking_uri: str | None):  # noqa: ANN202
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    if (db := sqlite_path(uri)) is not None and not Path(db).exists():
        raise fail(
            f"--tracking-uri: no tracking store at {uri} (run a sweep first, or set "
            f"MLFLOW_TRACKING_URI)"
        )
    return MlflowClient(uri)


def _sweep(client, name: str):  # noqa: ANN001, ANN202
    from sweeps.tracking import find_sweep

    sweep = find_sweep(client, name)
    if sweep is None:
        raise fail(f"name: no sweep {name!r} in {redact(client.tracking_uri)}")
    return sweep


def _check_out(out_dir: Path) -> None:
    """``--out`` must be a directory, or not exist yet (it is made)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise fail(f"--out: {str(out_dir)!r} exists and is not a directory")


def _load(spec: Path, **kw: object):  # noqa: ANN202
    try:
        s = load_spec(spec, **kw)
    except SpecError as e:
        raise fail(str(e)) from None
    for line in s.warnings():
        err.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    return s


AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address", help="Ray dashboard URL (http://HOST:8265) of the cluster to check against"
    ),
]


@app.command()
def validate(
    specs: Annotated[list[Path], typer.Argument(help="sweep spec YAML files")],
    address: AddressOpt = None,
    shared_storage: Annotated[
        bool, typer.Option("--shared-storage", help="storage_path is a path every node mounts")
    ] = False,
    no_data_check: Annotated[
        bool,
        typer.Option(
            "--no-data-check", help="skip data roots (they are checked where the trials run)"
        ),
    ] = False,
) -> None:
    """Check specs completely without starting Ray or touching MLflow (first error: exit 2)."""
    for spec in specs:
        # Data roots are checked where the trials run: here, or on the cluster.
        s = _load(spec, check_files=address is None and not no_data_check)
        if address is not None:
            from sweeps.preflight import preflight, resolve_address

            try:
                preflight(s, resolve_address(address), shared_storage=shared_storage)
            except SpecError as e:
                raise fail(str(e)) from None
        else:  # `sweeps run` starts a Ray of its own here: can it place a trial at all?
            from sweeps.preflight import check_fits_local_ray

            try:
                check_fits_local_ray(s)
            except SpecError as e:
                raise fail(str(e)) from None
        f = s.finalists
        confirm = (
            f"then top {f.top_k} x {f.seeds} seeds" + (" vs baseline" if f.baseline else "")
            if f.top_k
            else "no confirmation stage"
        )
        out.print(
            f"ok: sweep {s.name!r}: {s.num_samples} trials of space {s.space_name!r}, "
            f"{s.metric} ({s.mode}), scheduler {s.scheduler.name} (grace period "
            f"{s.grace_period}), {confirm}"
        )


@app.command()
def run(
    spec: SpecArg,
    smoke_test: Annotated[
        bool, typer.Option("--smoke-test", help="2 trials of 1 epoch, as NAME-smoke")
    ] = False,
    name: NameOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no live display")] = False,
) -> None:
    """Run a sweep on local Ray (or the cluster this driver runs in)."""
    from sweeps.spec import as_run

    s = _load(spec)
    try:
        s = as_run(s, name=name, smoke_test=smoke_test)
    except SpecError as e:
        raise fail(str(e)) from None
    _run(s, spec.read_text(), resume=False, quiet=quiet)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run(s, text: str, *, resume: bool, quiet: bool, search: bool = True) -> None:  # noqa: ANN001
    from sweeps.runner import Interrupted, NotStarted, SweepFailed, run_sweep

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Tune's own "Resume experiment with: Tuner.restore(...)" hint is not the way on here.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    # `ray job stop` and schedulers send SIGTERM: outside Tune's run, end like Ctrl-C (inside
    # it, sweeps.ray_internals.InterruptWatch takes Tune's graceful path), so the sweep's
    # MLflow runs are closed as KILLED instead of being left RUNNING.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_sweep(s, text, resume=resume, progress=not quiet, search=search)
    except SpecError as e:
        raise fail(str(e)) from None
    except SweepFailed as e:
        err.print(f"failed: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except NotStarted as e:
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (Interrupted, KeyboardInterrupt):
        err.print(
            f"interrupted: sweep {s.name!r} is recorded as KILLED; its finished trials "
            f"are kept. Continue it with: sweeps resume {s.name}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    best = result.best
    out.print(
        f"sweep {result.name!r}: {result.num_trials} trials; MLflow experiment "
        f"{result.experiment_id}, parent run {result.parent_run_id}",
        markup=False,
    )
    if best:
        metric = s.primary[0]
        out.print(
            f"best search trial by {metric}: {best['run_name']} = {best[metric]:.4f} "
            f"(validation; not a claim: see the verdict)",
            markup=False,
            highlight=False,
        )
    if result.verdict is not None:
        from sweeps.report import format_verdict_table

        out.print(format_verdict_table(result.verdict), markup=False, highlight=False)
    elif s.finalists.top_k:
        why = result.no_verdict or "the confirmation stage had nothing to confirm"
        out.print(f"no verdict: {why}", markup=False)
    if result.report_dir:
        out.print(
            f"report: {result.report_dir}/report.md (also the parent run's report/ artifacts)",
            markup=False,
            highlight=False,
        )
    out.print(result.browse_hint(), markup=False, highlight=False)


@app.command()
def resume(
    name: Annotated[str, typer.Argument(help="the sweep's name")],
    spec: Annotated[
        Path | None, typer.Option(help="spec file, else the one stored in MLflow")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option()] = None,
    quiet: bool = False,
) -> None:
    """Finish an interrupted sweep: finished trials and stages are kept, the study continues."""
    import tempfile

    from sweeps.spec import with_name

    if spec is None:
        client = _client(tracking_uri)
        sweep = _sweep(client, name)
        with tempfile.TemporaryDirectory() as d:
            path = Path(client.download_artifacts(sweep.parent_id, "sweep.yaml", d))
            text = path.read_text()
            s = _load(path)
    else:
        text = spec.read_text()
        s = _load(spec)
    if s.name != name:
        # A sweep started with --name (or a smoke test) stores the spec under its own name.
        try:
            s = with_name(s, name)
        except SpecError as e:
            raise fail(str(e)) from None
    if name.endswith("-smoke") and s.num_samples != 2:
        from sweeps.spec import smoke

        s = smoke(s).model_copy(update={"name": name})
    if tracking_uri:
        s = s.model_copy(update={"tracking_uri": tracking_uri})
    search = True
    if spec is None:  # a reproduction (no search stage) resumes as one
        search = sweep.parent.data.tags.get("flatsweep.search", "true") != "false"
    _run(s, text, resume=True, quiet=quiet, search=search)


@app.command()
def status(
    name: Annotated[str, typer.Argument(help="the sweep's name")],
    tracking_uri: Annotated[str | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray dashboard URL: show the sweep's Ray job")
    ] = None,
) -> None:
    """Trials of a sweep, best first, with their searched values, metrics and the verdict."""
    from rich.table import Table

    if address is not None:
        from sweeps.jobs import job_status

        try:
            d = job_status(name, address)
        except SpecError as e:
            raise fail(str(e)) from None
        if as_json:
            print(json.dumps(d))
            return
        out.print(
            f"Ray job {d['submission_id']}: {d['status']} ({d['message']}); started "
            f"{d['start_time']}, ended {d['end_time'] or '-'}",
            markup=False,
            highlight=False,
        )
        return

    from sweeps import tracking

    client = _client(tracking_uri)
    sweep = _sweep(client, name)
    rows = tracking.status_rows(client, sweep)
    objectives = sweep.objectives
    metrics = [m for m, _ in objectives]
    test = tracking._test_metric(metrics[0])
    tags = sweep.parent.data.tags
    verdict = {
        k.removeprefix("final."): v
        for k, v in sweep.parent.data.metrics.items()
        if k.startswith("final.")
    }
    if as_json:
        print(
            json.dumps(
                {
                    "sweep": name,
                    "status": sweep.parent.info.status,
                    "objectives": [{"metric": m, "mode": o} for m, o in objectives],
                    "verdict": tags.get(tracking.TAG_VERDICT),
                    "final": verdict,
                    "trials": rows,
                },
                default=str,
            )
        )
        return
    params = sorted({k for r in rows for k in r["params"] if k != "perturbation.kind"})
    table = Table(title=f"sweep {name} ({sweep.parent.info.status})")
    short = {k: tracking._SHORT.get(k, k) for k in params}
    for col in ("stage", "run", *metrics, test, *short.values(), "status", "note"):
        table.add_column(col)
    for r in rows:
        cells = ["-" if r.get(m) is None else f"{r[m]:.4f}" for m in metrics]
        t = "-" if r.get(test) is None else f"{r[test]:.4f}"
        ps = [
            tracking._fmt(r["params"][k]) if r["params"].get(k) is not None else "-" for k in params
        ]
        note = "stopped early" if r["stopped_early"] else "diverged" if r["diverged"] else ""
        table.add_row(r["stage"], r["run_name"] or r["trial"], *cells, t, *ps, r["status"], note)
    out.print(table)
    if params:
        out.print(
            "searched: " + ", ".join(f"{v} = {k}" for k, v in short.items()),
            markup=False,
            highlight=False,
        )
    if tracking.TAG_VERDICT in tags:
        d = {
            k: verdict.get(f"delta.{test}.{x}")
            for k, x in (("mean", "mean"), ("lo", "ci_low"), ("hi", "ci_high"))
        }
        # A ratio not logged (not finite) is unknown, not free.
        ratio = verdict.get("winner.cost_ratio")
        cost = "unknown" if ratio is None else f"x{ratio:.2f}"
        # The interval's coverage is logged with it (0.95 jointly over the finalists).
        conf = verdict.get(f"delta.{test}.confidence", 0.95)
        interval = (
            ""
            if d["lo"] is None
            else f", {conf * 100:.3g}% interval [{d['lo']:+.4f}, {d['hi']:+.4f}]"
        )
        out.print(
            f"verdict: {tags[tracking.TAG_VERDICT]} (winner - baseline {test} "
            f"{d['mean']:+.4f}{interval}; cost {cost})",
            markup=False,
            highlight=False,
        )
    else:
        out.print("verdict: none yet (no finished confirmation stage)", markup=False)


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="the sweep's name")],
    top: Annotated[int, typer.Option(help="how many of the best configs")] = 1,
    out_dir: Annotated[Path, typer.Option("--out", help="output directory")] = Path("best"),
    fmt: Annotated[str, typer.Option("--format", help="yaml or json")] = "yaml",
    tracking_uri: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Write the best configs, the verdict's winner first (`python -m trainers FILE` re-runs)."""
    from sweeps.export import export_best

    if fmt not in ("yaml", "json"):
        raise fail(f"--format must be one of yaml, json, but got {fmt!r}")
    if top < 1:
        raise fail(f"--top must be >= 1, but got {top}")
    _check_out(out_dir)
    try:
        files = export_best(_client(tracking_uri), name, top=top, out=out_dir, fmt=fmt)
    except SpecError as e:
        raise fail(str(e)) from None
    for f in files:
        out.print(f"wrote {f}  (re-run: python -m trainers {f})", markup=False)


@app.command()
def report(
    name: Annotated[str, typer.Argument(help="the sweep's name")],
    out_dir: Annotated[Path, typer.Option("--out", help="output directory")] = Path("report"),
    tracking_uri: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Write report.md and its figures for a sweep (also done when a sweep ends)."""
    from sweeps import tracking
    from sweeps.report import write_report

    _check_out(out_dir)
    client = _client(tracking_uri)
    sweep = _sweep(client, name)
    files = write_report(tracking.sweep_record(client, sweep), out_dir)
    for f in files:
        out.print(f"wrote {f}", markup=False)


register(app)
reproduce_cli.register(app)


def _known_secrets() -> list[str]:
    """Passwords this command was given in URIs (arguments, MLflow's and our environment
    variables), to keep out of any error it prints."""
    import os

    from sweeps.uris import secrets_in

    values = [a.split("=", 1)[-1] for a in sys.argv[1:]]  # --tracking-uri=URI too
    found = [v for v in values if "://" in v]
    found += [os.environ.get(k, "") for k in ("MLFLOW_TRACKING_URI", "FLATSWEEP_STORAGE")]
    secrets = [x for uri in found if uri for x in secrets_in(uri)]
    if password := os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        secrets.append(password)
    return secrets


def main() -> None:
    """Console-script entry point.

    An error no command turned into a one-line ``error:`` is printed without any password
    the command was given (an MLflow client's message quotes its URI): a tracking store that
    cannot be reached or refuses a request in one line, anything else (a bug) as its
    traceback. Exit 1.
    """
    import traceback

    from sweeps.uris import scrub

    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence for what is printed
        from mlflow.exceptions import MlflowException
        from requests.exceptions import RequestException

        from sweeps.tracking import first_line

        secrets = _known_secrets()
        if isinstance(e, MlflowException | RequestException | ConnectionError):
            err.print(
                f"error: the tracking store failed: {scrub(first_line(e, 300), secrets)}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        else:
            text = "".join(traceback.format_exception(e))
            sys.stderr.write(scrub(text, secrets))
        sys.exit(1)


if __name__ == "__main__":
    main()
