"""All of the sweeps' MLflow code: one parent run per sweep, one child run per trial.

Queries (``find_sweep``, ``children``, the status table, the export ranking, the report's
records), the parent run's life (``open_parent``, ``close_parent``, the verdict) and the Tune
callback that writes child runs live here, with one retry policy (``retrying``, tenacity).

Ray's ``MLflowLoggerCallback`` has no parent run and keeps its trial→run map only in driver
memory, so a restored sweep gets duplicate child runs and RUNNING leftovers. This callback
finds runs by tags instead (``flatsweep.sweep``, ``flatsweep.trial_id``), which makes every
operation idempotent across ``sweeps resume`` and driver restarts.

It runs in the driver only and logs with ``log_batch``: a short trial costs three calls
(``create_run`` with its tags, final ones included, one ``log_batch`` with its params and
every epoch's metrics, ``set_terminated``), and a running trial's epochs are merged into one
call per 5 s (``_Outbox``); nothing is logged from inside the training step. On a SQLite or
PostgreSQL tracking URI (MLflow's SQL store in this process) a delivery round's runs are
written together in one transaction instead (:mod:`sweeps.sqlbulk`, the same records; about
a tenth of the CPU per trial); an HTTP server gets the three calls. Writes go
through background writer threads: one for a SQLite or file store (one writer at a time
there), four for an HTTP server (``FLATSWEEP_MLFLOW_WRITERS``), each trial on one writer so
its writes keep their order. A stage of 100 trials or more runs those threads in a writer
process of the driver's (``process=True``, :mod:`sweeps.writer_process`), so the store's ORM
work never holds the GIL of Tune's event loop; ``FLATSWEEP_MLFLOW_PROCESS=N`` splits the trials
between N such processes (a SQLite store's work is then spread over N cores). Writes that
fail (tracking server down) are buffered in order and retried, so a tracking outage loses
nothing as long as the driver lives.

A fresh MLflow 3.17 browser shows run names and descriptions, not params: child runs are named
after their searched values (``amp r=0.0039 K=2 ilr=0.39``), finalist and baseline runs after
their stage and seed, and the parent's description carries the best trial and the verdict.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import math
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tenacity
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from sweeps import sqlbulk
from sweeps.dbinit import first_use, sqlite_path
from sweeps.sqlbulk import NewRun, RunWrite, SqlBulk
from sweeps.uris import redact

log = logging.getLogger(__name__)

TAG_SWEEP = "flatsweep.sweep"
TAG_ROLE = "flatsweep.role"
TAG_TRIAL = "flatsweep.trial_id"
TAG_SPEC = "flatsweep.train_spec"
TAG_STOPPED_EARLY = "flatsweep.stopped_early"
TAG_DIVERGED = "flatsweep.diverged"
TAG_OOM = "flatsweep.oom"
TAG_DEVICE = "flatsweep.device"  # children: the device the trial really used ("cpu", "cuda:0")
TAG_GPU_ON_CPU = "flatsweep.gpu_reserved_on_cpu"  # children: "1" when Ray's GPU sat idle
TAG_GIT = "mlflow.source.git.commit"
TAG_PARENT = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"  # the run's description in the UI
TAG_STAGE = "flatsweep.stage"  # search | baseline_search | finalist | baseline
TAG_CONFIG = "flatsweep.config_id"  # finalists: the search config confirmed; "baseline"
TAG_SEED = "flatsweep.seed"  # finalist and baseline runs: the training seed
TAG_OBJECTIVES = "flatsweep.objectives"  # parent: JSON [{"metric": ..., "mode": ...}, ...]
TAG_SPACE = "flatsweep.space"  # parent: JSON {"name": ..., "ranges": {...}}
TAG_STAGES_DONE = "flatsweep.stages_done"  # parent: JSON list of finished stages
TAG_FINALISTS = "flatsweep.finalists"  # parent: JSON list of the chosen finalist configs
TAG_VERDICT = "flatsweep.verdict"  # parent: better | no_difference | worse
TAG_WINNER = "flatsweep.winner_run_id"
TAG_ALLOW_TEST = "flatsweep.allow_test_selection"
TAG_ATTEMPT = "flatsweep.opened_by"  # parent: the id of the `sweeps run` that created it
TAG_OPTUNA_STORAGE = "flatsweep.optuna_storage"  # parent: the study's storage, no credentials
TAG_OPTUNA_STUDY = "flatsweep.optuna_study"
#: Keys of a trial's Tune config that describe it rather than set a TrainSpec field.
META_STAGE, META_CONFIG = "_stage", "_config_id"
STAGES = ("search", "baseline_search", "finalist", "baseline")
#: Keys of a confirmation trial's config that are not searched values.
_NOT_SEARCHED = frozenset({"seed", "perturbation", "hessian_lmax", "perturbation.kind"})
# Tune bookkeeping keys that are not training metrics.
_SKIP_METRICS = {
    "epoch",
    "training_iteration",
    "timestamp",
    "time_this_iter_s",
    "pid",
    "time_total_s",
    "time_since_restore",
    "iterations_since_restore",
    "done",
    "trial_id",
    "experiment_tag",
    "date",
    "hostname",
    "node_ip",
    "config",
    "checkpoint_dir_name",
    "should_checkpoint",
}
TERMINAL = {"FINISHED", "FAILED", "KILLED"}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the dotted names used as MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def rank_children(runs: Iterable[Run], metric: str, mode: str) -> list[Run]:
    """Finished, full-length, non-diverged children best first; ties by trial id."""
    eligible = []
    for r in runs:
        value = r.data.metrics.get(metric)
        if (
            r.info.status != "FINISHED"
            or value is None
            or not math.isfinite(value)
            or r.data.tags.get(TAG_DIVERGED) == "1"
            or r.data.tags.get(TAG_OOM) == "1"
            or r.data.tags.get(TAG_STOPPED_EARLY) == "1"
        ):
            continue
        eligible.append(r)
    sign = -1.0 if mode == "max" else 1.0
    return sorted(
        eligible,
        key=lambda r: (
            sign * r.data.metrics[metric],
            r.data.tags.get(TAG_TRIAL, ""),
            r.info.run_id,
        ),
    )


def final_flags(last: dict[str, Any], max_epochs: int) -> dict[str, bool]:
    """How a trial ended, from its last Tune result: diverged, out of memory, or stopped early
    (fewer than ``max_epochs`` epochs, e.g. by ASHA). A trial with none of them counts toward
    the sweep's best (``rank_children`` reads them back from the run's tags)."""
    diverged, oom = bool(last.get("diverged")), bool(last.get("oom"))
    stopped = not diverged and not oom and int(last.get("epoch", 0)) < max_epochs
    return {"diverged": diverged, "oom": oom, "stopped_early": stopped}


def first_line(e: BaseException | None, limit: int = 200) -> str:
    """The first line of ``e``'s message, at most ``limit`` characters, for a one-line log or
    error; its type's name when the message is empty (``ConnectionError()``)."""
    return (str(e).splitlines() or [type(e).__name__])[0][:limit]


class ResultsUnreadable(OSError):
    """A trial's ``result.json`` could not be read from storage (unreachable, throttled) and
    the driver holds no copy: not the same as a trial that never reported."""


def _result_rows(trial: Any) -> list[dict[str, Any]]:
    """Every result Tune's JSON logger recorded for ``trial`` (its ``result.json``), in order,
    read from the experiment's storage (local or remote: Tune syncs the driver's copy there),
    else from the driver's staging copy; empty when neither holds one (it never reported).

    Raises ResultsUnreadable when storage failed otherwise (an S3 503, a network blip) and
    there is no staging copy (a resume on another machine): read as "no rows", a trial's run
    would be closed without the epochs storage holds, and never reconciled again.
    """
    text, error = None, None
    storage = getattr(trial, "storage", None)  # a Tune trial always has one
    try:
        if storage is not None:
            with storage.storage_filesystem.open_input_stream(f"{trial.path}/result.json") as f:
                text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        pass  # never reported, or not synced yet: the staging copy, if any
    except Exception as e:  # noqa: BLE001 - any storage error: the staging copy, else raise
        error = e
    if text is None:
        local_path = getattr(trial, "local_path", None)
        local = Path(local_path, "result.json") if local_path else None
        if local is not None and local.is_file():
            text = local.read_text(errors="replace")
        elif error is not None:
            raise ResultsUnreadable(
                f"result.json of trial {trial.trial_id}: {first_line(error)}"
            ) from error
        else:
            text = ""
    rows: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            # A line cut by a kill. Tune's logger appends after a restore, so the rows after
            # it are results too.
            continue
        # A trial restored from an earlier epoch's checkpoint reports the epochs after it
        # again: the rerun's rows replace the ones they repeat, as its history went on. A
        # diverged or out-of-memory report repeats its epoch on purpose: both stay, as they
        # were delivered live (``replay_ok``).
        replay = bool(row.get("diverged")) or bool(row.get("oom"))
        while not replay and rows and result_step(rows[-1]) >= result_step(row):
            rows.pop()
        rows.append(row)
    return rows


#: How long reads of result.json that storage refused are retried (a blip) at a restore.
RESULTS_READ_TIMEOUT_S = 20.0


def _read_rows(trials: list[Any]) -> tuple[dict[str, list], list[str]]:
    """``_result_rows`` of each trial, by trial id, with the reads storage refused retried
    together for up to ``RESULTS_READ_TIMEOUT_S``; also the ids still unreadable then."""
    rows: dict[str, list] = {}
    left, delay, last = list(trials), 1.0, ""
    deadline = time.monotonic() + RESULTS_READ_TIMEOUT_S
    while True:
        failed = []
        for trial in left:
            try:
                rows[trial.trial_id] = _result_rows(trial)
            except ResultsUnreadable as e:
                failed.append(trial)
                last = str(e)
        left = failed
        if not left or time.monotonic() + delay > deadline:
            break
        time.sleep(delay)
        delay = min(2 * delay, 8.0)
    if left:
        log.warning(
            "%d trials' results could not be read from storage (%s); their runs are left "
            "open for `sweeps resume` to complete",
            len(left),
            last,
        )
    return rows, [t.trial_id for t in left]


def result_step(result: dict[str, Any]) -> int:
    """The MLflow step of a Tune result: its epoch (Tune's iteration for older results)."""
    return int(result.get("epoch", result.get("training_iteration", 0)))


_SQLITE_TUNED = False


def tune_sqlite() -> None:
    """Put every SQLite database this driver opens (the MLflow store, the Optuna study) in WAL
    mode with ``synchronous=NORMAL``.

    In SQLite's default mode each commit waits for an fsync (about 20 ms on the machines
    measured in benchmarks/RESULTS.md), and the driver commits several times per trial: the
    Optuna study's writes run on Tune's event loop. WAL + NORMAL survives a killed process
    (what ``sweeps resume`` recovers from); an OS crash may lose the last commits, which a
    resume re-delivers from Tune's own results. Readers (``mlflow ui``) no longer block the
    writer either.
    """
    global _SQLITE_TUNED
    if _SQLITE_TUNED:
        return
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _pragmas(dbapi_conn: Any, record: Any) -> None:
        if isinstance(dbapi_conn, sqlite3.Connection):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    _SQLITE_TUNED = True


#: Errors that are bugs, not outages: never retried. (SpecError is a ValueError.)
_NOT_TRANSIENT = (ValueError, TypeError, KeyError, AttributeError)

# -- one retry policy ------------------------------------------------------------------------


def _transient(e: BaseException) -> bool:
    """Whether ``e`` may be an outage worth retrying: an Exception that is not a bug or a
    refusal. Never Ctrl-C or SIGTERM (a KeyboardInterrupt, which tenacity would otherwise
    catch and retry like any other), nor SystemExit."""
    return isinstance(e, Exception) and not isinstance(e, _NOT_TRANSIENT)


def _log_retry(state: tenacity.RetryCallState) -> None:
    e = state.outcome.exception() if state.outcome else None
    log.warning(
        "MLflow unreachable (%s); retrying in %.0f s",
        first_line(e),
        state.next_action.sleep if state.next_action else 0,
    )


def open_client(tracking_uri: str) -> MlflowClient:
    """``MlflowClient(tracking_uri)``, safe when several processes open the same new store at
    once (two sweeps started together): see :func:`sweeps.dbinit.first_use`."""
    return first_use(tracking_uri, lambda: MlflowClient(tracking_uri), "the MLflow store")


def retrying(fn: Callable[[], Any], *, timeout_s: float = 300.0) -> Any:
    """Call ``fn`` until it succeeds or ``timeout_s`` passes (a tracking server restarting);
    exponential backoff from 1 s to 15 s. The last error is re-raised; user errors and bugs
    are raised at once."""
    return tenacity.Retrying(
        # A refusal (SpecError is a ValueError), a bug or an interrupt is not an outage:
        # raise it at once.
        retry=tenacity.retry_if_exception(_transient),
        stop=tenacity.stop_after_delay(timeout_s),
        wait=tenacity.wait_exponential(multiplier=1, min=1, max=15),
        before_sleep=_log_retry,
        reraise=True,
    )(fn)


# -- names and descriptions a fresh UI shows ---------------------------------------------------

_SHORT = {
    "perturbation.radius": "r",
    "perturbation.inner_steps": "K",
    "perturbation.inner_lr": "ilr",
    "perturbation.adaptive": "adaptive",
    "optim.lr": "lr",
    "optim.weight_decay": "wd",
}


def _fmt(v: Any) -> str:
    return f"{v:.2g}" if isinstance(v, float) else str(v)


def describe_point(kind: str, point: dict[str, Any]) -> str:
    """``amp r=0.0039 K=2 ilr=0.39``: the regularizer and its searched values, short."""
    parts = [kind]
    order = list(_SHORT)
    for key in sorted(point, key=lambda k: (order.index(k) if k in order else len(order), k)):
        if key.startswith("_") or key in _NOT_SEARCHED:
            continue
        parts.append(f"{_SHORT.get(key, key.rsplit('.', 1)[-1])}={_fmt(point[key])}")
    return " ".join(parts)


def run_name(spec: dict[str, Any], config: dict[str, Any]) -> str:
    """A child run's name: what it searched, or its stage, config and seed."""
    stage = config.get(META_STAGE, "search")
    what = describe_point(spec["perturbation"]["kind"], config)
    if stage == "finalist":
        return f"finalist {config.get(META_CONFIG)} seed={spec['seed']}: {what}"
    if stage == "baseline":
        return f"baseline seed={spec['seed']}: {what}"
    if stage == "baseline_search":
        return f"baseline search: {what}"
    return what


_FINALIST_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def run_color(stage: str, config_id: str | None) -> str:
    """A child run's colour in the MLflow UI (tag ``mlflow.runColor``)."""
    if stage == "baseline":
        return "#000000"
    if stage == "finalist" and config_id and config_id[1:].isdigit():
        return _FINALIST_COLORS[(int(config_id[1:]) - 1) % len(_FINALIST_COLORS)]
    return "#b0b0b0"


@functools.cache
def git_revision() -> str:
    """The project's git commit, or ``unknown`` outside a checkout: the code this process
    loaded, so asked once (a ``git`` process per trial cost the driver a fork per trial)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# -- the sweep and its parent run --------------------------------------------------------------


@dataclass
class Sweep:
    """A sweep as MLflow holds it: its experiment and parent run (read once)."""

    name: str
    experiment_id: str
    parent: Run

    @property
    def parent_id(self) -> str:
        return self.parent.info.run_id

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """``[(metric, mode), ...]``, the first one primary; stored as JSON on the parent."""
        return [(o["metric"], o["mode"]) for o in json.loads(self.parent.data.tags[TAG_OBJECTIVES])]

    @property
    def space(self) -> dict[str, Any]:
        return json.loads(self.parent.data.tags.get(TAG_SPACE, '{"name": "", "ranges": {}}'))

    @property
    def stages_done(self) -> list[str]:
        return json.loads(self.parent.data.tags.get(TAG_STAGES_DONE, "[]"))


def find_parent(client: MlflowClient, experiment_id: str, sweep: str) -> Run | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_ROLE}` = 'parent'",
        max_results=2,
    )
    return runs[0] if runs else None


def find_sweep(client: MlflowClient, name: str) -> Sweep | None:
    """The sweep called ``name`` in this tracking store, or None."""
    from sweeps.spec import NAME_RE

    if not NAME_RE.fullmatch(name):
        # No spec takes such a name, so no sweep has it; and it goes into a filter string
        # below (an experiment "bob's exp" made by hand would break the query).
        return None
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return None
    parent = find_parent(client, exp.experiment_id, name)
    return Sweep(name, exp.experiment_id, parent) if parent is not None else None


def experiment_for(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The MLflow experiment named after the sweep (created, with local artifacts if SQLite)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if (db := sqlite_path(tracking_uri)) is not None:
        location = (Path(db).parent / "mlartifacts" / name).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def _describe_sweep(spec: Any) -> str:
    f = spec.finalists
    confirm = (
        f"then the top {f.top_k} configs are re-trained with {f.seeds} fresh seeds"
        + (" against the baseline (perturbation off) with the same seeds" if f.baseline else "")
        if f.top_k
        else "no confirmation stage (finalists.top_k: 0)"
    )
    return (
        f"Sweep {spec.name}: {spec.num_samples} trials of {spec.space_name} "
        f"({', '.join(spec.ranges()) or 'no searched values'}), selecting on "
        f"{', '.join(spec.metrics)} ({', '.join(spec.modes)}); {confirm}. "
        f"Running; the verdict appears here when the sweep ends."
    )


def _dataset_inputs(spec: Any) -> list[Any]:
    """The sweep's data as MLflow dataset inputs (the runs table's Dataset column)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    d = spec.train.data
    facts = {k: v for k, v in d.model_dump(mode="json").items() if v is not None}
    ds = MetaDataset(
        CodeDatasetSource(tags={k: str(v) for k, v in facts.items()}), name=f"{d.name}-seed{d.seed}"
    )
    return [DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "train")])]


def open_parent(
    client: MlflowClient, spec: Any, spec_text: str, resume: bool, attempt: str = ""
) -> Sweep:
    """Create the sweep's parent run (or reopen it to resume); refuses a duplicate name.

    ``attempt``: an id of this ``sweeps run``, the same on every retry. A retry after a
    write that failed once the parent existed (an artifact store's blip) finds the parent it
    made by that id and completes its record, instead of refusing it as a duplicate.
    """
    from sweeps.spec import SpecError

    exp_id = experiment_for(client, spec.name, spec.resolved_tracking_uri())
    parent = find_parent(client, exp_id, spec.name)
    ours = parent is not None and bool(attempt) and parent.data.tags.get(TAG_ATTEMPT) == attempt
    if parent is not None and not resume and not ours:
        raise SpecError(
            f"name: sweep {spec.name!r} already exists in MLflow; "
            f"run 'sweeps resume {spec.name}' or choose another name (--name)"
        )
    if parent is None and resume:
        raise SpecError(f"name: no sweep {spec.name!r} to resume in {redact(client.tracking_uri)}")
    if parent is not None and not ours:
        client.update_run(parent.info.run_id, status="RUNNING")
        return Sweep(spec.name, exp_id, client.get_run(parent.info.run_id))
    ranges = spec.ranges()
    space = {
        "name": spec.space_name,
        "ranges": {
            k: {"low": r.low, "high": r.high, "log": r.log, "integer": r.integer}
            for k, r in ranges.items()
        },
    }
    tags = {
        TAG_SWEEP: spec.name,
        TAG_ROLE: "parent",
        TAG_GIT: git_revision(),
        TAG_NOTE: _describe_sweep(spec),
        TAG_OBJECTIVES: json.dumps(
            [{"metric": m, "mode": o} for m, o in zip(spec.metrics, spec.modes, strict=True)]
        ),
        TAG_SPACE: json.dumps(space, sort_keys=True),
        TAG_STAGES_DONE: "[]",
        "mlflow.source.name": "sweeps run",
        "mlflow.runColor": "#17becf",  # not a finalist's, the baseline's or the search's colour
        "mlflow.source.type": "LOCAL",
    }
    if spec.allow_test_selection:
        tags[TAG_ALLOW_TEST] = "true"
    if attempt:
        tags[TAG_ATTEMPT] = attempt
    if parent is None:
        run_id = client.create_run(exp_id, run_name=spec.name, tags=tags).info.run_id
    else:  # ours, from an earlier try: every write below is idempotent
        run_id = parent.info.run_id
    params = {
        "space": spec.space_name,
        "searcher.sampler": spec.searcher.sampler,
        "searcher.seed": spec.searcher.seed,
        "scheduler": spec.scheduler.name,
        "scheduler.grace_period": spec.grace_period,
        "num_samples": spec.num_samples,
        "metric": json.dumps(spec.metric),
        "mode": json.dumps(spec.mode),
        "finalists.top_k": spec.finalists.top_k,
        "finalists.seeds": spec.finalists.seeds,
        "finalists.baseline": spec.finalists.baseline,
        "resources.cpu": spec.resources.cpu,
        "resources.gpu": spec.resources.gpu,
        "train.model.name": spec.train.model.name,
        "train.data.name": spec.train.data.name,
        "train.epochs": spec.train.epochs,
    }
    from sweeps.searchers import scheduler_brackets

    if (n := scheduler_brackets(spec)) is not None:  # ASHA's and HyperBand's, as they ran
        params["scheduler.brackets"] = n
        params["scheduler.reduction_factor"] = spec.scheduler.reduction_factor
    for key, r in ranges.items():
        params[f"space.{key}"] = f"[{r.low:g}, {r.high:g}]{' log' if r.log else ''}" + (
            " int" if r.integer else ""
        )
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_inputs(run_id, datasets=_dataset_inputs(spec))
    client.log_text(run_id, spec_text, "sweep.yaml")
    # The validated spec with every default that was actually used.
    import yaml

    resolved = spec.model_dump(mode="json")
    # A spec refuses passwords in these, but `--tracking-uri` and the environment do not pass
    # through it: the stored copy never holds one.
    if resolved.get("tracking_uri"):
        resolved["tracking_uri"] = redact(resolved["tracking_uri"])
    if resolved.get("searcher", {}).get("storage"):
        resolved["searcher"]["storage"] = redact(resolved["searcher"]["storage"])
    client.log_text(run_id, yaml.safe_dump(resolved, sort_keys=False), "sweep_resolved.yaml")
    client.log_dict(run_id, space, "search_space.json")
    return Sweep(spec.name, exp_id, client.get_run(run_id))


def mark_stage_done(client: MlflowClient, sweep: Sweep, stage: str) -> None:
    """Record on the parent that ``stage`` finished, so a resume does not run it again."""
    done = sweep.stages_done
    if stage not in done:
        done.append(stage)
    client.set_tag(sweep.parent_id, TAG_STAGES_DONE, json.dumps(done))
    sweep.parent = client.get_run(sweep.parent_id)


def close_parent(
    client: MlflowClient,
    sweep: Sweep,
    status: str,
    best: Run | None,
    note: str,
    name: str | None = None,
    runs: list[Run] | None = None,
) -> None:
    """End the parent run: leftover RUNNING children become KILLED, the best trial, the
    description and the name (runs are found by tags, never by name) are recorded, then the
    parent's own ``status``. ``runs``: the sweep's children if already read."""
    if name is not None:
        client.update_run(sweep.parent_id, name=name)
    for child in children(client, sweep) if runs is None else runs:
        # Every trial has ended when the parent closes: a RUNNING child is a leftover of an
        # interrupted driver or a lost trial, never a live run. It may also be a finished
        # trial whose last writes were not delivered (the sweep then ends FAILED): KILLED
        # marks it unfinished in MLflow until a resume delivers them from Tune's results and
        # closes it as Tune says it ended (``MLflowTracker._write_ended``).
        if child.info.status == "RUNNING":
            client.set_terminated(child.info.run_id, "KILLED")
    tags = [RunTag(TAG_NOTE, note)]
    if best is not None:
        metric, _ = sweep.objectives[0]
        tags += [
            RunTag("flatsweep.best_trial", best.data.tags.get(TAG_TRIAL, "")),
            RunTag("flatsweep.best_run_id", best.info.run_id),
        ]
        client.log_batch(
            sweep.parent_id,
            metrics=[
                Metric(f"best_{metric}", best.data.metrics[metric], int(time.time() * 1000), 0)
            ],
            tags=tags,
        )
        client.log_dict(
            sweep.parent_id,
            {
                "trial_id": best.data.tags.get(TAG_TRIAL),
                "run_id": best.info.run_id,
                metric: best.data.metrics[metric],
                "train_spec": json.loads(best.data.tags[TAG_SPEC]),
            },
            "best_config.json",
        )
    else:
        client.log_batch(sweep.parent_id, tags=tags)
    client.set_terminated(sweep.parent_id, status)


def children(client: MlflowClient, sweep: Sweep, stage: str | None = None) -> list[Run]:
    """The sweep's child runs (of one stage, if given), every page."""
    return find_children(client, sweep.experiment_id, sweep.parent_id, stage)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off within the block (as it was after it).

    Reading thousands of runs builds hundreds of thousands of ORM objects, and every few
    hundred allocations start a collection, the oldest generation's walking the whole heap:
    on SQLite the 3000 children of a sweep took 7.4 s to read, 2.4 s without collections
    (2-core development machine), with the same peak memory. Those objects are freed by
    reference counting (an ORM state refers to its object weakly), so nothing piles up
    meanwhile. The collector is process-wide: pause it for bulk reads only.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


#: Runs per ``search_runs`` page when reading a sweep's children. MLflow's SQL store builds a
#: page's runs from its rows of tags, params and latest metrics (~75 per child here) all at
#: once, about 95 KB of transient objects per run against 15 KB per finished ``Run``: reading
#: 1000 children from SQLite in pages of 1000 raised the reader's RSS by 93 MB, in pages of 250
#: by 40 and of 100 by 27, in 0.70, 0.74 and 0.77 s (2-core Xeon). A page reuses the memory
#: of the one before, so the transient part grows with the page, not with the sweep (the
#: finished runs the caller keeps still do, about 15 MB per 1000).
CHILDREN_PAGE = 200


def find_children(
    client: MlflowClient, experiment_id: str, parent_id: str, stage: str | None = None
) -> list[Run]:
    """Every child run of ``parent_id`` (of one stage, if given), every page."""
    flt = f"tags.`{TAG_PARENT}` = '{parent_id}'"
    if stage is not None:
        flt += f" and tags.`{TAG_STAGE}` = '{stage}'"
    out: list[Run] = []
    token = None
    with gc_paused():
        while True:
            page = client.search_runs(
                [experiment_id], filter_string=flt, max_results=CHILDREN_PAGE, page_token=token
            )
            out.extend(page)
            token = page.token
            if not token:
                return out


def stage_of(run: Run) -> str:
    return run.data.tags.get(TAG_STAGE, "search")


def searched_values(run: Run) -> dict[str, Any]:
    """The searched hyperparameters of a child run, by dotted name, with their types."""
    keys = [k for k in run.data.tags.get("flatsweep.searched", "").split(",") if k]
    spec = json.loads(run.data.tags.get(TAG_SPEC, "{}"))
    out: dict[str, Any] = {}
    for key in keys:
        node: Any = spec
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[key] = node
    return out


@dataclass(eq=False)  # hashed by identity: a key of ``_Call.carried``, never compared by value
class _Item:
    """One queued write of a trial's run: one epoch's metrics, or a status change (``status``,
    with its tags and event time), or a one-off write that is no trial's (``call``).

    Status changes are data, not closures, so the writer can merge a run's queued epochs and
    its closing status into one delivery (``_take``). ``skip`` and ``sent`` record how far a
    delivery got, so a retry after a failed call re-sends nothing that landed.
    """

    what: str
    trial: str
    step: int = 0
    metrics: list[Metric] = field(default_factory=list)
    replay_ok: bool = False  # log even if this epoch was logged before (diverged/OOM report)
    status: str | None = None  # RUNNING opens the run; a TERMINAL status closes it
    tags: list[RunTag] = field(default_factory=list)  # logged with the status change
    when: int | None = None  # when Tune saw the status change (ms): a closed run's end time
    # A one-off write, given the delivering tracker and its writer's client: picklable (a
    # module-level function with data) when the writer is a separate process.
    call: Callable[[MLflowTracker, MlflowClient], Any] | None = None
    seq: int = 0  # its number in a writer process's acknowledgements
    queued: float = 0.0  # when the outbox took it (time.monotonic)
    skip: bool | None = None  # an epoch logged before; decided at its first delivery attempt
    sent: int = 0  # how many of ``payload`` have landed
    # The id of the run a bulk delivery headed by this item creates, chosen at its first
    # attempt: a retry then names the same run, which the store creates once (``_plan``).
    new_run_id: str | None = None

    @property
    def opens(self) -> bool:
        return self.status is not None and self.status not in TERMINAL

    @property
    def closes(self) -> bool:
        return self.status in TERMINAL

    @property
    def payload(self) -> list[Any]:
        """What this item adds to a ``log_batch``: a status's tags, or the epoch's metrics."""
        return self.tags if self.status is not None else self.metrics


def _take(items: deque[_Item]) -> list[_Item]:
    """A trial's next delivery, from the head of its queue: at most one opening status
    (RUNNING), then metrics, up to and including the first closing status. A fresh trial whose
    writes queued up in one round is thus one ``create_run``, one ``log_batch`` and one
    ``set_terminated``. A second opening (a restore after the run closed) waits for the next
    delivery, so every status change keeps its place among the run's writes."""
    head = items[0]
    if head.call is not None or head.closes:
        return [head]
    batch = [head]
    for item in list(items)[1:]:
        if item.call is not None or item.opens:
            break
        batch.append(item)
        if item.closes:
            break
    return batch


def _unlogged(items: list[_Item], last: int) -> tuple[list[_Item], int]:
    """Of a run's items, in order, those still to log when its epochs up to ``last`` are:
    every status change, and each epoch past ``last`` (one at or before it was replayed after
    a restore from an older checkpoint; a diverged or OOM report is logged again); and the
    last epoch they reach. An epoch's verdict is kept on it (``skip``) for its retries."""
    todo = []
    for item in items:
        if item.status is None:
            if item.skip is None:
                item.skip = item.step <= last and not item.replay_ok
            if item.skip:
                continue
            last = max(last, item.step)
        todo.append(item)
    return todo, last


@dataclass
class _Call:
    """The arguments of one ``log_batch`` call, and how many of each item's entities it carries."""

    params: list[Param] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    tags: list[RunTag] = field(default_factory=list)
    carried: dict[_Item, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.params) + len(self.metrics) + len(self.tags)


def _log_batches(params: list[Param], items: list[_Item]) -> list[_Call]:
    """``params``, then what each item still owes (its unsent metrics or tags), in order, cut
    into as few ``log_batch`` calls as MLflow's limits allow (``mlflow.utils.validation``: per
    call at most 1000 metrics, 100 params, 100 tags and 1000 entities in all)."""
    from mlflow.utils.validation import (
        MAX_ENTITIES_PER_BATCH,
        MAX_METRICS_PER_BATCH,
        MAX_PARAMS_TAGS_PER_BATCH,
    )

    limit = {
        "params": MAX_PARAMS_TAGS_PER_BATCH,
        "metrics": MAX_METRICS_PER_BATCH,
        "tags": MAX_PARAMS_TAGS_PER_BATCH,
    }
    calls = [_Call()]

    def add(kind: str, entity: Any, item: _Item | None) -> None:
        call = calls[-1]
        if len(getattr(call, kind)) >= limit[kind] or call.size >= MAX_ENTITIES_PER_BATCH:
            call = _Call()
            calls.append(call)
        getattr(call, kind).append(entity)
        if item is not None:
            call.carried[item] = call.carried.get(item, 0) + 1

    for param in params:
        add("params", param, None)
    for item in items:
        kind = "metrics" if item.status is None else "tags"
        for entity in item.payload[item.sent :]:
            add(kind, entity, item)
    return [c for c in calls if c.size]


#: Runs per bulk transaction (``sweeps.sqlbulk``): a round of a few hundred runs commits in
#: well under a second, so a writer process's acknowledgements keep coming.
BULK_RUNS = 500
#: How often a tracking server that could not be reached is asked again whether it takes
#: bulk rounds (``MLflowTracker._takes_bulk``).
PROBE_EVERY_S = 10.0


class _Outbox:
    """Ordered MLflow writes on ``writers`` background threads, retried until they succeed.

    Tune's callbacks only enqueue, so a slow store (SQLite under load) or a tracking outage
    never stalls the driver's event loop, and nothing is lost while the driver lives.
    A trial is given to one writer at first sight (round-robin) and each writer has its own
    queue, so the writes of one run stay in order while different runs go in parallel (an
    HTTP store answers several requests at once; each writer waits on its own round trips).
    A writer works in rounds ``interval_s`` apart; a round delivers every run that is due,
    each run's writes merged as ``_take`` allows. A run is due when a status change (its
    creation, its end) or a one-off write is queued, when its oldest queued epoch has waited
    ``metrics_every_s``, and always while draining. With epochs of a fraction of a second, one
    store commit per epoch was the driver's largest CPU cost (it competes with the trials for
    the same cores); one per second per run was still about 20 ms of SQLite work per call,
    2-4 calls a second with two trials running (``benchmarks/sweep_overhead.py``), and with
    a hundred trials running it would be more than one writer can do. A running trial's
    curves in the MLflow UI are thus up to ``metrics_every_s`` (plus a round) behind.

    With ``bulk`` (a predicate and a delivery of many), the deliveries of a round that the
    predicate accepts go together, up to ``BULK_RUNS`` runs per call (one transaction,
    ``sweeps.sqlbulk``); the rest, and every delivery without ``bulk``, one run at a time.
    With ``calls`` (a grouping of one-off calls and a delivery of a group), a round's calls of
    one group go together too: a stage's Optuna copies, one transaction
    (``sweeps.optunabulk``).
    """

    def __init__(
        self,
        deliver: Callable[[int, list[_Item]], None],
        interval_s: float = 1.0,
        writers: int = 1,
        metrics_every_s: float | None = None,
        bulk: tuple[Callable[[int, list[_Item]], bool], Callable[[int, list[list[_Item]]], None]]
        | None = None,
        calls: tuple[Callable[[list[_Item]], Any], Callable[[int, list[list[_Item]]], None]]
        | None = None,
    ) -> None:
        if writers < 1:
            raise ValueError(f"writers must be at least 1, but got {writers=}")
        self.interval_s = interval_s
        # None: FLATSWEEP_MLFLOW_METRICS_EVERY_S, else 5 s (a writer process inherits it).
        self.metrics_every_s = _metrics_every_s() if metrics_every_s is None else metrics_every_s
        self._deliver = deliver  # (writer index, one delivery's items)
        # (whether a delivery may go in a bulk round, deliver many in one transaction)
        self._bulk = bulk
        # (a one-off call's group, or None; deliver a group's calls together)
        self._calls = calls
        self._cv = threading.Condition()  # one lock for all writers: drain waits for them all
        # Per writer: trial id -> its undelivered items in order, trials in order of arrival.
        self._queues: list[dict[str, deque[_Item]]] = [{} for _ in range(writers)]
        self._threads: list[threading.Thread | None] = [None] * writers
        self._writer_of: dict[str, int] = {}  # trial id -> writer, fixed at first sight
        self._count = 0  # items queued and not yet delivered, all writers together
        self._broken: set[int] = set()  # writers stopped on an error retrying cannot fix
        self._draining = 0
        self._puts = 0  # writes ever queued: a sleeping writer sees a new one come
        self.rounds = 0  # delivery rounds so far, all writers together
        # Set by ``close``: no delivery starts after it, and a retry's wait ends at once.
        self._stop = threading.Event()

    @property
    def pending(self) -> list[_Item]:
        """A snapshot of every undelivered item."""
        with self._cv:
            return [item for queue in self._queues for q in queue.values() for item in q]

    @property
    def outstanding(self) -> int:
        """Writes queued and not yet delivered, all writers together."""
        return self._count

    @property
    def broken(self) -> bool:
        """A writer stopped on an error retrying cannot fix; its writes stay outstanding."""
        return bool(self._broken)

    def _due(self, items: deque[_Item], now: float) -> bool:
        """Whether a run's queued writes go in this round (the class doc). A status change
        or one-off write sits at the head (an opening) or the tail (a closing) of its run's
        queue; one in the middle goes with the epochs around it."""
        head, tail = items[0], items[-1]
        return (
            self._draining > 0
            or head.status is not None
            or head.call is not None
            or tail.status is not None
            or tail.call is not None
            or now - head.queued >= self.metrics_every_s
        )

    def put(self, item: _Item) -> None:
        item.queued = time.monotonic()
        with self._cv:
            writer = self._writer_of.get(item.trial)
            if writer is None:
                writer = self._writer_of[item.trial] = len(self._writer_of) % len(self._queues)
            self._queues[writer].setdefault(item.trial, deque()).append(item)
            self._count += 1
            self._puts += 1
            self._cv.notify_all()
            if self._threads[writer] is None:
                thread = threading.Thread(
                    target=self._run, args=(writer,), name=f"mlflow-writer-{writer}", daemon=True
                )
                self._threads[writer] = thread
                thread.start()

    def _run(self, writer: int) -> None:
        queue = self._queues[writer]
        failing = False
        what = ""  # the delivery being attempted, for the log

        def note_failure(state: tenacity.RetryCallState) -> None:
            nonlocal failing
            if not failing:
                e = state.outcome.exception() if state.outcome else None
                log.warning(
                    "MLflow write failed (%s: %s); buffering and retrying",
                    what,
                    first_line(e),  # an empty message crashed here, and the writer with it
                )
                failing = True

        # Any transport error: retry the delivery until it lands (the same policy as
        # ``retrying``, without a deadline: the records must not be dropped while we live),
        # or until ``close`` (the sweep's end is being recorded: nothing may write under it).
        retry = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_transient),
            stop=tenacity.stop_when_event_set(self._stop),
            wait=tenacity.wait_exponential(multiplier=0.5, max=10),
            sleep=self._stop.wait,
            before_sleep=note_failure,
            reraise=True,
        )

        def attempt(description: str, deliver: Callable[[int, Any], None], arg: Any) -> bool:
            """One delivery, retried until it lands; False if it cannot (the writer stops)."""
            nonlocal failing, what
            what = description
            if self._stop.is_set():
                return False
            try:
                retry(deliver, writer, arg)
            except _NOT_TRANSIENT:
                # A bug, not an outage: retrying cannot fix it. Stop writing (the drain then
                # reports the writes outstanding and the sweep ends FAILED).
                log.exception("MLflow write %s failed; the writer stops", what)
                with self._cv:
                    self._broken.add(writer)
                    self._cv.notify_all()
                return False
            except Exception:
                if self._stop.is_set():  # closed while retrying: left for a resume
                    return False
                raise
            if failing:
                log.warning("MLflow reachable again; delivering %d buffered writes", self._count)
                failing = False
            return True

        def delivered(done: list[tuple[str, list[_Item]]]) -> None:
            with self._cv:
                for tid, batch in done:
                    # Only this thread removes items, and puts only append: the batch is still
                    # the head of the trial's queue.
                    items = queue.pop(tid)
                    for _ in batch:
                        items.popleft()
                    if items:
                        queue[tid] = items  # at the back: the other runs' turn first
                    self._count -= len(batch)
                self._cv.notify_all()

        stopped = self._stop.is_set
        while not stopped():
            with self._cv:
                self._cv.wait_for(lambda: bool(queue) or stopped())
                # Coalesce: let a round's worth of results queue up, unless draining.
                self._cv.wait_for(lambda: self._draining > 0 or stopped(), timeout=self.interval_s)
            # Then deliver everything due before waiting again: with many trials the queue
            # empties in one round instead of one run per interval.
            while True:
                with self._cv:
                    now = time.monotonic()
                    due = [(t, _take(items)) for t, items in queue.items() if self._due(items, now)]
                if not due:
                    break
                if self._bulk is not None:
                    # What can, in transactions of many runs; the rest one run at a time.
                    bulkable, deliver_bulk = self._bulk
                    ok = [bulkable(writer, batch) for _, batch in due]
                    group = [d for d, b in zip(due, ok, strict=True) if b]
                    due = [d for d, b in zip(due, ok, strict=True) if not b]
                    for i in range(0, len(group), BULK_RUNS):
                        part = group[i : i + BULK_RUNS]
                        batches = [batch for _, batch in part]
                        if not attempt(f"of {len(part)} runs", deliver_bulk, batches):
                            return
                        delivered(part)
                if self._calls is not None:
                    # One-off calls of one group (a stage's Optuna copies) together.
                    group_of, deliver_calls = self._calls
                    groups: dict[Any, list[tuple[str, list[_Item]]]] = {}
                    alone = []
                    for d in due:
                        key = group_of(d[1])
                        if key is None:
                            alone.append(d)
                        else:
                            groups.setdefault(key, []).append(d)
                    due = alone
                    for group in groups.values():
                        for i in range(0, len(group), BULK_RUNS):
                            part = group[i : i + BULK_RUNS]
                            batches = [batch for _, batch in part]
                            if not attempt(f"of {len(part)} calls", deliver_calls, batches):
                                return
                            delivered(part)
                for tid, batch in due:
                    if not attempt(batch[0].what, self._deliver, batch):
                        return
                    delivered([(tid, batch)])
            with self._cv:
                self.rounds += 1
                if queue and not self._draining:
                    # Only epochs that are not due yet: sleep until the first of them is, or a
                    # new write or a drain comes (then a round's wait as usual).
                    first = min(items[0].queued for items in queue.values())
                    puts = self._puts
                    self._cv.wait_for(
                        lambda puts=puts: self._draining > 0 or self._puts != puts or stopped(),
                        timeout=max(0.0, first + self.metrics_every_s - time.monotonic()),
                    )

    def start(self) -> None:
        """Nothing to start: a writer thread starts at its first write."""

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the writers (after ``drain``): no delivery starts after this, a retry stops
        waiting, and a delivery under way gets ``timeout_s`` to end. Then the sweep's end is
        recorded (the parent, runs left open) with nothing writing under it; what is still
        queued is in Tune's results, from which a resume delivers it."""
        with self._cv:
            self._stop.set()
            self._cv.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        if busy := [t.name for t in self._threads if t is not None and t.is_alive()]:
            log.warning("MLflow writers still in a call after %.0f s: %s", timeout_s, busy)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued write is delivered, on all writers within one deadline;
        False if ``timeout_s`` passed first or a writer broke with writes outstanding."""

        def settled() -> bool:
            return all(not q or w in self._broken for w, q in enumerate(self._queues))

        with self._cv:
            self._draining += 1
            self._cv.notify_all()
            try:
                self._cv.wait_for(settled, timeout=timeout_s)
                return self._count == 0
            finally:
                self._draining -= 1


def _writers(tracking_uri: str, writers: int | None) -> int:
    """The writer threads for ``tracking_uri``: ``writers`` if given, else the environment's
    ``FLATSWEEP_MLFLOW_WRITERS``, else 4 for an HTTP tracking server and 1 for the rest.

    SQLite takes one writer at a time and the SQLAlchemy store's work holds the GIL, so more
    threads in this process only contend; an HTTP server does the store's work elsewhere and
    each writer mostly waits for its round trips.
    """
    import os

    if writers is None:
        raw = os.environ.get("FLATSWEEP_MLFLOW_WRITERS", "").strip()
        if raw:
            if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
                raise ValueError(
                    f"FLATSWEEP_MLFLOW_WRITERS must be a whole number >= 1, but got {raw!r}"
                )
            return int(raw)
        return 4 if tracking_uri.startswith(("http://", "https://")) else 1
    if writers < 1:
        raise ValueError(f"writers must be at least 1, but got {writers=}")
    return writers


def _metrics_every_s() -> float:
    """How long a running trial's epochs may wait for delivery (``_Outbox``): the
    environment's ``FLATSWEEP_MLFLOW_METRICS_EVERY_S`` if set, else 5 s."""
    import os

    raw = os.environ.get("FLATSWEEP_MLFLOW_METRICS_EVERY_S", "").strip()
    if not raw:
        return 5.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"FLATSWEEP_MLFLOW_METRICS_EVERY_S must be a number of seconds >= 0, but got {raw!r}"
        )
    return value


class MLflowTracker(Callback):
    """Tune callback writing child runs under an existing parent run.

    The hooks only enqueue (``_Outbox``); writer threads deliver, in this process or (with
    ``process=True``) in a writer process of their own (:mod:`sweeps.writer_process`), where
    the store's ORM work does not hold the driver's GIL. A short fresh trial costs
    three MLflow calls: ``create_run`` (with its tags, dated by Tune's start event; a trial
    that ended within the delivery round that creates its run has its final tags there too),
    one ``log_batch`` with its params and every queued epoch's metrics (and the final tags of
    a run created earlier), and ``set_terminated`` (dated by Tune's end event). A longer trial
    adds one ``log_batch`` per ``_Outbox.metrics_every_s`` of its life (5 s, or
    ``FLATSWEEP_MLFLOW_METRICS_EVERY_S``). With ``bulk`` the same records of every run due in
    a round go in one transaction (:mod:`sweeps.sqlbulk`), except what needs MLflow's API: a
    restored trial's run is first searched for, and a closed run reopened, through it.

    Args:
        writers: writer threads, each with its own ``MlflowClient``; a trial stays on one.
            None: the environment variable ``FLATSWEEP_MLFLOW_WRITERS`` if set, else 4 for an
            ``http(s)://`` tracking URI and 1 otherwise (SQLite takes one writer at a time).
        process: deliver from a separate writer process instead of threads of this one. Tune's
            event loop then shares no GIL with the store's client code, which at thousands
            of short trials slowed its every step (``benchmarks/sweep_scale.py``).
        processes: with ``process``, how many writer processes share the trials (each with
            ``writers`` threads): for a SQLite store on a machine with cores to spare, whose
            one process would hold the GIL for all of the store's work.
        bulk: write rounds of runs in one transaction where the store allows
            (``sqlbulk.supported``). None: ``FLATSWEEP_MLFLOW_BULK`` (``1``, the default,
            or ``0``).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        sweep: str,
        base_spec: dict[str, Any],
        max_epochs: int,
        drain_timeout_s: float = 300.0,
        stage: str = "search",
        fresh: bool = False,
        writers: int | None = None,
        process: bool = False,
        processes: int = 1,
        bulk: bool | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.sweep = sweep
        self.base_spec = base_spec
        self.max_epochs = max_epochs
        self.drain_timeout_s = drain_timeout_s
        self.stage = stage  # the stage tag of trials whose config names none
        # True for a stage this driver starts (not restores): its trials have no runs yet.
        self.fresh = fresh
        self.writers = _writers(tracking_uri, writers)
        self.process = process
        if processes < 1:
            raise ValueError(f"processes must be at least 1, but got {processes=}")
        self.processes = processes
        self.bulk = sqlbulk.enabled() if bulk is None else bulk
        self._init_state()

    def _init_state(self) -> None:
        self._client: MlflowClient | None = None  # writer 0's
        self._clients: dict[int, MlflowClient] = {}  # the other writers', one each
        self._runs: dict[str, str] = {}  # trial id -> run id (entries are only added)
        self._owed: dict[str, list[Param]] = {}  # trial id -> params its run still lacks
        self._running: set[str] = set()  # run ids the writers know to be RUNNING
        # Trials whose create_run was sent: if its answer was lost (a timeout after the
        # server committed), the retry must look the run up before creating another.
        self._create_sent: set[str] = set()
        self._last_step: dict[str, int] = {}  # trial id -> last epoch logged
        self._started: set[str] = set()  # trials this driver saw start (main thread only)
        self._closed: set[str] = set()  # trials this driver saw complete or fail
        self._backfilled: set[str] = set()  # restored trials whose result.json was queued
        # Trials whose result.json storage would not hand back: their runs are left for a
        # resume, and the stage is not delivered (``drain``).
        self.unreconciled: set[str] = set()
        self._start_ms: dict[str, int] = {}  # trial id -> when Tune started it
        self._configs: dict[str, dict[str, Any]] = {}  # trial id -> config, for _resolve
        self._specs: dict[str, dict[str, Any]] = {}  # trial id -> its full TrainSpec (JSON)
        self._bulks: dict[int, SqlBulk] = {}  # writer -> its bulk writer, made at first use
        # Decided once, from the URI: a store that is down is retried, not written another way.
        self._bulk_ok = getattr(self, "bulk", False) and sqlbulk.supported(self.tracking_uri)
        # A server takes bulk rounds only with flatsweep's app (sweeps.mlflow_app): asked at
        # the first write, again at most every PROBE_EVERY_S while it cannot be reached.
        server = self.tracking_uri.startswith(("http://", "https://"))
        self._server_bulks: bool | None = None if server else True
        self._probe_at = 0.0
        self._probe_lock = threading.Lock()
        self._outbox: Any
        if getattr(self, "process", False):
            from sweeps.writer_process import WriterProcess

            self._outbox = WriterProcess(self, processes=getattr(self, "processes", 1))
        else:
            bulk = (self._bulkable, self._deliver_bulk) if self._bulk_ok else None
            calls = (_call_group, self._deliver_calls)
            self._outbox = _Outbox(self._deliver, writers=self.writers, bulk=bulk, calls=calls)
        self.killed = 0  # trials closed as KILLED at the end of the experiment

    # Tune pickles its callbacks with the experiment; clients and buffers are per process.
    def __getstate__(self) -> dict[str, Any]:
        keep = (
            "tracking_uri",
            "experiment_id",
            "parent_run_id",
            "sweep",
            "base_spec",
            "max_epochs",
            "drain_timeout_s",
            "stage",
            "writers",
            "process",
            "processes",
            "bulk",
        )
        return {k: self.__dict__[k] for k in keep if k in self.__dict__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.fresh = False  # a tracker unpickled with an experiment belongs to its restore
        if "writers" not in state:  # pickled before there were several
            self.writers = _writers(self.tracking_uri, None)
        if "bulk" not in state:  # pickled before bulk writes
            self.bulk = sqlbulk.enabled()
        self._init_state()

    @property
    def run_ids(self) -> dict[str, str]:
        """Tune trial id -> MLflow run id, as the writers create or find the runs."""
        return self._runs

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _client_for(self, writer: int) -> MlflowClient:
        """Writer ``writer``'s own client (writer 0 uses ``client``). Each is made and used on
        its writer's thread only."""
        if writer == 0:
            return self.client
        if writer not in self._clients:
            self._clients[writer] = MlflowClient(self.tracking_uri)
        return self._clients[writer]

    # -- runs ------------------------------------------------------------------------------------

    @staticmethod
    def _params(spec: dict[str, Any]) -> list[Param]:
        # An unset optional section (no PGD, no data root) is not a param: every param is a
        # value the run used; the whole spec is in the flatsweep.train_spec tag.
        return [
            Param(k, str(v)[:6000])
            for k, v in sorted(
                flatten({k: v for k, v in spec.items() if k != "provenance"}).items()
            )
            if v is not None
        ]

    def _new_run(self, tid: str, close: _Item | None) -> tuple[str, dict[str, str], list[RunTag]]:
        """Trial ``tid``'s new run: its name, its tags and, of those, the closing status's
        tags not yet sent (a short trial's run is created with its final tags)."""
        config, spec = self._configs[tid], self._specs[tid]
        point = {k: v for k, v in config.items() if not k.startswith("_")}
        stage = config.get(META_STAGE, self.stage)
        config = {**config, META_STAGE: stage}
        tags = {
            TAG_PARENT: self.parent_run_id,
            TAG_SWEEP: self.sweep,
            TAG_ROLE: "child",
            TAG_TRIAL: tid,
            TAG_SPEC: json.dumps(spec, sort_keys=True),
            TAG_STAGE: stage,
            TAG_GIT: git_revision(),
            "flatsweep.searched": ",".join(sorted(k for k in point if k not in _NOT_SEARCHED)),
        }
        if META_CONFIG in config:
            tags[TAG_CONFIG] = str(config[META_CONFIG])
        # The UI's charts then match the report's colours: baseline black, finalists by
        # config, search trials grey.
        tags["mlflow.runColor"] = run_color(stage, config.get(META_CONFIG))
        if stage in ("finalist", "baseline"):
            tags[TAG_SEED] = str(spec["seed"])
        name = run_name(spec, config)
        tags[TAG_NOTE] = f"{stage} trial {tid} of sweep {self.sweep}: {name}"
        closing = close.tags[close.sent :] if close is not None else []
        tags.update((t.key, t.value) for t in closing)
        return name, tags, closing

    def _resolve(
        self,
        client: MlflowClient,
        tid: str,
        found: list[Run] | None = None,
        close: _Item | None = None,
    ) -> str:
        """The child run of trial ``tid``: known, found by tags (``found``: already searched),
        else created. Raises when down.

        The run id is recorded the moment the run exists, with its params as owed (they ride
        on the run's next ``log_batch``): a retry after a later call of the same delivery
        failed finds the run here instead of creating a second one. A run created by the
        delivery that also closes it (``close``: a short trial, all in one round) gets the
        closing status's tags at creation, marked sent: MLflow's SQL store writes a
        ``log_batch``'s tags in a transaction of their own (about 2 ms per trial on SQLite).
        """
        if tid in self._runs:
            return self._runs[tid]
        spec = self._specs[tid]
        # A trial of a stage this driver started afresh has no run yet: one round trip less
        # per trial. After a restore, runs are found by tags so none is duplicated.
        if found is None:
            found = (
                []
                if self.fresh and tid not in self._create_sent
                else client.search_runs(
                    [self.experiment_id],
                    filter_string=(
                        f"tags.`{TAG_PARENT}` = '{self.parent_run_id}'"
                        f" and tags.`{TAG_TRIAL}` = '{tid}'"
                    ),
                    max_results=1,
                )
            )
        if found:
            run = found[0]
            run_id = run.info.run_id
            # train_loss is logged every epoch, whatever else the run reports
            history = client.get_metric_history(run_id, "train_loss")
            self._last_step[tid] = max((m.step for m in history), default=0)
            params = self._params(json.loads(run.data.tags[TAG_SPEC]))
            # A found run whose params write failed midway (server went down) gets them all:
            # MLflow accepts a param logged again with the same value.
            if len(run.data.params) < len(params):
                self._owed[tid] = params
            if run.info.status == "RUNNING":
                self._running.add(run_id)
            self._runs[tid] = run_id
            return run_id
        name, tags, closing = self._new_run(tid, close)
        self._create_sent.add(tid)
        # Writes are delivered in rounds: date the run from Tune's event, not the write.
        run_id = client.create_run(
            self.experiment_id, tags=tags, start_time=self._start_ms.get(tid), run_name=name
        ).info.run_id
        if close is not None:
            close.sent += len(closing)
        self._runs[tid] = run_id
        self._owed[tid] = self._params(spec)
        self._running.add(run_id)  # create_run makes it RUNNING
        self._last_step[tid] = 0
        return run_id

    def _deliver(self, writer: int, batch: list[_Item]) -> None:
        """One delivery (``_take``) on writer ``writer``'s client; retried by the writer."""
        client = self._client_for(writer)
        if batch[0].call is not None:
            batch[0].call(self, client)
        else:
            self._deliver_run(client, batch)

    def _deliver_run(self, client: MlflowClient, batch: list[_Item]) -> None:
        """A trial's writes, in order: its run created or found (and reopened, if a restore
        finds it closed), one ``log_batch`` with its owed params, new epochs and closing tags,
        then its closing status. Every step is safe to repeat after a failed call."""
        tid = batch[0].trial
        close = batch[-1]
        run_id = self._resolve(client, tid, close=close if close.closes else None)
        if batch[0].opens and run_id not in self._running:
            # (create_run makes a run RUNNING: no second call for a trial's start)
            client.update_run(run_id, status=batch[0].status)
            self._running.add(run_id)
        self._deliver_metrics(client, tid, batch)
        if close.closes:
            client.set_terminated(run_id, close.status, end_time=close.when)
            self._running.discard(run_id)

    def _deliver_metrics(self, client: MlflowClient, tid: str, items: list[_Item]) -> None:
        """The run's owed params, the items' epochs not logged before and a status item's
        tags, in as few ``log_batch`` calls as MLflow's limits allow (``_log_batches``).

        What landed is recorded after each call (``_owed``, each item's ``sent``), so a
        retry after a failed call re-sends none of it."""
        run_id = self._runs[tid]
        todo, last = _unlogged(items, self._last_step.get(tid, 0))
        for call in _log_batches(self._owed.get(tid, []), todo):
            client.log_batch(run_id, metrics=call.metrics, params=call.params, tags=call.tags)
            if call.params:
                rest = self._owed[tid][len(call.params) :]
                if rest:
                    self._owed[tid] = rest
                else:
                    del self._owed[tid]
            for item, n in call.carried.items():
                item.sent += n
                if item.status is None and item.sent == len(item.metrics):
                    self._last_step[tid] = max(self._last_step.get(tid, 0), item.step)
        self._last_step[tid] = last

    # -- many runs in one transaction (sweeps.sqlbulk) ----------------------------------------

    def _bulkable(self, writer: int, batch: list[_Item]) -> bool:
        """Whether a delivery can go in a bulk round: run writes only (no one-off call), of a
        run known to the writer or new in a stage started afresh (a restored trial's run is
        first searched for by the API path), that need not be reopened."""
        if any(item.call is not None for item in batch) or not self._takes_bulk(writer):
            return False
        run_id = self._runs.get(batch[0].trial)
        if run_id is None:
            return self.fresh
        return not batch[0].opens or run_id in self._running

    def _takes_bulk(self, writer: int) -> bool:
        """Whether the store takes bulk rounds: a database always (``sqlbulk.supported``); a
        server once it said so (``HttpBulk.available``). Until a server answers, deliveries
        go through MLflow's API, which retries them as usual."""
        if self._server_bulks is not None:
            return self._server_bulks
        with self._probe_lock:
            if self._server_bulks is None and time.monotonic() >= self._probe_at:
                try:
                    bulk = sqlbulk.for_client(self._client_for(writer))
                    self._server_bulks = bulk.available()
                except Exception as e:  # unreachable, or answering errors: ask again later
                    log.info("MLflow server not asked about bulk writes yet (%s)", e)
                    self._probe_at = time.monotonic() + PROBE_EVERY_S
                else:
                    log.info(
                        "MLflow server %s: %s",
                        self.tracking_uri,
                        "bulk writes" if self._server_bulks else "MLflow's REST API",
                    )
        return bool(self._server_bulks)

    def _deliver_bulk(self, writer: int, batches: list[list[_Item]]) -> None:
        """Deliveries that ``_bulkable`` accepted, in one transaction: the same records as
        ``_deliver_run`` makes of each. The writer's state (run ids, owed params, what each
        item has sent) changes only once the transaction committed, so a retry after a
        failure writes the whole round again."""
        if writer not in self._bulks:  # opens the store: raises (and is retried) while down
            self._bulks[writer] = sqlbulk.for_client(self._client_for(writer))
        bulk = self._bulks[writer]
        plans = [self._plan(batch) for batch in batches]
        bulk.write([write for write, _ in plans])
        for _, commit in plans:
            commit()

    def _plan(self, batch: list[_Item]) -> tuple[RunWrite, Callable[[], None]]:
        """One delivery as a ``RunWrite``, and what to record once it landed."""
        tid = batch[0].trial
        close = batch[-1] if batch[-1].closes else None
        run_id = self._runs.get(tid)
        new = run_id is None
        if run_id is None:
            # Chosen once per delivery, not per attempt: a round that committed but whose
            # answer was lost (an HTTP timeout, a connection dropped at commit) is sent again
            # with the same ids, and ``SqlBulk._unseen`` then creates none of its runs twice.
            head = batch[0]
            if head.new_run_id is None:
                head.new_run_id = sqlbulk.new_run_id()
            run_id = head.new_run_id
        write = RunWrite(run_id)
        if new:
            name, tags, _ = self._new_run(tid, close)
            start = self._start_ms.get(tid) or int(time.time() * 1000)
            write.create = NewRun(self.experiment_id, name, start, tags)
            write.params = self._params(self._specs[tid])
        else:
            write.params = self._owed.get(tid, [])
        todo, last = _unlogged(batch, 0 if new else self._last_step.get(tid, 0))
        for item in todo:
            if item.status is None:
                write.metrics += item.metrics[item.sent :]
            elif not (new and item is close):  # a new run got its closing tags at creation
                write.tags += item.tags[item.sent :]
        if close is not None:
            write.end = (close.status, close.when or int(time.time() * 1000))

        def commit() -> None:
            for item in batch:
                item.sent = len(item.payload)
            self._runs[tid] = write.run_id
            self._owed.pop(tid, None)
            self._last_step[tid] = last
            if close is not None:
                self._running.discard(write.run_id)
            elif new:
                self._running.add(write.run_id)

        return write, commit

    def _learn(self, tid: str, tune_config: dict[str, Any]) -> None:
        """Record trial ``tid``'s config and the validated spec with every default it actually
        uses (a trial's config never changes: once). Done here in the driver, so a writer
        process needs neither ``trainers`` nor torch."""
        if tid in self._configs:
            return
        from sweeps.trainable import trial_config
        from trainers import TrainSpec

        config = trial_config(tune_config)
        point = {k: v for k, v in config.items() if not k.startswith("_")}
        self._specs[tid] = (
            TrainSpec.model_validate(self.base_spec).with_overrides(point).model_dump(mode="json")
        )
        self._configs[tid] = config

    def trial_info(self, tid: str) -> tuple[dict[str, Any], dict[str, Any], int | None]:
        """What ``_resolve`` needs to create trial ``tid``'s run: its config, its spec and
        when Tune started it (sent to a writer process with the trial's first write)."""
        return self._configs[tid], self._specs[tid], self._start_ms.get(tid)

    def _queue(self, trial: Any, item: _Item) -> None:
        self._learn(trial.trial_id, trial.config)
        self._outbox.put(item)

    def _set_status(self, trial: Any, status: str, tags: list[RunTag] | None = None) -> None:
        tid = trial.trial_id
        item = _Item(
            f"status {status} of trial {tid}",
            tid,
            status=status,
            tags=list(tags or []),
            when=int(time.time() * 1000),
        )
        self._queue(trial, item)

    # -- Tune hooks ------------------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started.add(trial.trial_id)
        self._start_ms.setdefault(trial.trial_id, int(time.time() * 1000))
        self._set_status(trial, "RUNNING")
        self._backfill(trial)

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started.add(trial.trial_id)
        self._set_status(trial, "RUNNING")
        self._backfill(trial)

    def _backfill(self, trial: Any) -> None:
        """A trial of a restored stage, started again: the epochs it reported to an earlier
        driver whose writes died with it (queued, not delivered) are in its result.json, and
        its checkpoint may be past them, so it will not report them again. Queue every
        recorded epoch once; those MLflow holds are skipped at delivery (``_deliver_metrics``).
        """
        tid = trial.trial_id
        if self.fresh or tid in self._backfilled:
            return
        self._backfilled.add(tid)
        rows, unreadable = _read_rows([trial])
        if unreadable:
            # Its earlier epochs are owed to its run: it must not end FINISHED without them
            # (a later resume reconciles only runs whose status is not Tune's).
            self.unreconciled.add(tid)
        for row in rows.get(tid, []):
            self._queue(trial, self._recorded(tid, row))

    def _recorded(self, tid: str, row: dict[str, Any]) -> _Item:
        """The write of one epoch Tune recorded (a result.json row), dated by its timestamp."""
        step = result_step(row)
        ts = int(row.get("timestamp", time.time()) * 1000)
        replay = bool(row.get("diverged")) or bool(row.get("oom"))
        metrics = self._metrics(row, step, ts)
        return _Item("recorded metrics", tid, step=step, metrics=metrics, replay_ok=replay)

    @staticmethod
    def _metrics(result: dict[str, Any], step: int, ts: int) -> list[Metric]:
        return [
            Metric(k, float(v), ts, step)
            for k, v in sorted(result.items())
            if k not in _SKIP_METRICS
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
        ]

    def _final_tags(self, last: dict[str, Any]) -> list[RunTag]:
        flags = final_flags(last, self.max_epochs)
        return [
            RunTag(tag, str(int(flags[k])))
            for k, tag in (
                ("diverged", TAG_DIVERGED),
                ("oom", TAG_OOM),
                ("stopped_early", TAG_STOPPED_EARLY),
            )
        ] + self._device_tags(last)

    @staticmethod
    def _device_tags(last: dict[str, Any]) -> list[RunTag]:
        """The device the trial really used, from its results (``train.device: auto`` is
        resolved in the trial, so the param says only ``auto``), and whether the GPU Ray
        reserved for it sat idle. Written once, with the run's final status: no extra call
        per trial. None for a trial that never reported."""
        if "device_used" not in last:
            return []
        idle = str(int(bool(last.get("gpu_reserved_on_cpu"))))
        return [RunTag(TAG_DEVICE, str(last["device_used"])), RunTag(TAG_GPU_ON_CPU, idle)]

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        tid = trial.trial_id
        step = result_step(result)
        metrics = self._metrics(result, step, int(time.time() * 1000))
        # A diverged or OOM report may repeat an epoch already logged; it must still land.
        replay_ok = bool(result.get("diverged")) or bool(result.get("oom"))
        item = _Item(
            f"metrics of epoch {step} of trial {tid}",
            tid,
            step=step,
            metrics=metrics,
            replay_ok=replay_ok,
        )
        self._queue(trial, item)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        self._closed.add(tid)
        # Tune updates trial.last_result before this hook (its searcher reads it too). A run
        # that lacks epochs storage could not hand back (``_backfill``) stays KILLED, so that
        # a resume completes it from its result.json.
        status = "KILLED" if tid in self.unreconciled else "FINISHED"
        self._set_status(trial, status, self._final_tags(trial.last_result or {}))
        if getattr(self, "process", False):
            # The writer process was sent the trial's config and spec with its first write
            # (``trial_info``), and a finished trial writes no more: the driver's copies
            # (about 2 KB a trial) would stay for the sweep's lifetime. A failed trial keeps
            # them, since Tune may retry it.
            self._configs.pop(tid, None)
            self._specs.pop(tid, None)
            self._start_ms.pop(tid, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._closed.add(trial.trial_id)
        self._set_status(trial, "FAILED", self._device_tags(trial.last_result or {}))

    def _reconcile(self, ended: list[tuple[Any, str]]) -> None:
        """Close the runs of trials that ended under an earlier driver.

        That driver may have died (or given up on an unreachable tracking server, or lost its
        writer) with a trial's writes still queued, and then closed the trial's run as KILLED
        (``close_parent``). Tune's restored experiment state still holds each trial's status,
        and its ``result.json`` every epoch it reported, so the run gets its missing metrics,
        final tags and status from there: it ends as Tune says the trial did.
        The trials' data is read here; one search finds the runs that need it, on a writer.
        """
        data = []
        read, unreadable = _read_rows([trial for trial, _ in ended])
        # Runs whose epochs storage would not hand back stay as they are (open, or KILLED):
        # closed as Tune says without them, a later resume would never complete them.
        self.unreconciled.update(unreadable)
        for trial, status in ended:
            tid = trial.trial_id
            if tid not in read:
                continue
            self._learn(tid, trial.config)
            last = dict(trial.last_result or {})
            # Every epoch Tune recorded for it (its result.json), and the last result: the
            # driver's JSON logger writes result.json, and a kill can cut it before the last
            # line that Tune's snapshot already holds.
            rows = read[tid]
            if last and (not rows or result_step(last) > result_step(rows[-1])):
                rows.append(last)
            data.append((tid, status, last, rows, self._configs[tid], self._specs[tid]))
        self._outbox.put(
            _Item(
                f"reconciling {len(ended)} trials ended before a restart",
                "",
                call=functools.partial(MLflowTracker._write_ended, ended=data),
            )
        )

    def _write_ended(self, client: MlflowClient, ended: list[tuple]) -> None:
        """``_reconcile``'s writes: each ended trial's missing epochs, tags and status.
        ``ended`` holds (trial id, status, last result, result rows, config, spec) each."""
        runs = {
            r.data.tags.get(TAG_TRIAL): r
            for r in find_children(client, self.experiment_id, self.parent_run_id)
        }
        for tid, status, last, rows, config, spec in ended:
            run = runs.get(tid)
            if run is not None and run.info.status == status:
                continue  # its writes did land before the kill: its status is their last
            # Any other status is owed Tune's: a run left RUNNING, or one an earlier driver's
            # ``close_parent`` closed as KILLED while this trial's last writes were undelivered
            # (its writer died, or MLflow came back only for the close). The trial ended all
            # the same, so its missing epochs, final tags and status are delivered to that run.
            self._configs[tid], self._specs[tid] = config, spec
            self._resolve(client, tid, [run] if run is not None else [])
            # Epochs already in MLflow are skipped by _deliver_metrics.
            items = [self._recorded(tid, row) for row in rows]
            # Tune's result timestamp (seconds) is when the trial last reported.
            ended_ms = int(last["timestamp"] * 1000) if "timestamp" in last else None
            tags = self._final_tags(last) if status == "FINISHED" else []
            items.append(_Item(f"status {status}", tid, status=status, tags=tags, when=ended_ms))
            self._deliver_run(client, items)

    @property
    def outstanding(self) -> int:
        """Writes queued and not yet delivered, all writers together, and runs left for a
        resume to complete (their results unreadable on storage)."""
        return self._outbox.outstanding + len(self.unreconciled)

    def drain(self) -> bool:
        """Wait for every buffered write on every writer (one deadline, ``drain_timeout_s``);
        False if some are still outstanding then (the caller must not report success).

        The deadline is set by the first drain and kept: Tune's end of the experiment
        (``on_experiment_end``) and the runner after it both drain, and a stage whose writes
        do not land is to be declared failed ``drain_timeout_s`` after it ended, not twice
        that."""
        if getattr(self, "_drain_deadline", None) is None:  # unset after a restore too
            self._drain_deadline = time.monotonic() + self.drain_timeout_s
        delivered = self._outbox.drain(max(0.0, self._drain_deadline - time.monotonic()))
        return delivered and not self.unreconciled

    def start(self) -> None:
        """Start the writer process, if any, before the first write needs it."""
        self._outbox.start()

    def _deliver_calls(self, writer: int, batches: list[list[_Item]]) -> None:
        """Calls of one ``_call_group``, together: a stage's finished trials copied into its
        Optuna study in one transaction (``StudyMirror.store_many``)."""
        from sweeps.studies import StudyMirror

        key = batches[0][0].call.keywords["key"]  # type: ignore[union-attr]
        mirror = StudyMirror.get(*key)
        mirror.run_ids = self.run_ids
        mirror.store_many([batch[0].call.keywords["trial"] for batch in batches])  # type: ignore[union-attr]

    def mirror_through(self, mirror: Any) -> None:
        """Store ``mirror``'s (a ``studies.StudyMirror``) finished trials on this tracker's
        writer: in its writer process where it has one, so the Optuna storage's work leaves
        the GIL of Tune's event loop as MLflow's does; a round's trials together
        (``_deliver_calls``, ``sweeps.optunabulk``).
        Each stored trial is linked to its run from the writer's own run ids, and ``drain``
        waits for the trials too."""
        key = (mirror.url, mirror.name, mirror.directions, mirror.metrics)

        def sink(trial: Any) -> None:
            tid = trial.user_attrs.get("flatsweep.trial_id", "")
            what = f"trial {tid or '?'} into Optuna study {mirror.name}"
            # On the trial's own writer (thread or process), after its run's creation: the
            # writer that knows the run id links it.
            self._outbox.put(
                _Item(what, tid, call=functools.partial(_store_trial, key=key, trial=trial))
            )

        mirror.sink = sink

    def close(self) -> None:
        """Stop the writer process, if any (after ``drain``: what is still queued then is
        kept in Tune's results, from which a resume delivers it)."""
        self._outbox.close()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # Trials this driver started that never completed were stopped by an interrupt: Tune's
        # cleanup sets them TERMINATED in memory (after its final snapshot, so a resume runs
        # them again). They are KILLED, never "finished" or "stopped early".
        open_here = [
            t for t in trials if t.trial_id in self._started and t.trial_id not in self._closed
        ]
        ended = [
            (t, "FINISHED" if t.status == "TERMINATED" else "FAILED")
            for t in trials
            if t.status in ("TERMINATED", "ERROR")
            and t.trial_id not in self._closed
            and t.trial_id not in self._started
        ]
        if ended:  # trials that ended before a driver restart
            self._reconcile(ended)
        for trial in open_here:
            self._set_status(trial, "KILLED", self._device_tags(trial.last_result or {}))
        self.killed = len(open_here)
        self.drain()


def _call_group(batch: list[_Item]) -> Any:
    """The group of a one-off call that may be delivered with others of its group
    (``_Outbox``'s ``calls``): an Optuna copy (``_store_trial``) by its study; else None."""
    call = batch[0].call
    if len(batch) == 1 and isinstance(call, functools.partial) and call.func is _store_trial:
        url, name, *_ = call.keywords["key"]  # the study (its directions are lists)
        return ("optuna", url, name)
    return None


def _store_trial(tracker: MLflowTracker, client: MlflowClient, key: tuple, trial: Any) -> None:
    """``mirror_through``'s write, on the tracker's writer: the mirror of ``key`` in this
    process (made on first use in a writer process) stores ``trial``."""
    from sweeps.studies import StudyMirror

    mirror = StudyMirror.get(*key)
    mirror.run_ids = tracker.run_ids
    mirror.store(trial)


# -- reading a sweep back: best, verdict, status, export, report ------------------------------


def _of_stage(
    client: MlflowClient, sweep: Sweep, runs: list[Run] | None, *stages: str
) -> list[Run]:
    """The children of ``stages``: from ``runs`` (every child, read once by the caller: one
    read of thousands of runs costs seconds and 100+ MB) or else read now."""
    if runs is None:
        return [r for stage in stages for r in children(client, sweep, stage)]
    return [r for r in runs if stage_of(r) in stages]


def best_run(client: MlflowClient, sweep: Sweep, runs: list[Run] | None = None) -> Run | None:
    """The best full-length search trial by the primary objective (validation metric);
    ``runs``: the sweep's children if already read."""
    metric, mode = sweep.objectives[0]
    ranked = rank_children(_of_stage(client, sweep, runs, "search"), metric, mode)
    return ranked[0] if ranked else None


def _test_metric(metric: str) -> str:
    from trainers import test_metric_for

    return test_metric_for(metric) or metric


def why_unusable(run: Run, metric: str, test: str) -> str | None:
    """Why a confirmation run cannot count, when it ended without a usable result; None when
    it can, or when it has not ended (running, or killed and left for a resume)."""
    tags, status = run.data.tags, run.info.status
    if tags.get(TAG_DIVERGED) == "1":
        return "diverged"
    if tags.get(TAG_OOM) == "1":
        return "ran out of memory"
    if status == "FAILED":
        return "failed"
    if status == "FINISHED" and not (metric in run.data.metrics and test in run.data.metrics):
        return f"finished without {metric} or {test}"
    return None


def _seed_outcomes(runs: Iterable[Run], metric: str, test: str) -> dict[str, dict[int, Any]]:
    """Confirmation runs by config id, then seed: the usable ``Run``, else why the seed has
    none (a string), else the seed is left out (it has not ended). A seed run twice (a resume
    re-runs a failed one) counts its usable run."""
    out: dict[str, dict[int, Any]] = {}
    for r in runs:
        if TAG_CONFIG not in r.data.tags or TAG_SEED not in r.data.tags:
            continue
        seeds = out.setdefault(r.data.tags[TAG_CONFIG], {})
        seed, why = int(r.data.tags[TAG_SEED]), why_unusable(r, metric, test)
        if why is None and r.info.status == "FINISHED":
            seeds[seed] = r
        elif why is not None and not isinstance(seeds.get(seed), Run):
            seeds[seed] = why
    return out


def describe_failures(seeds: dict[int, Any]) -> str:
    """``{3: "diverged", 1: "failed"}`` -> "failed on seed 1; diverged on seed 3"."""
    by_why: dict[str, list[int]] = {}
    for s in sorted(seeds):
        if isinstance(seeds[s], str):
            by_why.setdefault(seeds[s], []).append(s)
    return "; ".join(
        f"{why} on seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, ss))}"
        for why, ss in by_why.items()
    )


def compute_verdict(client: MlflowClient, sweep: Sweep, runs: list[Run] | None = None) -> Any:
    """The winner (best mean validation metric over seeds) against the baseline, paired by
    seed on the matching test metric, with an interval that holds at 95% jointly over the
    finalists it was picked from (``sweeps.stats.family_confidence``); None without an
    eligible finalist and a baseline. ``runs``: the sweep's children if already read.

    A finalist with a seed that diverged, ran out of memory or failed cannot win: judged on
    its other seeds alone it would be chosen, and compared, on the seeds it survived. Such
    finalists, and baseline seeds without a result (left out of the pairs), are named in
    ``Verdict.excluded``; :func:`log_verdict` also says why there is no verdict at all.
    """
    return _confirmation(client, sweep, runs)[0]


def _no_verdict_reason(excluded: dict[str, str]) -> str:
    """Why there is no verdict, in one sentence for the user, from what was left out."""
    if not excluded:
        return "the confirmation stage had no finished finalist and baseline on a shared seed"
    named = "; ".join(f"{cid}: {why}" for cid, why in excluded.items())
    return f"no finalist finished every seed with a result ({named})"


def _confirmation(
    client: MlflowClient, sweep: Sweep, runs: list[Run] | None
) -> tuple[Any, dict[str, str]]:
    from sweeps.report import Verdict
    from sweeps.stats import family_confidence, mean_std, paired_difference, verdict

    metric, mode = sweep.objectives[0]
    test = _test_metric(metric)
    groups = _seed_outcomes(_of_stage(client, sweep, runs, "finalist", "baseline"), metric, test)
    baseline = groups.pop("baseline", {})
    excluded: dict[str, str] = {}
    if failed := describe_failures(baseline):
        excluded["baseline"] = f"{failed} (left out of the pairs)"
    sign = 1.0 if mode == "max" else -1.0
    candidates = []
    for cid, seeds in sorted(groups.items()):
        if failed := describe_failures(seeds):
            excluded[cid] = failed
            continue
        common = sorted(s for s in seeds if isinstance(baseline.get(s), Run))
        if common:
            val, _ = mean_std([seeds[s].data.metrics[metric] for s in common])
            candidates.append((sign * val, cid, common))
    if not candidates:
        return None, excluded
    _, cid, common = max(candidates, key=lambda c: (c[0], -int(c[1].lstrip("f") or 0)))
    win = groups[cid]
    a = [win[s].data.metrics[test] for s in common]
    b = [baseline[s].data.metrics[test] for s in common]
    # The winner is the best of these candidates on the seeds compared: its interval is one
    # of len(candidates) that must hold together (Bonferroni; sweeps.stats).
    diff = paired_difference(a, b, confidence=family_confidence(len(candidates)))

    def cost(key: str) -> float:
        w = mean_std([win[s].data.metrics.get(key, math.nan) for s in common])[0]
        z = mean_std([baseline[s].data.metrics.get(key, math.nan) for s in common])[0]
        return w / z if z and math.isfinite(z) else math.nan

    return (
        Verdict(
            metric=test,
            mode=mode,
            winner_config_id=cid,
            winner_run_ids=[win[s].info.run_id for s in common],
            winner_values=a,
            baseline_values=b,
            seeds=common,
            diff=diff,
            verdict=verdict(diff, mode),
            cost_ratio_passes=cost("closure_passes_total"),
            cost_ratio_seconds=cost("train_seconds_total"),
            excluded=excluded,
            chosen_from=len(candidates),
        ),
        excluded,
    )


def log_verdict(client: MlflowClient, sweep: Sweep, spec: Any = None) -> tuple[Any, str]:
    """Compute the verdict and record it on the parent run (metrics ``final.*``, tags);
    return it and ``""``, or None and why there is none (from the same read of the runs)."""
    from sweeps.report import verdict_metrics

    v, excluded = _confirmation(client, sweep, None)
    if v is None:
        return None, _no_verdict_reason(excluded)
    ts = int(time.time() * 1000)
    metrics = [
        Metric(k, float(x), ts, 0) for k, x in verdict_metrics(v).items() if math.isfinite(x)
    ]
    client.log_batch(
        sweep.parent_id,
        metrics=metrics,
        tags=[
            RunTag(TAG_VERDICT, v.verdict),
            RunTag(TAG_WINNER, v.winner_run_ids[0]),
            RunTag("flatsweep.winner_config_id", v.winner_config_id),
        ],
    )
    return v, ""


def parent_note(sweep: Sweep, status: str, best: Run | None, v: Any, no_verdict: str = "") -> str:
    """The parent run's description (markdown; a fresh UI folds it after about 4 lines, so
    the verdict comes first); ``no_verdict``: why there is none."""
    from sweeps.report import interval_name

    metric, mode = sweep.objectives[0]
    lines = []
    if v is not None:
        d = v.diff
        lines.append(
            f"**Verdict: {v.verdict.replace('_', ' ')}.** Winner {v.winner_config_id} "
            f"{v.metric} {sum(v.winner_values) / len(v.winner_values):.4f} vs baseline "
            f"{sum(v.baseline_values) / len(v.baseline_values):.4f} over seeds {v.seeds}: "
            f"difference {d.mean:+.4f}, {interval_name(v)} [{d.ci_low:+.4f}, {d.ci_high:+.4f}]; "
            f"compute {v.cost_ratio_passes:.2f}x the baseline's (closure passes), "
            f"{v.cost_ratio_seconds:.2f}x (seconds). Report: artifacts `report/report.html`."
        )
        if v.excluded:
            lines.append(
                "Left out: " + "; ".join(f"{cid} {why}" for cid, why in v.excluded.items()) + "."
            )
    elif status == "FINISHED":
        why = no_verdict or "no confirmation stage result"
        lines.append(f"**No verdict:** {why}, so no claim is made.")
    if status == "KILLED":
        lines.append(f"**Interrupted:** run `sweeps resume {sweep.name}` to continue.")
    elif status == "FAILED":
        lines.append("**Failed:** see the driver's log and the FAILED child runs.")
    if best is not None:
        lines.append(
            f"Best search trial by {metric} ({mode}, validation): {best.info.run_name} "
            f"= {best.data.metrics[metric]:.4f}."
        )
    return " ".join(lines)


def parent_name(sweep: Sweep, status: str, v: Any) -> str:
    """The parent row's name in the runs table: the sweep, then what it found."""
    if v is not None:
        return f"{sweep.name}: {v.verdict}"
    return sweep.name if status == "FINISHED" else f"{sweep.name}: {status.lower()}"


def status_rows(client: MlflowClient, sweep: Sweep) -> list[dict[str, Any]]:
    """One row per child run, best first: stage, status, searched values, every objective."""
    objectives = sweep.objectives
    rows = []
    for c in children(client, sweep):
        row = {
            "trial": c.data.tags.get(TAG_TRIAL, ""),
            "run_name": c.info.run_name,
            "stage": stage_of(c),
            "status": c.info.status,
            "params": searched_values(c),
            "stopped_early": c.data.tags.get(TAG_STOPPED_EARLY) == "1",
            "diverged": c.data.tags.get(TAG_DIVERGED) == "1",
        }
        for m, _ in objectives:
            row[m] = c.data.metrics.get(m)
        test = _test_metric(objectives[0][0])
        if stage_of(c) in ("finalist", "baseline"):
            row[test] = c.data.metrics.get(test)
        rows.append(row)
    metric, mode = objectives[0]
    order = {"finalist": 0, "baseline": 1, "search": 2, "baseline_search": 3}
    sign = -1.0 if mode == "max" else 1.0

    def key(r: dict[str, Any]) -> tuple:
        v = r.get(metric)
        ok = isinstance(v, float) and math.isfinite(v)
        return (order.get(r["stage"], 9), not ok, sign * v if ok else 0.0, r["trial"])

    return sorted(rows, key=key)


def export_ranking(client: MlflowClient, sweep: Sweep) -> list[tuple[Run, dict[str, Any]]]:
    """Runs to export, best first, each with its provenance facts: the verdict's winner
    first (with the verdict, and its difference from the baseline with the interval), then
    the other confirmed finalists by mean validation metric (not one with a seed
    that diverged, ran out of memory or failed: its search trial may still come later), then
    the search trials by the search metric (they were never confirmed over seeds)."""
    metric, mode = sweep.objectives[0]
    sign = 1.0 if mode == "max" else -1.0
    out: list[tuple[Run, dict[str, Any]]] = []
    test = _test_metric(metric)
    groups = _seed_outcomes(children(client, sweep, "finalist"), metric, test)
    winner = sweep.parent.data.tags.get("flatsweep.winner_config_id")
    scored = []
    for cid, outcomes in groups.items():
        if describe_failures(outcomes):
            continue  # a seed diverged or failed: not confirmed, and cannot win (the verdict)
        seeds = {s: r for s, r in outcomes.items() if isinstance(r, Run)}
        vals = [r.data.metrics[metric] for r in seeds.values()]
        if vals:
            scored.append((cid != winner, -sign * sum(vals) / len(vals), cid, seeds))
    # What the verdict said of the winner against the baseline goes with its file: an
    # exported "best" config may have tied the baseline, or lost to it.
    said = sweep.parent.data.tags.get(TAG_VERDICT)
    final = sweep.parent.data.metrics
    against = {
        "verdict": said,
        "verdict_metric": test,
        **{
            f"verdict_{key}": final[f"final.delta.{test}.{key}"]
            for key in ("mean", "ci_low", "ci_high", "confidence")
            if f"final.delta.{test}.{key}" in final
        },
    }
    for _, neg, cid, seeds in sorted(scored, key=lambda t: (t[0], t[1], t[2])):
        run = seeds[min(seeds)]
        out.append(
            (
                run,
                {
                    "stage": "finalist",
                    "config_id": cid,
                    "winner": cid == winner,
                    "metric": metric,
                    "mode": mode,
                    "value": -neg * sign,
                    "value_is": f"mean over seeds {sorted(seeds)}",
                    **(against if cid == winner and said else {}),
                },
            )
        )
    for run in rank_children(children(client, sweep, "search"), metric, mode):
        out.append(
            (
                run,
                {
                    "stage": "search",
                    "metric": metric,
                    "mode": mode,
                    "value": run.data.metrics[metric],
                    "value_is": "one search trial",
                },
            )
        )
    return out


def sweep_record(client: MlflowClient, sweep: Sweep, runs: list[Run] | None = None) -> Any:
    """Everything ``sweeps.report`` draws, read from MLflow (``runs``: the sweep's children
    if already read)."""
    from sweeps.report import SweepRecord, TrialRecord

    metric, mode = sweep.objectives[0]
    trials = []
    if runs is None:
        runs = children(client, sweep)
    for c in runs:
        stage = stage_of(c)
        if stage == "search" and c.data.tags.get(TAG_DIVERGED) == "1":
            continue  # its value is the worst value told to Optuna, not a measurement
        history: dict[str, list[tuple[int, float]]] = {}
        if stage in ("finalist", "baseline"):
            for key in ("val_acc", "val_loss", metric):
                if key in c.data.metrics and key not in history:
                    history[key] = sorted(
                        (m.step, m.value) for m in client.get_metric_history(c.info.run_id, key)
                    )
        seed = c.data.tags.get(TAG_SEED)
        trials.append(
            TrialRecord(
                run_id=c.info.run_id,
                run_name=c.info.run_name or "",
                stage=stage,
                status=c.info.status,
                params=searched_values(c),
                metrics=dict(c.data.metrics),
                history=history,
                config_id=c.data.tags.get(TAG_CONFIG),
                seed=int(seed) if seed is not None else None,
                stopped_early=c.data.tags.get(TAG_STOPPED_EARLY) == "1",
            )
        )
    return SweepRecord(
        name=sweep.name,
        search_metric=metric,
        mode=mode,
        searched=sweep.space.get("ranges", {}),
        trials=trials,
        verdict=compute_verdict(client, sweep, runs),
    )
