# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts sourcing it
# Shared helpers for deploy/local/*.sh. Sourced, never executed.
#
# Layout:
#   $EOSTREAM_CACHE      (default ~/.cache/eostream)        downloads and builds, keyed by version
#   $EOSTREAM_STACK_DIR  (default ~/.cache/eostream/stack)  runtime state: data dirs, logs/, run/*.pid

if [[ -n "${_EOSTREAM_LIB_LOADED:-}" ]]; then
    return 0
fi
_EOSTREAM_LIB_LOADED=1

LOCAL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$LOCAL_DIR/../.." && pwd)"
CACHE="${EOSTREAM_CACHE:-$HOME/.cache/eostream}"
STATE="${EOSTREAM_STACK_DIR:-$HOME/.cache/eostream/stack}"
LOG_DIR="$STATE/logs"
RUN_DIR="$STATE/run"
VENV_PY="$ROOT/.venv/bin/python"
HOST=127.0.0.1

# Fixed local-only addresses and credentials (not secrets).
S3_USER=eostream
S3_PASSWORD=eostream-local-secret
PG_USER=eostream
PG_PASSWORD=eostream
PG_PORT=15432
PG_DSN="postgresql://$PG_USER:$PG_PASSWORD@$HOST:$PG_PORT"

mkdir -p "$CACHE" "$LOG_DIR" "$RUN_DIR"

UP_NOTE=""
up_note() { UP_NOTE="$1"; } # what `up` did: "started" or "already running"

log() { printf '%s\n' "$*" >&2; }
die() {
    printf 'stack: error: %s\n' "$*" >&2
    exit 1
}

# Print the tail of each log file given, then die with the message.
fail_with_logs() {
    local msg="$1"
    shift
    local f
    for f in "$@"; do
        if [[ -s "$f" ]]; then
            printf -- '----- last 40 lines of %s -----\n' "$f" >&2
            tail -n 40 "$f" >&2
            printf -- '-----\n' >&2
        fi
    done
    die "$msg"
}

need_venv() {
    [[ -x "$VENV_PY" ]] || die "workspace venv missing ($VENV_PY): run 'uv sync' in $ROOT first"
}

# ---- ports and HTTP -------------------------------------------------------------------------

port_open() { # port [host]
    (exec 3<>"/dev/tcp/${2:-$HOST}/$1") 2>/dev/null
}

http_code() { # url -> prints the status code (000 when unreachable)
    curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" 2>/dev/null || true
}

http_ok() { # url
    [[ "$(http_code "$1")" == 200 ]]
}

# wait_until TIMEOUT_S NAME PIDNAME CMD...: poll CMD every 0.5 s until it succeeds.
# Fails early when the component's process (pid file PIDNAME, "" for none) has died.
wait_until() {
    local timeout="$1" name="$2" pidname="$3"
    shift 3
    local deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        if "$@"; then
            return 0
        fi
        # Only the pid, not the marker: right after the fork the child still shows the shell's
        # command line until it execs the daemon.
        if [[ -n "$pidname" ]] && ! kill -0 "$(read_pid "$pidname")" 2>/dev/null; then
            fail_with_logs "$name: process exited while waiting for it to become healthy" \
                "$(log_file "$name")" "${EXTRA_LOG:-}"
        fi
        sleep 0.5
    done
    fail_with_logs "$name: not healthy after ${timeout}s (check: $*)" \
        "$(log_file "$name")" "${EXTRA_LOG:-}"
}

wait_for_port() { # timeout name pidname port
    wait_until "$1" "$2" "$3" port_open "$4"
}

wait_for_http() { # timeout name pidname url
    wait_until "$1" "$2" "$3" http_ok "$4"
}

# Die when PORT is already taken by something that is not ours.
ensure_port_free() { # name port
    if port_open "$2"; then
        die "$1: port $HOST:$2 is already in use by another process (see: ss -ltnp | grep $2)"
    fi
}

# ---- pids and processes ---------------------------------------------------------------------

log_file() { printf '%s/%s.log' "$LOG_DIR" "$1"; }
pid_file() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }

read_pid() { # name -> prints pid or nothing
    local f
    f="$(pid_file "$1")"
    [[ -s "$f" ]] && head -n 1 "$f"
    return 0
}

# pid_alive NAME: the recorded pid exists and its command line still matches the marker
# recorded next to it (guards against pid reuse after a reboot or a crash).
pid_alive() {
    local pid marker f
    f="$(pid_file "$1")"
    [[ -s "$f" ]] || return 1
    pid="$(sed -n 1p "$f")"
    marker="$(sed -n 2p "$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ -z "$marker" ]] && return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker"
}

# start_daemon NAME MARKER CMD...: run CMD detached (own session, survives this shell),
# stdout+stderr appended to logs/NAME.log, pid recorded in run/NAME.pid.
# Environment and working directory are inherited: set them in a subshell around the call.
start_daemon() {
    local name="$1" marker="$2"
    shift 2
    local logf
    logf="$(log_file "$name")"
    printf '\n===== %s starting %s =====\n' "$(date -Is)" "$name" >>"$logf"
    # 9>&-: the daemon must not inherit the stack lock (see `lock` in deploy/local/stack).
    setsid nohup "$@" >>"$logf" 2>&1 </dev/null 9>&- &
    printf '%s\n%s\n' "$!" "$marker" >"$(pid_file "$name")"
}

# stop_daemon NAME [TIMEOUT_S]: SIGTERM the process group, SIGKILL after the timeout.
stop_daemon() {
    local name="$1" timeout="${2:-20}" pid
    if ! pid_alive "$name"; then
        rm -f "$(pid_file "$name")"
        return 0
    fi
    pid="$(read_pid "$name")"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name: did not stop within ${timeout}s, sending SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$(pid_file "$name")"
}

# ---- packages -------------------------------------------------------------------------------

# apt_install PKG...: install Debian packages, running apt-get update only when needed.
apt_install() {
    log "installing Debian packages: $*"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        >>"$LOG_DIR/apt.log" 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$LOG_DIR/apt.log" 2>&1 ||
            fail_with_logs "apt-get update failed" "$LOG_DIR/apt.log"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
            >>"$LOG_DIR/apt.log" 2>&1 ||
            fail_with_logs "apt-get install $* failed" "$LOG_DIR/apt.log"
    fi
}

# Run a component script directly: `deploy/local/kafka.sh up|down|status|healthy`.
component_main() { # component-name args...
    local comp="$1" fn
    shift
    fn="${comp//-/_}_${1:-status}"
    declare -F "$fn" >/dev/null || die "usage: $comp.sh up|down|status|healthy"
    "$fn"
}
