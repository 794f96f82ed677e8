# syntax=docker/dockerfile:1.7
# MLflow tracking server for flatsweep: mlflow 3.17.2 (pinned like pyproject.toml) with the
# basic-auth app, PostgreSQL driver and S3 client. Build context is infra/docker:
#   docker build -f infra/docker/mlflow.Dockerfile -t flatsweep-mlflow:3.17.2 infra/docker
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The server should not phone home; Ray is started with --disable-usage-stats likewise.
    MLFLOW_DISABLE_TELEMETRY=true

# [auth] brings Flask-WTF, without which `--app-name basic-auth` does not start.
# psycopg2 matches the project's dev pin; boto3 serves --artifacts-destination s3://.
RUN pip install "mlflow[auth]==3.17.2" "gunicorn==26.2.0" "psycopg2-binary==2.9.13" "boto3==1.44.5"

RUN useradd --create-home --uid 1000 --user-group mlflow
COPY --chmod=0755 mlflow_entrypoint.py /usr/local/bin/mlflow-entrypoint

USER 1000:1000
WORKDIR /home/mlflow
EXPOSE 5000
# The entrypoint writes the basic-auth ini from the environment and refuses to start
# without --app-name basic-auth; compose.yaml and k8s/mlflow.yaml pass the full argv.
ENTRYPOINT ["mlflow-entrypoint"]
CMD ["--host", "0.0.0.0", "--port", "5000", "--app-name", "basic-auth", \
     "--gunicorn-opts=--timeout 300 --no-control-socket"]
