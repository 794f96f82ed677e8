"""Optuna studies that outlive a sweep: stored in an Optuna RDB storage, named after the sweep.

Ray's ``OptunaSearch`` keeps the study inside Tune's pickled searcher, where no Optuna tool
sees it and nothing learned helps the next sweep. Here each finished trial is also copied into
an ``RDBStorage`` study of the sweep's name by a :class:`StudyMirror`, so ``optuna-dashboard
<url>`` shows the study while the sweep runs, and ``searcher.warm_start`` seeds a new sweep's
study with the finished trials of earlier sweeps over the same search space.

Why a mirror and not the searcher's own storage: with an RDB storage every ``ask``, every
intermediate value and every ``tell`` is a database commit on Tune's event loop (about five per
suggestion), which measured 40-58 ms per suggestion against 3-7 ms in memory at 200 trials
(benchmarks/sweep_scale.py) and held up every other trial's results meanwhile. The searcher
therefore samples from an in-memory study, exactly as plain Ray Tune does (and as Tune's
snapshot keeps it), and the mirror's thread writes each finished trial with one commit. Only
finished trials are stored: the dashboard does not show running ones.

Each Optuna trial carries its Tune trial id (``flatsweep.trial_id``) and, once the tracker
has created it, its MLflow run id (``mlflow_run_id``) as user attributes. After each searched
stage :func:`reconcile` makes the stored study and MLflow agree: the study's own user
attribute ``mlflow_run_ids`` maps every Tune trial id to its run (a trial whose run did not
exist yet when it was stored has only this link), and a trial left RUNNING (by an older
version that stored running trials) is marked FAIL.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy.exc
import tenacity

from sweeps import optunabulk
from sweeps.dbinit import first_use, sqlite_path
from sweeps.uris import redact

if TYPE_CHECKING:  # a type only: the MLflow writer process stores trials without torch
    from search_spaces import Ranges

log = logging.getLogger(__name__)

#: User attribute holding the Tune trial id of an Optuna trial (set by the searcher).
ATTR_TRIAL = "flatsweep.trial_id"
#: User attribute holding the MLflow run id of the trial's child run.
ATTR_RUN = "mlflow_run_id"


def study_name(sweep: str, stage: str) -> str:
    """The study of a sweep's searched stage: the sweep's name for the search itself."""
    return sweep if stage == "search" else f"{sweep}-{stage.replace('_', '-')}"


def storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """An RDB storage for ``url`` (its tables created on first use), or None."""
    if url is None:
        return None
    # SQLite allows one writer at a time: wait for the lock instead of failing at once.
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    # Two sweeps starting together on one new storage race to build its tables (dbinit).
    return first_use(
        url, lambda: optuna.storages.RDBStorage(url, engine_kwargs=kwargs), "the Optuna storage"
    )


def distributions(ranges: Ranges) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna's distributions for a sweep's ranges, as ``Range.suggest`` asks for them."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, r in ranges.items():
        if r.integer:
            out[name] = optuna.distributions.IntDistribution(int(r.low), int(r.high), log=r.log)
        else:
            out[name] = optuna.distributions.FloatDistribution(r.low, r.high, log=r.log)
    return out


def _same_space(trial: optuna.trial.FrozenTrial, space: dict[str, Any]) -> bool:
    """Whether every parameter of ``trial`` is one of ``space`` with the same distribution.
    A subset, not the whole space: a conditional parameter (AWP's inner_lr, only when
    inner_steps >= 2) is missing from the trials that did not take its branch."""
    return all(space.get(k) == d for k, d in trial.distributions.items())


def _takes_the_same_branches(trial: optuna.trial.FrozenTrial, space: Any) -> bool:
    """Whether this sweep's space function, replayed on ``trial``'s values, asks for exactly
    the parameters the trial has: a conditional one (AWP's inner_lr, only when inner_steps
    >= 2) is then missing exactly where it should be, and a study of another space (ERM's
    optimizer knobs alone, say) is told apart from one of this space."""
    fixed = optuna.trial.FixedTrial(trial.params)
    try:
        space(fixed)
    except ValueError:  # it asked for a parameter the trial does not have
        return False
    return set(fixed.params) == set(trial.params)


def check_warm_start(
    url: str | None,
    names: list[str],
    space_name: str,
    ranges: Ranges,
    directions: list[str],
    metrics: list[str],
) -> list[optuna.trial.FrozenTrial]:
    """The finished trials of the earlier sweeps ``names``; raises a one-line ValueError when
    a study is missing, optimises other directions or other metrics, or searched another
    space: a trial whose parameters this space (``space_name`` over ``ranges``) would not
    have asked for, or with another range. (Same direction is not enough: values of a sweep
    on ``test_acc`` would feed the test set into this one's searcher, and ``val_loss`` ones
    are no ``train_loss``.) Creates nothing: a SQLite storage that does not exist is refused
    as holding no study, not made."""
    if not names:
        return []
    if url is None:
        raise ValueError(
            "searcher.warm_start needs a stored study: set searcher.storage (or use a SQLite "
            "tracking store, whose study file sits beside it)"
        )
    db = sqlite_path(url)
    if db is not None and not Path(db).expanduser().is_file():
        raise ValueError(f"searcher.warm_start: no stored study {names[0]!r} in {redact(url)}")
    # Here, not at the top: the MLflow writer process imports this module, never this check.
    import search_spaces

    st = storage(url)
    space = distributions(ranges)
    replay = search_spaces.define_by_run(space_name, ranges)
    out: list[optuna.trial.FrozenTrial] = []
    for name in names:
        try:
            study = optuna.load_study(study_name=name, storage=st)
        except KeyError:
            raise ValueError(
                f"searcher.warm_start: no stored study {name!r} in {redact(url)}"
            ) from None
        got = [
            "max" if d == optuna.study.StudyDirection.MAXIMIZE else "min" for d in study.directions
        ]
        if got != directions:
            raise ValueError(
                f"searcher.warm_start: study {name!r} optimises {got}, this sweep {directions}"
            )
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if done and study.metric_names != metrics:
            raise ValueError(
                f"searcher.warm_start: study {name!r} optimised {study.metric_names}, this "
                f"sweep {metrics}"
            )
        other = [
            t for t in done if not (_same_space(t, space) and _takes_the_same_branches(t, replay))
        ]
        if other:
            theirs = sorted(other[0].distributions)
            raise ValueError(
                f"searcher.warm_start: sweep {name!r} searched another space "
                f"({', '.join(theirs)} with other ranges), not this one's "
                f"({', '.join(sorted(space))})"
            )
        out.extend(done)
    return out


def check_new(url: str | None, name: str) -> None:
    """Refuse to start a new sweep over a study of the same name left in the storage (the
    sweep's MLflow record was deleted, its study was not): its trials would be mixed in."""
    if url is None:
        return
    names = {s.study_name for s in optuna.get_all_study_summaries(storage(url))}
    if name in names:
        raise ValueError(
            f"name: an Optuna study {name!r} already exists in {redact(url)}; choose another "
            f"name (--name) or delete it (optuna delete-study --study-name {name})"
        )


def seed_study(
    url: str, name: str, directions: list[str], trials: list[optuna.trial.FrozenTrial]
) -> None:
    """Create study ``name`` holding ``trials`` (before the searcher opens it)."""
    study = optuna.create_study(
        storage=storage(url),
        study_name=name,
        directions=["minimize" if d == "min" else "maximize" for d in directions],
        load_if_exists=True,
    )
    if not study.trials:
        study.add_trials(trials)
        log.warning("warm start: study %s seeded with %d finished trials", name, len(trials))


def reconcile(
    url: str | None, name: str, run_ids: dict[str, str], metrics: list[str] | None = None
) -> None:
    """Make the stored study agree with MLflow after a stage: the study's user attribute
    ``mlflow_run_ids`` maps every Tune trial id to its MLflow run (Optuna freezes a finished
    trial's attributes, so trials that finished without theirs are linked here), and trials a
    killed driver left RUNNING become FAIL (their suggestion was stored after Tune's last
    snapshot, so the resumed searcher never reports them)."""
    if url is None:
        return
    st = storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=st)
    except KeyError:
        return
    study.set_user_attr(ATTR_RUN + "s", dict(sorted(run_ids.items())))
    if metrics and study.metric_names != metrics:
        study.set_metric_names(metrics)  # the dashboard's axes then read "val_acc"
    # Asked of the RDB storage itself, which filters by state in SQL: the study's cached
    # storage would read every trial (about 1 s at 3000) to find none.
    running = st.get_all_trials(
        st.get_study_id_from_name(name), deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
    )
    for t in running:
        st.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


class StudyMirror:
    """Copies the finished trials of a searcher's in-memory study into a stored study.

    One per (storage URL, study name) in this process (:meth:`get`), so that a searcher that
    Tune restores from its snapshot finds the same mirror. :meth:`put` only queues (it runs on
    Tune's event loop); a daemon thread writes in order. Trials already stored (by their Tune
    trial id) are skipped, so a resumed driver may offer every finished trial again.

    With a ``sink`` (``MLflowTracker.mirror_through``), ``put`` hands each trial to it
    instead: the sweep's MLflow writer then stores it (:meth:`store`), in its writer process
    where it has one, off the GIL of Tune's event loop, and its drain covers the trials.
    """

    _instances: dict[tuple[str, str], StudyMirror] = {}
    _lock = threading.Lock()

    def __init__(self, url: str, name: str, directions: list[str], metrics: list[str]) -> None:
        self.url, self.name = url, name
        self.directions, self.metrics = list(directions), list(metrics)
        self.study = optuna.create_study(
            storage=storage(url),
            study_name=name,
            directions=["minimize" if d == "min" else "maximize" for d in directions],
            load_if_exists=True,
        )
        if self.study.metric_names != metrics:
            self.study.set_metric_names(metrics)  # the dashboard's axes then read "val_acc"
        self._stored = {
            t.user_attrs.get(ATTR_TRIAL) for t in self.study.get_trials(deepcopy=False)
        } - {None}
        #: Tune trial id -> MLflow run id (the tracker's map, filled as runs are created).
        self.run_ids: dict[str, str] = {}
        self._pending: deque[optuna.trial.FrozenTrial] = deque()
        self._busy = False
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self.failed = 0  # trials that could not be stored (logged)
        #: Where ``put`` hands a finished trial instead of this mirror's own thread.
        self.sink: Callable[[optuna.trial.FrozenTrial], None] | None = None

    @classmethod
    def get(cls, url: str, name: str, directions: list[str], metrics: list[str]) -> StudyMirror:
        """The mirror of study ``name`` in ``url``, created (with the study) on first use."""
        with cls._lock:
            mirror = cls._instances.get((url, name))
            if mirror is None:
                mirror = cls._instances[(url, name)] = cls(url, name, directions, metrics)
            return mirror

    def put(self, trial: optuna.trial.FrozenTrial) -> None:
        """Queue a finished trial (a copy is taken: the searcher's study keeps changing)."""
        if not trial.state.is_finished() or trial.user_attrs.get(ATTR_TRIAL) in self._stored:
            return
        if self.sink is not None:
            self.sink(copy.deepcopy(trial))
            return
        with self._cv:
            self._pending.append(copy.deepcopy(trial))
            self._cv.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="optuna-mirror", daemon=True)
                self._thread.start()

    def put_all(self, study: optuna.Study) -> None:
        """Queue every finished trial of ``study`` not stored yet (after a restore)."""
        for t in study.get_trials(deepcopy=False):
            self.put(t)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(self._pending))
                trial = self._pending[0]
                self._busy = True
            self.store(trial)
            with self._cv:
                self._pending.popleft()
                self._busy = False
                self._cv.notify_all()

    def store(self, trial: optuna.trial.FrozenTrial) -> None:
        """Write one finished trial (linked to its MLflow run when ``run_ids`` knows it),
        unless it is stored already; a trial that cannot be stored is counted and logged."""
        tid = trial.user_attrs.get(ATTR_TRIAL)
        run_id = self.run_ids.get(tid) if tid else None
        if run_id and ATTR_RUN not in trial.user_attrs:
            trial.user_attrs[ATTR_RUN] = run_id
        try:
            if tid not in self._stored:
                # One transaction; a database that is briefly away gets a minute.
                for attempt in tenacity.Retrying(
                    stop=tenacity.stop_after_delay(60),
                    wait=tenacity.wait_exponential(multiplier=0.5, max=10),
                    retry=tenacity.retry_if_exception_type(sqlalchemy.exc.OperationalError),
                    reraise=True,
                ):
                    with attempt:
                        self.study.add_trial(trial)
                self._stored.add(tid)
        except Exception as e:  # noqa: BLE001 - the study is a copy; never stop the sweep
            # Tune's snapshot keeps the searcher's own study, which holds this trial.
            self.failed += 1
            log.warning("Optuna study %s: trial %s not stored (%s)", self.name, tid, e)

    def store_many(self, trials: Sequence[optuna.trial.FrozenTrial]) -> None:
        """:meth:`store` for each of ``trials``; those not stored yet in one transaction
        where the storage allows (``sweeps.optunabulk``: 0.25 ms of CPU per trial in rounds
        of 50 here, against 20 ms through ``add_trial``). A round the bulk path refuses (a
        trial Optuna would refuse too) is stored one trial at a time, so one bad trial costs
        only itself, as with :meth:`store`."""
        todo: dict[str, optuna.trial.FrozenTrial] = {}
        for trial in trials:
            tid = trial.user_attrs.get(ATTR_TRIAL)
            if not tid:
                self.store(trial)  # nothing to know it by: the one-at-a-time path
                continue
            if tid in self._stored or tid in todo:
                continue
            run_id = self.run_ids.get(tid)
            if run_id and ATTR_RUN not in trial.user_attrs:
                trial.user_attrs[ATTR_RUN] = run_id
            todo[tid] = trial
        if len(todo) > 1 and optunabulk.supported(self.study):
            try:
                for attempt in tenacity.Retrying(
                    stop=tenacity.stop_after_delay(60),
                    wait=tenacity.wait_exponential(multiplier=0.5, max=10),
                    retry=tenacity.retry_if_exception_type(sqlalchemy.exc.OperationalError),
                    reraise=True,
                ):
                    with attempt:
                        optunabulk.add_trials(self.study, list(todo.values()))
                self._stored.update(todo)
                return
            except sqlalchemy.exc.OperationalError as e:
                # Away for a minute: as store() gives up on a trial (the study is a copy).
                self.failed += len(todo)
                log.warning("Optuna study %s: %d trials not stored (%s)", self.name, len(todo), e)
                return
            except Exception as e:  # noqa: BLE001 - one trial Optuna refuses: one at a time
                log.info(
                    "Optuna study %s: storing %d trials one by one (%s)", self.name, len(todo), e
                )
        for trial in todo.values():
            self.store(trial)

    def flush(self, timeout_s: float = 300.0) -> bool:
        """Wait until every queued trial is written; False if ``timeout_s`` passed first."""
        with self._cv:
            return self._cv.wait_for(
                lambda: not self._pending and not self._busy, timeout=timeout_s
            )

    @property
    def outstanding(self) -> int:
        return len(self._pending)


__all__ = [
    "ATTR_RUN",
    "ATTR_TRIAL",
    "StudyMirror",
    "check_warm_start",
    "distributions",
    "reconcile",
    "seed_study",
    "storage",
    "study_name",
]
