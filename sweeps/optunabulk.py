"""Many finished trials copied into an Optuna RDB study in one transaction.

A sweep keeps its Optuna study in an RDB storage (``sweeps.studies.StudyMirror``): each
finished trial is copied there with ``Study.add_trial``. Optuna's ``RDBStorage`` makes that
one transaction of about twenty ORM statements (the trial, then each value, param, attribute
and intermediate value, each first looking the trial up again): 20 ms of CPU per trial on the
2-core machines of ``benchmarks/RESULTS.md``, the largest cost left in a sweep's MLflow writer
process once MLflow's own writes went in bulk (``sweeps.sqlbulk``), and CPU the trials on the
same cores lose. Optuna has no call for several trials (``Study.add_trials`` loops over
``add_trial``), so, as ``sweeps.sqlbulk`` does for MLflow, this module writes a round of
finished trials with a few multi-row statements through Optuna's own table definitions
(``optuna.storages._rdb.models``) on the storage's own engine.

The rows are the ones ``add_trial`` writes (``tests/sweeps/test_optunabulk.py`` copies the
same trials both ways, on SQLite and PostgreSQL, and compares every ``FrozenTrial``): the same
validation (``FrozenTrial._validate``, the number of values), the trial's number (the count
of the study's trials before it), datetimes stored as naive UTC, values and intermediate
values in Optuna's stored form (``value_to_stored_repr``), params in their internal
representation with their distribution's JSON, checked against the distribution the study
already holds for the name (``check_distribution_compatibility``, as ``_set_trial_param``),
attributes as JSON.

Used only where it is known to match: an ``RDBStorage`` on SQLite or PostgreSQL whose tables
have exactly ``COLUMNS`` (Optuna 5.0's); otherwise ``StudyMirror`` adds the trials one by one
as before. ``FLATSWEEP_OPTUNA_BULK=0`` turns it off.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from typing import Any

import optuna
from optuna import distributions
from optuna.trial import FrozenTrial

#: The columns of Optuna's trial tables this module writes, as Optuna 5.0 defines them.
COLUMNS = {
    "trials": {"trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"},
    "trial_values": {"trial_value_id", "trial_id", "objective", "value", "value_type"},
    "trial_params": {"param_id", "trial_id", "param_name", "param_value", "distribution_json"},
    "trial_intermediate_values": {
        "trial_intermediate_value_id",
        "trial_id",
        "step",
        "intermediate_value",
        "intermediate_value_type",
    },
    "trial_user_attributes": {"trial_user_attribute_id", "trial_id", "key", "value_json"},
    "trial_system_attributes": {"trial_system_attribute_id", "trial_id", "key", "value_json"},
}
DIALECTS = ("sqlite", "postgresql")


def enabled() -> bool:
    """``FLATSWEEP_OPTUNA_BULK``: ``1`` (the default) or ``0``."""
    raw = os.environ.get("FLATSWEEP_OPTUNA_BULK", "1").strip()
    if raw not in ("0", "1"):
        raise ValueError(f"FLATSWEEP_OPTUNA_BULK must be 0 or 1, but got {raw!r}")
    return raw == "1"


def _models() -> Any:
    from optuna.storages._rdb import models

    return models


def rdb(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The study's ``RDBStorage`` (under Optuna's cache), or None for any other storage."""
    storage = study._storage
    storage = getattr(storage, "_backend", storage)  # _CachedStorage wraps the RDB storage
    return storage if isinstance(storage, optuna.storages.RDBStorage) else None


def supported(study: optuna.Study) -> bool:
    """Whether ``study``'s trials may be added in bulk: ``FLATSWEEP_OPTUNA_BULK`` is on, its
    storage is an ``RDBStorage`` on SQLite or PostgreSQL, and Optuna's trial tables have
    exactly ``COLUMNS``."""
    storage = rdb(study)
    if not enabled() or storage is None or storage.engine.dialect.name not in DIALECTS:
        return False
    m = _models()
    tables = (
        m.TrialModel,
        m.TrialValueModel,
        m.TrialParamModel,
        m.TrialIntermediateValueModel,
        m.TrialUserAttributeModel,
        m.TrialSystemAttributeModel,
    )
    return {t.__table__.name: {c.name for c in t.__table__.columns} for t in tables} == COLUMNS


def _utc(value: datetime.datetime | None) -> datetime.datetime | None:
    """Optuna's stored form of a trial datetime: naive UTC (``TrialModel``'s setters)."""
    if value is None:
        return None
    return value.astimezone(datetime.UTC).replace(tzinfo=None)


def add_trials(study: optuna.Study, trials: Sequence[FrozenTrial]) -> list[int]:
    """``study.add_trial`` for each of ``trials``, in order, in one transaction: all of them
    are added or none. Returns their numbers. Raises ``ValueError`` where ``add_trial`` would
    (an invalid trial, a param whose distribution the study holds differently), SQLAlchemy's
    errors for an unreachable database (the caller retries)."""
    storage = rdb(study)
    assert storage is not None, "add_trials needs a study in an RDBStorage"
    for t in trials:
        t._validate()
        if t.values is not None and len(study.directions) != len(t.values):
            raise ValueError(
                f"The added trial has {len(t.values)} values, which is different from the "
                f"number of objectives {len(study.directions)} in the study."
            )
    if not trials:
        return []
    from sqlalchemy import bindparam, func, select

    m = _models()
    trial_t = m.TrialModel.__table__
    study_id = study._study_id
    with storage.engine.begin() as conn:
        # Optuna locks the study row while it numbers a trial (PostgreSQL: FOR UPDATE; SQLite
        # serialises writers, and a snapshot another writer overtook fails, to be retried).
        s = m.StudyModel.__table__
        lock = select(s.c.study_id).where(s.c.study_id == study_id)
        if conn.dialect.name == "postgresql":
            lock = lock.with_for_update()
        if conn.execute(lock).one_or_none() is None:
            raise KeyError(f"No study with study_id {study_id} exists.")
        params = _check_params(conn, study_id, trials)
        rows = [
            {
                "number": None,  # set below, once the rows hold the write lock
                "study_id": study_id,
                "state": t.state,
                "datetime_start": _utc(t.datetime_start),
                "datetime_complete": _utc(t.datetime_complete),
            }
            for i, t in enumerate(trials)
        ]
        ids = list(
            conn.execute(
                trial_t.insert().returning(trial_t.c.trial_id, sort_by_parameter_order=True),
                rows,
            ).scalars()
        )
        # A trial's number is the count of the study's trials before it, counted as Optuna
        # does after the insert: SQLite takes its write lock at the first INSERT (Python's
        # sqlite3 begins no transaction for a SELECT), so a count made before it could miss a
        # trial another writer process added in between.
        base = conn.execute(
            select(func.count(trial_t.c.trial_id)).where(
                trial_t.c.study_id == study_id, trial_t.c.trial_id < ids[0]
            )
        ).scalar_one()
        numbers = [base + i for i in range(len(ids))]
        conn.execute(
            trial_t.update()
            .where(trial_t.c.trial_id == bindparam("id"))
            .values(number=bindparam("n")),
            [{"id": i, "n": n} for i, n in zip(ids, numbers, strict=True)],
        )
        values, inter, users, systems = [], [], [], []
        for trial_id, t in zip(ids, trials, strict=True):
            objectives = (
                list(enumerate(t.values))
                if t.values is not None and len(t.values) > 1
                else [(0, t.value)]
                if t.value is not None
                else []
            )
            for objective, v in objectives:
                stored, kind = m.TrialValueModel.value_to_stored_repr(v)
                values.append(
                    {
                        "trial_id": trial_id,
                        "objective": objective,
                        "value": stored,
                        "value_type": kind,
                    }
                )
            for step, v in t.intermediate_values.items():
                stored, kind = m.TrialIntermediateValueModel.intermediate_value_to_stored_repr(v)
                inter.append(
                    {
                        "trial_id": trial_id,
                        "step": step,
                        "intermediate_value": stored,
                        "intermediate_value_type": kind,
                    }
                )
            users += [
                {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                for k, v in t.user_attrs.items()
            ]
            systems += [
                {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                for k, v in t.system_attrs.items()
            ]
        param_rows = [
            {"trial_id": ids[i], **row} for i, t in enumerate(trials) for row in params[i]
        ]
        for model, batch in (
            (m.TrialValueModel, values),
            (m.TrialParamModel, param_rows),
            (m.TrialIntermediateValueModel, inter),
            (m.TrialUserAttributeModel, users),
            (m.TrialSystemAttributeModel, systems),
        ):
            for i in range(0, len(batch), 2000):  # under SQLite's bound-parameter limit
                conn.execute(model.__table__.insert(), batch[i : i + 2000])
    return numbers


def _check_params(conn: Any, study_id: int, trials: Sequence[FrozenTrial]) -> list[list[dict]]:
    """Each trial's param rows, each distribution checked against the one the study already
    holds for its name (else the first of the round), as ``_set_trial_param`` does."""
    from sqlalchemy import select

    m = _models()
    p, t = m.TrialParamModel.__table__, m.TrialModel.__table__
    names = {name for trial in trials for name in trial.params}
    held: dict[str, distributions.BaseDistribution] = {}
    for name in sorted(names):
        # One row per name (Optuna's ``.first()``): all of them would grow with the study
        # (7.5% of a 3000-trial sweep's driver and writer samples, py-spy).
        query = (
            select(p.c.distribution_json)
            .join(t, t.c.trial_id == p.c.trial_id)
            .where(t.c.study_id == study_id, p.c.param_name == name)
            .limit(1)
        )
        text = conn.execute(query).scalar_one_or_none()
        if text is not None:
            held[name] = distributions.json_to_distribution(text)
    out = []
    for trial in trials:
        rows = []
        for name, value in trial.params.items():
            dist = trial.distributions[name]
            if name in held:
                distributions.check_distribution_compatibility(held[name], dist)
            else:
                held[name] = dist
            rows.append(
                {
                    "param_name": name,
                    "param_value": dist.to_internal_repr(value),
                    "distribution_json": distributions.distribution_to_json(dist),
                }
            )
        out.append(rows)
    return out
