#!/usr/bin/env bash
# Start a one-machine flatsweep stack: a Ray head with token authentication and an MLflow
# tracking server. The Ray dashboard / Jobs API and MLflow answer on 127.0.0.1 only; Ray's
# GCS, raylet and client server still listen on every interface (Ray binds them that way,
# see infra/README.md), so firewall this machine if it is reachable from a network.
#
# stdout carries only `export ...` lines, so `eval "$(infra/local/up.sh)"` configures the
# calling shell; progress goes to stderr. The same lines are saved to $FLATSWEEP_STATE_DIR/env.sh.
# Stop everything with infra/local/down.sh. Every knob is an environment variable, listed in
# infra/README.md; upper-case names below are that interface, lower-case ones are locals.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=infra/local/_common.sh
source "$repo_root/infra/local/_common.sh"

ray_port=${RAY_PORT:-6379}
dashboard_port=${RAY_DASHBOARD_PORT:-8265}
client_port=${RAY_CLIENT_SERVER_PORT:-10001}
# Ray's default (52365) is shared by every Ray node on the machine; make it movable.
agent_port=${RAY_DASHBOARD_AGENT_PORT:-52365}
mlflow_port=${MLFLOW_PORT:-5000}
auth_mode=${RAY_AUTH_MODE:-token}
# 0: use the tracking server named by MLFLOW_TRACKING_URI (e.g. infra/docker/compose.yaml).
start_mlflow=${FLATSWEEP_START_MLFLOW:-1}
ready_timeout_s=${FLATSWEEP_READY_TIMEOUT:-120}

for tool in "$ray_bin" "$mlflow_bin" "$py"; do
    [[ -x $tool ]] || die "$tool not found; set PYTHON_BIN_DIR to the bin/ of a venv with flatsweep installed"
done
command -v curl >/dev/null || die "curl is needed to wait for the servers"
case $start_mlflow in
    1) ;;
    0) [[ -n ${MLFLOW_TRACKING_URI:-} ]] ||
        die "FLATSWEEP_START_MLFLOW=0 needs MLFLOW_TRACKING_URI set to your tracking server" ;;
    *) die "FLATSWEEP_START_MLFLOW must be 1 or 0, but got FLATSWEEP_START_MLFLOW=$start_mlflow" ;;
esac
ports=("$ray_port" "$dashboard_port" "$client_port" "$agent_port")
[[ $start_mlflow == 0 ]] || ports+=("$mlflow_port")

for pid_file in "$ray_pid_file" "$mlflow_pid_file"; do
    if pid=$(live_pid "$pid_file"); then
        die "already running (pid $pid from $pid_file); run infra/local/down.sh first"
    fi
done

# Fail before starting anything if a port is taken: Ray would otherwise die half-started.
# 0.0.0.0 is checked because Ray's GCS binds every interface, and binding it also fails
# when something holds the same port on 127.0.0.1 only.
"$py" - "${ports[@]}" <<'EOF'
import socket
import sys

taken = []
for port in map(int, sys.argv[1:]):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            taken.append(port)
if taken:
    sys.exit(f"up.sh: port(s) already in use: {taken}; pick others with RAY_PORT, "
             "RAY_DASHBOARD_PORT, RAY_CLIENT_SERVER_PORT, RAY_DASHBOARD_AGENT_PORT, MLFLOW_PORT")
EOF

mkdir -p "$state_dir"
# Keep the state dir out of git wherever it lives (default: inside the repo).
[[ -e $state_dir/.gitignore ]] || printf '*\n' >"$state_dir/.gitignore"

# --- Ray token authentication -------------------------------------------------------------
# `ray start --head` enables token auth only when RAY_AUTH_MODE=token or a token already
# exists, and it never generates one (only ray.init() and `ray get-auth-token --generate`
# do), so make both explicit. The token is 256 random bits in hex, as Ray generates it.
token_source="none (auth disabled)"
case $auth_mode in
    token)
        export RAY_AUTH_MODE=token
        if [[ -n ${RAY_AUTH_TOKEN:-} ]]; then
            token_source="RAY_AUTH_TOKEN"
            unset RAY_AUTH_TOKEN_PATH
        else
            export RAY_AUTH_TOKEN_PATH=$(abs_path "${RAY_AUTH_TOKEN_PATH:-$state_dir/ray_auth_token}")
            token_source=$RAY_AUTH_TOKEN_PATH
            if [[ ! -s $RAY_AUTH_TOKEN_PATH ]]; then
                (umask 077 && "$py" -c 'import secrets, sys; sys.stdout.write(secrets.token_hex(32))' \
                    >"$RAY_AUTH_TOKEN_PATH")
                log "generated a Ray auth token in $RAY_AUTH_TOKEN_PATH"
            fi
        fi
        ;;
    disabled)
        export RAY_AUTH_MODE=disabled
        log "WARNING: RAY_AUTH_MODE=disabled: any local user can submit jobs (run code) on this Ray head"
        ;;
    *) die "RAY_AUTH_MODE must be token or disabled, but got RAY_AUTH_MODE=$auth_mode" ;;
esac

# --- MLflow stores ------------------------------------------------------------------------
prepare_mlflow_stores() {
    # The URI travels in the environment (mlflow reads MLFLOW_BACKEND_STORE_URI), not in
    # argv, so a database password in it does not show up in `ps`.
    export MLFLOW_BACKEND_STORE_URI=${MLFLOW_BACKEND_STORE_URI:-sqlite:///$state_dir/mlflow.db}
    artifacts=${MLFLOW_ARTIFACTS_DESTINATION:-$state_dir/mlartifacts}
    if [[ $artifacts != *://* ]]; then
        artifacts=$(abs_path "$artifacts")
        mkdir -p "$artifacts"
    fi
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project ships psycopg2.
    if [[ $MLFLOW_BACKEND_STORE_URI == postgresql://* ]] && ! "$py" -c 'import psycopg' 2>/dev/null; then
        MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://${MLFLOW_BACKEND_STORE_URI#postgresql://}
    fi
    [[ $MLFLOW_BACKEND_STORE_URI == postgresql* ]] || return 0
    # Create the database if needed. psycopg2 is what MLflow itself needs for PostgreSQL, so
    # unlike psql or createdb it is sure to be there.
    "$py" - <<'EOF' >&2
import os
import sys
from urllib.parse import urlsplit, urlunsplit

try:
    import psycopg2
    from psycopg2 import sql
except ImportError:
    sys.exit("up.sh: a postgresql backend needs psycopg2: pip install psycopg2-binary")

parts = urlsplit(os.environ["MLFLOW_BACKEND_STORE_URI"])
dbname = parts.path.lstrip("/")
if not dbname:
    sys.exit(f"up.sh: MLFLOW_BACKEND_STORE_URI names no database: {parts.scheme}://{parts.hostname}")
# Drop the SQLAlchemy driver suffix (postgresql+psycopg2) and connect to the maintenance db.
maintenance = urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))
conn = psycopg2.connect(maintenance)
conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
with conn.cursor() as cur:
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
    if cur.fetchone() is None:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        print(f"up.sh: created PostgreSQL database {dbname!r}")
conn.close()
EOF
}

if [[ $start_mlflow == 1 ]]; then
    prepare_mlflow_stores
    export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
fi

# --- what jobs and clients see ------------------------------------------------------------
# Ray job drivers inherit the head's environment (MLflow and S3 settings included), so
# `sweeps submit` jobs log to this MLflow and write Tune results under FLATSWEEP_STORAGE
# without further setup.
export FLATSWEEP_STORAGE=${FLATSWEEP_STORAGE:-$state_dir/ray-results}
# Job entrypoints are resolved on the head's PATH: make `python` and `sweeps` the venv's.
export PATH=$bin_dir:$PATH
# No phoning home from the server or the jobs, as --disable-usage-stats does for Ray.
export MLFLOW_DISABLE_TELEMETRY=${MLFLOW_DISABLE_TELEMETRY:-true}

# Ray puts unix sockets under --temp-dir; their paths must fit in 107 bytes and the session
# directory below it adds about 65, so a long state dir falls back to a short /tmp dir
# (ray.tmpdir records which: Ray's own logs are under it).
ray_tmp=$state_dir/ray
if ((${#ray_tmp} > 40)); then
    ray_tmp=$(mktemp -d /tmp/flatsweep-ray.XXXXXX)
fi
printf '%s\n' "$ray_tmp" >"$state_dir/ray.tmpdir"

# Each server gets its own session (setsid) so down.sh can stop exactly the processes it
# started, workers included, and never another Ray cluster on the machine (`ray stop` would).
start_in_new_session() {
    local log_file=$1
    shift
    "$py" -c 'import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])' "$@" \
        >"$log_file" 2>&1 </dev/null &
    echo $!
}

# From here on, any failure stops whatever was already started.
stop_on_failure() {
    local status=$?
    ((status == 0)) && return
    log "startup failed; stopping what was started"
    "$repo_root/infra/local/down.sh" || true
    exit "$status"
}
trap stop_on_failure EXIT

ray_args=(
    start --head --block --disable-usage-stats
    # Ray rewrites 127.0.0.1 to this machine's routable IP for its node address (see
    # resolve_ip_for_localhost in ray/_private/services.py); it is passed so the intent is
    # explicit, but only --dashboard-host truly binds to loopback.
    --node-ip-address=127.0.0.1
    --dashboard-host=127.0.0.1
    --port="$ray_port"
    --dashboard-port="$dashboard_port"
    --ray-client-server-port="$client_port"
    --dashboard-agent-listen-port="$agent_port"
    --temp-dir="$ray_tmp"
)
[[ -n ${RAY_NUM_CPUS:-} ]] && ray_args+=(--num-cpus="$RAY_NUM_CPUS")
log "starting Ray head (GCS :$ray_port, dashboard 127.0.0.1:$dashboard_port), log $ray_log"
start_in_new_session "$ray_log" "$ray_bin" "${ray_args[@]}" >"$ray_pid_file"

if [[ $start_mlflow == 1 ]]; then
    mlflow_args=(
        server
        --host 127.0.0.1
        --port "$mlflow_port"
        --artifacts-destination "$artifacts"
        --serve-artifacts
        # gunicorn, not MLflow's default uvicorn: `uvicorn --workers N` leaves Nagle on for
        # every connection (Kludex/uvicorn#3149), so each request on a kept-alive connection
        # waits ~40 ms for the client's delayed ACK and one writer records ~360 trials a
        # minute (benchmarks/RESULTS.md, mlflow_throughput). gunicorn's sync workers: ~2000.
        # --timeout: artifacts are uploaded through this server (--serve-artifacts), and
        # gunicorn kills a worker whose request takes longer than its 30-s default.
        # --no-control-socket: gunicorn 26 otherwise listens on ~/.gunicorn/gunicorn.ctl,
        # one path for every server of the user, which nothing here needs.
        --gunicorn-opts "--timeout 300 --no-control-socket"
        # MLflow's server plus flatsweep's bulk route (sweeps/mlflow_app.py): a sweep's
        # delivery rounds in one transaction each, not three requests per trial.
        --app-name flatsweep
    )
    log "starting MLflow on 127.0.0.1:$mlflow_port, log $mlflow_log"
    # The Host headers MLflow answers to, in place of its default (loopback plus all private
    # IPs): nothing off this machine can reach a loopback server, and any port is allowed so
    # `ssh -L` tunnels work. An environment variable, not --allowed-hosts, which `mlflow
    # server` refuses beside --gunicorn-opts; the Flask app's middleware reads it the same.
    # Job execution off by default: MLflow 3's server jobs (GenAI scorers, prompt optimisation)
    # run in huey consumer processes that poll the store all the time, CPU taken from the
    # trials on this machine; sweeps never start a job.
    MLFLOW_SERVER_ALLOWED_HOSTS="localhost,localhost:*,127.0.0.1,127.0.0.1:*" \
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
        start_in_new_session "$mlflow_log" "$mlflow_bin" "${mlflow_args[@]}" >"$mlflow_pid_file"
fi

# --- wait until both answer ---------------------------------------------------------------
dashboard_get() {  # dashboard_get PATH [with-token] -> prints the HTTP status
    local url=http://127.0.0.1:$dashboard_port$1
    if [[ ${2:-} == with-token && $RAY_AUTH_MODE == token ]]; then
        # Header from stdin, so the token never appears in argv.
        ray_token | sed 's/^/Authorization: Bearer /' |
            curl -s -o /dev/null -w '%{http_code}' -m 5 -H @- "$url" || true
    else
        curl -s -o /dev/null -w '%{http_code}' -m 5 "$url" || true
    fi
}

deadline=$((SECONDS + ready_timeout_s))
mlflow_up=false ray_up=false
pid_files=("$ray_pid_file")
if [[ $start_mlflow == 1 ]]; then pid_files+=("$mlflow_pid_file"); else mlflow_up=true; fi
until $mlflow_up && $ray_up; do
    for pid_file in "${pid_files[@]}"; do
        # Gone, not "not yet the server": our own child may not have exec'd it yet on a
        # loaded machine (live_pid matches the server's command line, which guards the pid
        # files of earlier runs against reuse, not the children started just above).
        still_running "$(<"$pid_file")" || {
            log "$(basename "$pid_file" .pid) exited during startup; last lines of its log:"
            tail -n 20 "${pid_file%.pid}.log" >&2
            false
        }
    done
    ((SECONDS < deadline)) || { log "not ready after ${ready_timeout_s}s"; false; }
    $mlflow_up || [[ $(curl -s -m 5 "http://127.0.0.1:$mlflow_port/health" || true) != OK ]] ||
        mlflow_up=true
    # /api/version is behind the token check, unlike the health endpoints.
    $ray_up || [[ $(dashboard_get /api/version with-token) != 200 ]] || ray_up=true
    $mlflow_up && $ray_up || sleep 1
done

if [[ $RAY_AUTH_MODE == token ]]; then
    status=$(dashboard_get /api/version)
    [[ $status == 401 ]] || { log "dashboard answered $status without a token; token auth is off"; false; }
fi
trap - EXIT

# %q-quoted, so `eval` survives paths with spaces.
exports=(
    "export RAY_ADDRESS=$(printf %q "http://127.0.0.1:$dashboard_port")"
    "export RAY_AUTH_MODE=$RAY_AUTH_MODE"
    "export MLFLOW_TRACKING_URI=$(printf %q "$MLFLOW_TRACKING_URI")"
    "export FLATSWEEP_STORAGE=$(printf %q "$FLATSWEEP_STORAGE")"
)
if [[ $RAY_AUTH_MODE == token && $token_source != RAY_AUTH_TOKEN ]]; then
    exports+=("export RAY_AUTH_TOKEN_PATH=$(printf %q "$RAY_AUTH_TOKEN_PATH")")
fi
printf '%s\n' "${exports[@]}" >"$state_dir/env.sh"
log "ready: Ray dashboard http://127.0.0.1:$dashboard_port (token: $token_source)," \
    "MLflow $MLFLOW_TRACKING_URI; env saved to $state_dir/env.sh"
printf '%s\n' "${exports[@]}"
