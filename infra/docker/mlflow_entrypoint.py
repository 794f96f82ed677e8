#!/usr/bin/env python3
"""Start ``mlflow server --app-name basic-auth`` with its secrets taken from the environment.

MLflow's basic-auth app reads its user store location from an ini file
(``MLFLOW_AUTH_CONFIG_PATH``), and that location is a database URI holding the PostgreSQL
password, so the file cannot be committed. This entrypoint writes it at container start:

* both PostgreSQL URIs (tracking store, auth user store) are built from ``POSTGRES_*`` with
  the password URL-quoted; the tracking URI is handed over as ``MLFLOW_BACKEND_STORE_URI``
  rather than argv, so neither shows up in ``ps`` or ``docker inspect``;
* the ini is written with mode 0600 and holds no admin password: MLflow reads that from
  ``MLFLOW_AUTH_ADMIN_PASSWORD`` when it creates the admin user on first start;
* ``MLFLOW_FLASK_SERVER_SECRET_KEY`` (the basic-auth app's CSRF key, shared by all workers and
  replicas) must be set; MLflow refuses to start without it;
* a secret left at the ``change-me`` placeholder of ``.env.example`` /
  ``secrets.example.yaml`` stops the start instead of going live.

The remaining arguments are passed to ``mlflow server`` and must include
``--app-name basic-auth``: this image never serves MLflow without authentication.
"""

import os
import sys
from pathlib import Path
from urllib.parse import quote

PLACEHOLDER = "change-me"
# Required always; the S3 keys are optional because a pod may get S3 access from its
# service account (IRSA, workload identity) instead.
REQUIRED = ("POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
OPTIONAL = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def fail(message: str) -> None:
    sys.exit(f"mlflow-entrypoint: {message}")


def check_secrets(env: dict[str, str]) -> None:
    for name in REQUIRED:
        if not env.get(name):
            fail(f"{name} must be set")
    for name in REQUIRED + OPTIONAL:
        if env.get(name) == PLACEHOLDER:
            fail(f"{name} is still the placeholder {PLACEHOLDER!r}; set a real secret")


def postgres_uri(env: dict[str, str], database: str) -> str:
    # The project ships psycopg2; SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3.
    user = quote(env.get("POSTGRES_USER", "mlflow"), safe="")
    password = quote(env["POSTGRES_PASSWORD"], safe="")
    host = env.get("POSTGRES_HOST", "postgres")
    port = env.get("POSTGRES_PORT", "5432")
    return f"postgresql+psycopg2://{user}:{password}@{host}:{port}/{quote(database, safe='')}"


def auth_ini(env: dict[str, str]) -> str:
    database_uri = postgres_uri(env, env.get("POSTGRES_AUTH_DB", "mlflow_auth"))
    # configparser interpolates '%', and URL-quoting produces '%XX'.
    escaped = database_uri.replace("%", "%%")
    return (
        "[mlflow]\n"
        # Every signed-in user may read every experiment; writers get MANAGE on their own.
        "default_permission = READ\n"
        f"database_uri = {escaped}\n"
        f"admin_username = {env.get('MLFLOW_AUTH_ADMIN_USERNAME', 'admin')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )


def main(argv: list[str]) -> None:
    args = argv[1:]
    joined = [f"{a}={b}" for a, b in zip(args, args[1:], strict=False) if a == "--app-name"]
    if "--app-name=basic-auth" not in args + joined:
        fail("arguments must include --app-name basic-auth")
    env = dict(os.environ)
    check_secrets(env)

    ini_path = Path(env.get("MLFLOW_AUTH_CONFIG_PATH", "/tmp/mlflow-auth/basic_auth.ini"))
    ini_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(ini_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(auth_ini(env))

    env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini_path)
    env["MLFLOW_BACKEND_STORE_URI"] = postgres_uri(env, env.get("POSTGRES_DB", "mlflow"))
    os.execvpe("mlflow", ["mlflow", "server", *args], env)


if __name__ == "__main__":
    main(sys.argv)
