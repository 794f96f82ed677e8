"""Open a database store that several processes may be creating at the same moment.

MLflow and Optuna both build a new store's tables on first use, unguarded. Two sweeps started
together on one new tracking database (or a sweep and a test's client) race there: of four
processes opening one new SQLite MLflow store at once, three failed, each differently ("table
... already exists", "duplicate column name", alembic's "Online migration expected to match one
row", an out-of-date schema); of four opening one new Optuna storage, one failed ("UNIQUE
constraint failed: alembic_version.version_num").
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

log = logging.getLogger(__name__)

#: SQLAlchemy URL schemes (before any ``+driver``) whose stores build tables on first use.
DATABASE_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql"})


def sqlite_path(uri: str) -> str | None:
    """The file path of a ``sqlite:///PATH`` URI (``sqlite:////abs`` is ``/abs``), else None."""
    return uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None


def first_use(uri: str, build: Callable[[], T], what: str) -> T:
    """``build()``, the constructor of a store at ``uri``, safe against other processes building
    the same new store's tables at the same moment.

    On SQLite this project's processes take turns with an exclusive ``flock`` on the database
    file (SQLite's own locks are ``fcntl`` record locks, which a ``flock`` does not touch).
    On any database a failure is tried once more after a second: a process that does not
    take the lock (``mlflow ui``, a script, a PostgreSQL server's other client) may have been
    building the tables meanwhile, and has finished by then. A second failure is raised."""

    def attempt_twice() -> T:
        try:
            return build()
        except Exception as e:  # noqa: BLE001 - any of the race's errors; raised if it recurs
            log.warning("opening %s failed (%s); trying once more", what, e)
            time.sleep(1.0)
            return build()

    if urlsplit(uri).scheme.split("+")[0] not in DATABASE_SCHEMES:
        return build()  # a server or a file store: nothing here builds tables
    path = sqlite_path(uri)
    if path in (None, "", ":memory:"):  # a database server, or a database only we can see
        return attempt_twice()
    try:
        db = open(path, "ab")  # noqa: SIM115 - an empty file is a new database to SQLite
    except OSError:  # no such directory, no permission: the store says so in its own words
        return build()
    with db:
        fcntl.flock(db, fcntl.LOCK_EX)
        try:
            return attempt_twice()
        finally:
            fcntl.flock(db, fcntl.LOCK_UN)
