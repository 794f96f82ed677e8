# Shared by up.sh and down.sh (sourced, not run). Expects $repo_root to be set.
# Relative paths given in the environment are relative to the caller's directory; the
# defaults are relative to the repository root.

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() {
    log "$*"
    exit 1
}

abs_path() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}

bin_dir=$(abs_path "${PYTHON_BIN_DIR:-$repo_root/.venv/bin}")
py=$bin_dir/python
ray_bin=$bin_dir/ray
mlflow_bin=$bin_dir/mlflow
state_dir=$(abs_path "${FLATSWEEP_STATE_DIR:-$repo_root/.flatsweep/local}")
ray_pid_file=$state_dir/ray.pid
ray_log=$state_dir/ray.log
mlflow_pid_file=$state_dir/mlflow.pid
mlflow_log=$state_dir/mlflow.log

# still_running PID: the process has not exited. A zombie, exited but not yet reaped by its
# parent, counts as exited: it holds no memory or port, and no signal can reach it.
still_running() {
    kill -0 "$1" 2>/dev/null && [[ $(ps -o stat= -p "$1" 2>/dev/null) != Z* ]]
}

# live_pid PID_FILE: print the pid and succeed if it names a live process that is still the
# server we started (a stale file whose pid was reused by another program does not count).
live_pid() {
    local pid expected
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    case $(basename "$1") in
        ray.pid) expected="ray start --head" ;;
        mlflow.pid) expected="mlflow server" ;;
        *) return 1 ;;
    esac
    [[ $(ps -o args= -p "$pid" 2>/dev/null) == *"$expected"* ]] || return 1
    printf '%s\n' "$pid"
}

# ray_token: print the token the same way Ray finds it: RAY_AUTH_TOKEN, else the file at
# RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token.
ray_token() {
    if [[ -n ${RAY_AUTH_TOKEN:-} ]]; then
        printf '%s\n' "$RAY_AUTH_TOKEN"
    else
        tr -d '[:space:]' <"${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
        echo
    fi
}
