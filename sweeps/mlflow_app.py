"""``mlflow server --app-name flatsweep``: MLflow's own server plus one route for bulk writes.

Over HTTP, MLflow records a short trial with three requests (``create_run``, ``log_batch``,
``update_run``), and the server spends about 14 ms of CPU on each: Flask, protobuf and the
SQLAlchemy store's ORM sessions (``benchmarks/RESULTS.md``, ``mlflow_throughput``: 41-49 ms of
server CPU per trial, 1100-1800 trials per minute on a 2-core machine, under issue 10's 3000).
This app adds :data:`sweeps.sqlbulk.ROUTE`, which takes a whole delivery round of runs (up to
``sqlbulk.MAX_RUNS``) and writes it in one transaction with :class:`sweeps.sqlbulk.SqlBulk` on
the server's own tracking store: the same rows MLflow's API writes (``tests/sweeps/
test_sqlbulk.py`` compares them run by run through the server). Everything else is MLflow's
server unchanged; a client without flatsweep, or a flatsweep without this app on the server,
uses MLflow's REST API as before.

Registered as the ``mlflow.app`` entry point ``flatsweep`` (``pyproject.toml``), the hook MLflow
gives for server plugins (its ``basic-auth`` app is one). This app has no authentication of its
own, like MLflow's default server: the route answers ``supported: false`` for a store other than
MLflow's SQL store on SQLite or PostgreSQL with the tables flatsweep knows, and while MLflow's
workspaces are on (the route does not scope by workspace).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, Response, jsonify, request

from sweeps import sqlbulk

#: The largest request body accepted (a round of 1000 short trials is about 2 MB).
MAX_BODY_BYTES = 64 * 1024 * 1024

_writer: sqlbulk.SqlBulk | None = None


def _unsupported() -> str | None:
    """Why this server cannot write in bulk, or None."""
    from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
    from mlflow.server.handlers import _get_tracking_store
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    if MLFLOW_ENABLE_WORKSPACES.get():
        return "MLflow workspaces are on"
    store = _get_tracking_store()
    if not isinstance(store, SqlAlchemyStore):
        return f"the tracking store is {type(store).__name__}, not MLflow's SQL store"
    dialect = store.engine.dialect.name
    if dialect not in sqlbulk.DIALECTS:
        return f"the database is {dialect}, not one of {', '.join(sqlbulk.DIALECTS)}"
    differ = sqlbulk.tables_match()
    if differ is not None:
        return f"MLflow's run tables differ from those flatsweep writes: {differ}"
    return None


def _error(message: str, code: str, status: int) -> Response:
    response = jsonify({"error_code": code, "message": message})
    response.status_code = status
    return response


def bulk_write() -> Response:
    """GET: ``{"supported": bool, "reason": str}``. POST: write the round in the body
    (``sqlbulk.encode``'s JSON) in one transaction; MLflow's error JSON on failure."""
    global _writer
    from mlflow.server.handlers import _get_tracking_store

    reason = _unsupported()
    if request.method == "GET":
        return jsonify({"supported": reason is None, "reason": reason or ""})
    if reason is not None:
        return _error(f"bulk writes are off: {reason}", "FEATURE_DISABLED", 501)
    if request.content_length is None or request.content_length > MAX_BODY_BYTES:
        return _error(
            f"the body must have a Content-Length of at most {MAX_BODY_BYTES} bytes",
            "INVALID_PARAMETER_VALUE",
            400,
        )
    try:
        body = json.loads(request.get_data(cache=False))
    except ValueError as e:
        return _error(f"the body is not JSON: {e}", "INVALID_PARAMETER_VALUE", 400)
    try:
        writes = sqlbulk.decode(body)
    except ValueError as e:
        return _error(str(e), "INVALID_PARAMETER_VALUE", 400)
    if _writer is None:
        _writer = sqlbulk.SqlBulk(_get_tracking_store())
    _writer.write(writes)
    return jsonify({})


def create_app(app: Flask | None = None) -> Any:
    """MLflow's server app with :func:`bulk_write` at ``sqlbulk.ROUTE``; under uvicorn (MLflow's
    default server) wrapped in MLflow's FastAPI app, as MLflow's ``basic-auth`` app does."""
    from mlflow.server import app as mlflow_app
    from mlflow.server.handlers import _add_static_prefix, catch_mlflow_exception

    app = mlflow_app if app is None else app
    if "flatsweep_bulk_write" not in app.view_functions:
        app.add_url_rule(
            _add_static_prefix(sqlbulk.ROUTE),
            "flatsweep_bulk_write",
            catch_mlflow_exception(bulk_write),  # MLflow's error JSON, as its own routes
            methods=["GET", "POST"],
        )
    from mlflow.environment_variables import _MLFLOW_SGI_NAME

    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
