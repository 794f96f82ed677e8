#!/usr/bin/env bash
# Stop the Ray head and MLflow server that infra/local/up.sh started. Safe to run twice.
#
# Each server was started as the leader of its own session, so "our processes" are exactly
# those whose session id is the pid in the pid file: Ray's GCS, raylet, dashboard and its
# workers, MLflow's gunicorn workers. Nothing else is touched, which is why this does not call
# `ray stop --force`: that kills every Ray process of every user and cluster on the machine.
# Logs and data in $FLATSWEEP_STATE_DIR are kept.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=infra/local/_common.sh
source "$repo_root/infra/local/_common.sh"

# Zombies are left out: they have exited already, and only their parent can remove them.
session_members() { ps -e -o pid=,sid=,stat= | awk -v sid="$1" '$2 == sid && $3 !~ /^Z/ { print $1 }'; }

wait_gone() {  # wait_gone SECONDS PID...: succeed once none of the pids is alive
    local deadline=$((SECONDS + $1)) p alive
    shift
    while true; do
        alive=()
        for p in "$@"; do
            if still_running "$p"; then alive+=("$p"); fi
        done
        ((${#alive[@]})) || return 0
        ((SECONDS < deadline)) || return 1
        set -- "${alive[@]}"
        sleep 0.5
    done
}

stop_server() {  # stop_server NAME PID_FILE GRACE_SECONDS
    local name=$1 pid_file=$2 grace=$3 pid members step signal wait_s
    [[ -s $pid_file ]] || return 0
    pid=$(<"$pid_file")
    if live_pid "$pid_file" >/dev/null; then
        # The leader shuts its children down in order on SIGTERM (Ray drains the node first).
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        wait_gone "$grace" "$pid" || log "$name did not exit within ${grace}s"
    elif still_running "$pid"; then
        # The pid now belongs to an unrelated program: leave it and its session alone. (A
        # leader that exited but is not yet reaped, a zombie, is not that: it had crashed.)
        log "$name is not running; pid $pid was reused (by: $(ps -o args= -p "$pid" | cut -c1-80)), removing $pid_file"
        rm -f "$pid_file"
        return 0
    fi
    # Whatever is left of the session: workers, or everything if the leader had crashed.
    # SIGTERM, 10 s, then SIGKILL, 5 s; each reads the session afresh, so a process forked
    # after the last read is seen too.
    for step in TERM:10 KILL:5; do
        signal=${step%:*} wait_s=${step#*:}
        mapfile -t members < <(session_members "$pid")
        ((${#members[@]})) || break
        log "sending SIG$signal to ${#members[@]} leftover $name process(es)"
        kill -"$signal" "${members[@]}" 2>/dev/null || true
        wait_gone "$wait_s" "${members[@]}" || true
    done
    # Never report "stopped" over survivors (a process stuck in the kernel, or one forked
    # after SIGKILL's list was read): name them and fail, keeping the pid file for a second try.
    mapfile -t members < <(session_members "$pid")
    if ((${#members[@]})); then
        log "$name: ${#members[@]} process(es) of session $pid still running:"
        ps -o pid=,stat=,args= -p "$(IFS=,; echo "${members[*]}")" >&2 || true
        return 1
    fi
    rm -f "$pid_file"
    log "$name stopped"
}

# Ray drains for up to 30 s (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S) before tearing down.
status=0
stop_server "Ray head" "$ray_pid_file" 60 || status=1
stop_server "MLflow" "$mlflow_pid_file" 10 || status=1
exit "$status"
