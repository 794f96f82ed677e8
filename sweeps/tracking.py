"""MLflow tracking for sweeps: one parent run per sweep, one child run per trial.

Ray's ``MLflowLoggerCallback`` has no parent run and keeps its trial→run map only in driver
memory, so a restored sweep gets duplicate child runs and RUNNING leftovers. This callback
finds runs by tags instead (``flatsweep.sweep``, ``flatsweep.trial_id``), which makes every
operation idempotent across ``sweeps resume`` and driver restarts.

It runs in the driver only, so there is a single MLflow writer (the SQLite default works),
and logs with ``log_batch``: epochs reported close together are merged into one call, and
nothing is logged from inside the training step.
Writes that fail (tracking server down) are buffered in order and retried, so a tracking
outage loses nothing as long as the driver lives.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

log = logging.getLogger(__name__)

TAG_SWEEP = "flatsweep.sweep"
TAG_ROLE = "flatsweep.role"
TAG_TRIAL = "flatsweep.trial_id"
TAG_SPEC = "flatsweep.train_spec"
TAG_STOPPED_EARLY = "flatsweep.stopped_early"
TAG_DIVERGED = "flatsweep.diverged"
TAG_OOM = "flatsweep.oom"
TAG_GIT = "mlflow.source.git.commit"
TAG_PARENT = "mlflow.parentRunId"
# Tune bookkeeping keys that are not training metrics.
_SKIP_METRICS = {"epoch", "training_iteration", "timestamp", "time_this_iter_s", "pid",
                 "time_total_s", "time_since_restore", "iterations_since_restore", "done",
                 "trial_id", "experiment_tag", "date", "hostname", "node_ip", "config",
                 "checkpoint_dir_name", "should_checkpoint"}
TERMINAL = {"FINISHED", "FAILED", "KILLED"}


def git_revision() -> str:
    """The project's git commit, or ``unknown`` outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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


def find_parent(client: MlflowClient, experiment_id: str, sweep: str) -> Run | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_ROLE}` = 'parent'",
        max_results=2,
    )
    return runs[0] if runs else None


def find_children(client: MlflowClient, experiment_id: str, parent_id: str) -> list[Run]:
    out: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id],
                                  filter_string=f"tags.`{TAG_PARENT}` = '{parent_id}'",
                                  max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def rank_children(runs: Iterable[Run], metric: str, mode: str) -> list[Run]:
    """Finished, full-length, non-diverged children best first; ties by trial id."""
    eligible = []
    for r in runs:
        value = r.data.metrics.get(metric)
        if (r.info.status != "FINISHED" or value is None or not math.isfinite(value)
                or r.data.tags.get(TAG_DIVERGED) == "1" or r.data.tags.get(TAG_OOM) == "1"
                or r.data.tags.get(TAG_STOPPED_EARLY) == "1"):
            continue
        eligible.append(r)
    sign = -1.0 if mode == "max" else 1.0
    return sorted(eligible, key=lambda r: (sign * r.data.metrics[metric],
                                           r.data.tags.get(TAG_TRIAL, ""), r.info.run_id))


def final_flags(last: dict[str, Any], max_epochs: int) -> dict[str, bool]:
    """How a trial ended, from its last Tune result: diverged, out of memory, or stopped early
    (fewer than ``max_epochs`` epochs, e.g. by ASHA). A trial with none of them counts toward
    the sweep's best (``rank_children`` reads them back from the run's tags)."""
    diverged, oom = bool(last.get("diverged")), bool(last.get("oom"))
    stopped = not diverged and not oom and int(last.get("epoch", 0)) < max_epochs
    return {"diverged": diverged, "oom": oom, "stopped_early": stopped}


def result_step(result: dict[str, Any]) -> int:
    """The MLflow step of a Tune result: its epoch (Tune's iteration for older results)."""
    return int(result.get("epoch", result.get("training_iteration", 0)))


@dataclass(eq=False)  # identity: an item is removed from the queue by ``is``, not by value
class _Item:
    what: str
    trial: str
    call: Callable[[], Any] | None = None  # a one-off write; None for one epoch's metrics
    step: int = 0
    metrics: list[Metric] = field(default_factory=list)
    replay_ok: bool = False  # log even if this epoch was logged before (diverged/OOM report)


class _Outbox:
    """Ordered MLflow writes on one background thread, retried until they succeed.

    Tune's callbacks only enqueue, so a slow store (SQLite under load) or a tracking outage
    never stalls the driver's event loop, and nothing is lost while the driver lives.
    The writer works in rounds ``interval_s`` apart; a round delivers everything queued, the
    metric items of one run merged into a single ``log_batch``. With epochs of a fraction of a
    second, one store commit per epoch was the driver's largest CPU cost (it competes with the
    trials for the same cores). Order within a run is kept; runs are independent.
    """

    def __init__(self, deliver_metrics: Callable[[str, list[_Item]], None],
                 interval_s: float = 1.0) -> None:
        self.pending: deque[_Item] = deque()
        self.interval_s = interval_s
        self._deliver_metrics = deliver_metrics
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._draining = 0
        self.rounds = 0  # delivery rounds so far

    def put(self, item: _Item) -> None:
        with self._cv:
            self.pending.append(item)
            self._cv.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mlflow-writer",
                                                daemon=True)
                self._thread.start()

    def _take(self) -> list[_Item]:
        """The head item, plus the later metric items of its run up to that run's next write."""
        head = self.pending[0]
        if head.call is not None:
            return [head]
        batch = [head]
        for item in list(self.pending)[1:]:
            if item.trial != head.trial:
                continue
            if item.call is not None:
                break  # a status change of this run: metrics after it must wait for it
            batch.append(item)
        return batch

    def _run(self) -> None:
        delay, failing = 0.5, False
        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(self.pending))
                # Coalesce: let a round's worth of results queue up, unless draining.
                self._cv.wait_for(lambda: self._draining > 0, timeout=self.interval_s)
            # Then deliver everything queued, one merged batch per run, before waiting again:
            # with many trials the queue empties in one round instead of one run per interval.
            while True:
                with self._cv:
                    if not self.pending:
                        break
                    batch = self._take()
                try:
                    if batch[0].call is not None:
                        batch[0].call()
                    else:
                        self._deliver_metrics(batch[0].trial, batch)
                except Exception as e:  # noqa: BLE001 - any transport error: retry later
                    if not failing:
                        log.warning("MLflow write failed (%s: %s); buffering and retrying",
                                    batch[0].what, str(e).splitlines()[0][:200])
                        failing = True
                    time.sleep(delay)
                    delay = min(2 * delay, 10.0)
                    continue
                if failing:
                    log.warning("MLflow reachable again; delivering %d buffered writes",
                                len(self.pending))
                    failing, delay = False, 0.5
                with self._cv:
                    done = {id(item) for item in batch}
                    keep = [item for item in self.pending if id(item) not in done]
                    self.pending.clear()
                    self.pending.extend(keep)
                    self._cv.notify_all()
            self.rounds += 1

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued write is delivered; False if ``timeout_s`` passed first."""
        with self._cv:
            self._draining += 1
            self._cv.notify_all()
            try:
                return self._cv.wait_for(lambda: not self.pending, timeout=timeout_s)
            finally:
                self._draining -= 1


class MLflowTracker(Callback):
    """Tune callback writing child runs under an existing parent run."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, sweep: str,
                 base_spec: dict[str, Any], max_epochs: int, drain_timeout_s: float = 300.0
                 ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.sweep = sweep
        self.base_spec = base_spec
        self.max_epochs = max_epochs
        self.drain_timeout_s = drain_timeout_s
        self._init_state()

    def _init_state(self) -> None:
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._last_step: dict[str, int] = {}  # trial id -> last epoch logged
        self._started: set[str] = set()  # trials this driver saw start (main thread only)
        self._closed: set[str] = set()  # trials this driver saw complete or fail
        self._start_ms: dict[str, int] = {}  # trial id -> when Tune started it
        self._configs: dict[str, dict[str, Any]] = {}  # trial id -> config, for _resolve
        self._outbox = _Outbox(self._deliver_metrics)

    # Tune pickles its callbacks with the experiment; clients and buffers are per process.
    def __getstate__(self) -> dict[str, Any]:
        keep = ("tracking_uri", "experiment_id", "parent_run_id", "sweep", "base_spec",
                "max_epochs", "drain_timeout_s")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # -- runs ------------------------------------------------------------------------------------

    def _resolve(self, tid: str, config: dict[str, Any]) -> str:
        """The child run of trial ``tid``: found by tags, else created. Raises when down."""
        if tid in self._runs:
            return self._runs[tid]
        existing = self.client.search_runs(
            [self.experiment_id],
            filter_string=(f"tags.`{TAG_PARENT}` = '{self.parent_run_id}' and "
                           f"tags.`{TAG_TRIAL}` = '{tid}'"),
            max_results=1)
        spec = None
        if existing:
            run_id = existing[0].info.run_id
            history = self.client.get_metric_history(run_id, "test_loss")
            self._last_step[tid] = max((m.step for m in history), default=0)
        else:
            import search_spaces

            spec = search_spaces.merge(self.base_spec, config)
            tags = {TAG_PARENT: self.parent_run_id, TAG_SWEEP: self.sweep, TAG_ROLE: "child",
                    TAG_TRIAL: tid, TAG_SPEC: json.dumps(spec, sort_keys=True),
                    "flatsweep.searched": ",".join(sorted(config)), TAG_GIT: git_revision()}
            # Writes are delivered in rounds: date the run from Tune's event, not the write.
            run_id = self.client.create_run(self.experiment_id, tags=tags,
                                            start_time=self._start_ms.get(tid),
                                            run_name=f"{self.sweep}-{tid}").info.run_id
            self._last_step[tid] = 0
        if spec is None:
            spec = json.loads(existing[0].data.tags[TAG_SPEC])
        params = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(
            {k: v for k, v in spec.items() if k != "provenance"}).items())]
        # Also for a found run whose params write failed midway (server went down): MLflow
        # accepts a param logged again with the same value.
        if not existing or len(existing[0].data.params) < len(params):
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
        self._runs[tid] = run_id
        return run_id

    def _write(self, trial: Any, what: str, fn: Callable[[MlflowClient, str], Any]) -> None:
        """Queue ``fn(client, run_id)`` for the trial's run, in order, retried when down."""
        tid, config = trial.trial_id, dict(trial.config)
        self._outbox.put(_Item(f"{what} of trial {tid}", tid,
                               call=lambda: fn(self.client, self._resolve(tid, config))))

    def _deliver_metrics(self, tid: str, items: list[_Item]) -> None:
        """Several epochs' metrics in as few ``log_batch`` calls as MLflow's limits allow."""
        run_id = self._resolve(tid, self._configs[tid])
        chunk: list[Metric] = []
        last = self._last_step.get(tid, 0)
        for item in items:
            if item.step <= last and not item.replay_ok:
                continue  # replayed after a restore from an older checkpoint: already logged
            if len(chunk) + len(item.metrics) > 1000:  # MLflow's per-batch metric limit
                self.client.log_batch(run_id, metrics=chunk)
                # Whole epochs per call: a retry after a failed call re-sends nothing logged.
                self._last_step[tid], chunk = last, []
            chunk.extend(item.metrics)
            last = max(last, item.step)
        if chunk:
            self.client.log_batch(run_id, metrics=chunk)
        self._last_step[tid] = last

    def _set_status(self, trial: Any, status: str, tags: list[RunTag] | None = None) -> None:
        when = int(time.time() * 1000)

        def write(client: MlflowClient, run_id: str) -> None:
            if tags:
                client.log_batch(run_id, tags=tags)
            if status in TERMINAL:
                client.set_terminated(run_id, status, end_time=when)
            else:
                client.update_run(run_id, status=status)

        self._write(trial, f"status {status}", write)

    # -- Tune hooks ------------------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started.add(trial.trial_id)
        self._start_ms.setdefault(trial.trial_id, int(time.time() * 1000))
        self._set_status(trial, "RUNNING")

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started.add(trial.trial_id)
        self._set_status(trial, "RUNNING")

    @staticmethod
    def _metrics(result: dict[str, Any], step: int, ts: int) -> list[Metric]:
        return [Metric(k, float(v), ts, step) for k, v in sorted(result.items())
                if k not in _SKIP_METRICS and isinstance(v, int | float)
                and not isinstance(v, bool) and math.isfinite(v)]

    def _final_tags(self, last: dict[str, Any]) -> list[RunTag]:
        flags = final_flags(last, self.max_epochs)
        return [RunTag(tag, str(int(flags[k]))) for k, tag in
                (("diverged", TAG_DIVERGED), ("oom", TAG_OOM),
                 ("stopped_early", TAG_STOPPED_EARLY))]

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        tid = trial.trial_id
        if tid not in self._configs:  # a trial's config never changes: copy it once
            self._configs[tid] = dict(trial.config)
        step = result_step(result)
        metrics = self._metrics(result, step, int(time.time() * 1000))
        # A diverged or OOM report may repeat an epoch already logged; it must still land.
        replay_ok = bool(result.get("diverged")) or bool(result.get("oom"))
        self._outbox.put(_Item(f"metrics of epoch {step} of trial {tid}", tid, step=step,
                               metrics=metrics, replay_ok=replay_ok))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._closed.add(trial.trial_id)
        # Tune updates trial.last_result before this hook (its searcher reads it too).
        self._set_status(trial, "FINISHED", self._final_tags(trial.last_result or {}))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._closed.add(trial.trial_id)
        self._set_status(trial, "FAILED")

    def _reconcile(self, ended: list[tuple[Any, str]]) -> None:
        """Close the runs of trials that ended under an earlier, killed driver.

        That driver may have died with a trial's last writes still queued; Tune's restored
        experiment state still holds each trial's status and last result, so its run gets its
        final metrics and status from there instead of being closed as KILLED later. One
        search finds the runs that need it.
        """
        def write() -> None:
            runs = {r.data.tags.get(TAG_TRIAL): r for r in
                    find_children(self.client, self.experiment_id, self.parent_run_id)}
            for trial, status in ended:
                tid = trial.trial_id
                run = runs.get(tid)
                if run is not None and run.info.status in TERMINAL:
                    continue  # its writes did land before the kill
                self._configs[tid] = dict(trial.config)
                run_id = self._resolve(tid, self._configs[tid])
                last = dict(trial.last_result or {})
                if last:  # logged unless the old driver's write of it did land
                    step = result_step(last)
                    self._deliver_metrics(tid, [_Item("final metrics", tid, step=step,
                                                      metrics=self._metrics(
                                                          last, step, int(time.time() * 1000)))])
                if status == "FINISHED":
                    self.client.log_batch(run_id, tags=self._final_tags(last))
                # Tune's result timestamp (seconds) is when the trial last reported.
                ended_ms = int(last["timestamp"] * 1000) if "timestamp" in last else None
                self.client.set_terminated(run_id, status, end_time=ended_ms)

        self._outbox.put(_Item(f"reconciling {len(ended)} trials ended before a restart",
                               "", call=write))

    def drain(self) -> bool:
        """Wait for every buffered write (bounded by ``drain_timeout_s``)."""
        ok = self._outbox.drain(self.drain_timeout_s)
        if not ok:
            log.error("MLflow still unreachable after %.0f s: %d writes not delivered",
                      self.drain_timeout_s, len(self._outbox.pending))
        return ok

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        ended = [(t, "FINISHED" if t.status == "TERMINATED" else "FAILED") for t in trials
                 if t.status in ("TERMINATED", "ERROR") and t.trial_id not in self._closed]
        if ended:  # trials that ended before a driver restart
            self._reconcile(ended)
        for trial in trials:
            status = trial.status
            if status == "TERMINATED" or status == "ERROR":
                continue
            # PENDING/RUNNING/PAUSED at the end: the sweep was interrupted.
            if trial.trial_id in self._started:
                self._set_status(trial, "KILLED")
        self.drain()
