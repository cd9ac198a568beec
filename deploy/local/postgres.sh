#!/usr/bin/env bash
# PostgreSQL 15 + PostGIS (Debian packages), a private cluster on 127.0.0.1:15432.
# Roles/databases: eostream/eostream (superuser), databases mlflow, results, stac (postgis).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_BIN=/usr/lib/postgresql/15/bin
PG_DATABASES=(mlflow results stac)

postgres_addr() { echo "$HOST:$PG_PORT"; }

# The server runs as the `postgres` OS user (it refuses root). When that user cannot reach the
# state dir (e.g. it lies under root's 0700 home), the cluster lives under /var/lib/eostream,
# keyed by a hash of the state dir, and $STATE/pg is a symlink to it.
_pg_home() {
    if runuser -u postgres -- test -w "$STATE" 2>/dev/null; then
        echo "$STATE/pg"
    else
        echo "/var/lib/eostream/pg-$(printf '%s' "$STATE" | md5sum | cut -c1-10)"
    fi
}

PG_HOME="$(_pg_home)"
PG_DATA="$PG_HOME/data"
PG_SOCK="$PG_HOME/sock"
PG_LOG="$PG_HOME/postgres.log"

_pg_ctl() { runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" "$@"; }
_psql_admin() { # db args... (superuser `postgres` over the private unix socket)
    local db="$1"
    shift
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d "$db" "$@"
}

postgres_install() {
    if [[ ! -x "$PG_BIN/postgres" || ! -f /usr/share/postgresql/15/extension/postgis.control ]]; then
        apt_install postgresql-15 postgresql-15-postgis-3
    fi
}

_pg_init() {
    # A fresh state dir means a fresh cluster, also when the cluster lives outside it.
    if [[ "$PG_HOME" != "$STATE/pg" && ! -L "$STATE/pg" ]]; then
        rm -rf "$PG_HOME"
    fi
    if [[ ! -s "$PG_DATA/PG_VERSION" ]]; then
        rm -rf "$PG_DATA"
        mkdir -p "$PG_DATA" "$PG_SOCK"
        chown -R postgres:postgres "$PG_HOME"
        chmod 700 "$PG_DATA"
        runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 \
            --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 \
            >>"$(log_file postgres)" 2>&1 || fail_with_logs "postgres: initdb failed" "$(log_file postgres)"
        echo "include_if_exists = 'eostream.conf'" >>"$PG_DATA/postgresql.conf"
    fi
    [[ "$PG_HOME" == "$STATE/pg" ]] || ln -sfn "$PG_HOME" "$STATE/pg"
    mkdir -p "$PG_SOCK"
    chown postgres:postgres "$PG_SOCK"
    # Rendered on every start so settings can change without a re-init.
    cat >"$PG_DATA/eostream.conf" <<EOF
# Written by deploy/local/postgres.sh; changes are overwritten.
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
max_connections = 200
shared_buffers = 64MB
work_mem = 8MB
maintenance_work_mem = 64MB
fsync = on
logging_collector = off
log_min_messages = warning
EOF
    chown postgres:postgres "$PG_DATA/eostream.conf"
}

postgres_healthy() {
    "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -d postgres 2>/dev/null &&
        PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -X -qtA -h "$HOST" -p "$PG_PORT" -U "$PG_USER" \
            -d results -c 'select 1' >/dev/null 2>&1
}

_pg_running() { _pg_ctl status >/dev/null 2>&1; }

_pg_record_pid() {
    if [[ -s "$PG_DATA/postmaster.pid" ]]; then
        printf '%s\n%s\n' "$(head -n 1 "$PG_DATA/postmaster.pid")" "postgres" >"$(pid_file postgres)"
    fi
}

_pg_bootstrap_sql() {
    _psql_admin postgres <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN SUPERUSER PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_USER LOGIN SUPERUSER PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SQL
    local db
    for db in "${PG_DATABASES[@]}"; do
        echo "SELECT 'CREATE DATABASE $db OWNER $PG_USER' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db')\\gexec" |
            _psql_admin postgres
    done
    _psql_admin stac -c 'CREATE EXTENSION IF NOT EXISTS postgis'
}

postgres_up() {
    postgres_install
    if _pg_running; then
        _pg_record_pid
        up_note "already running"
    else
        ensure_port_free postgres "$PG_PORT"
        _pg_init
        setsid -w runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start \
            >>"$(log_file postgres)" 2>&1 9>&- ||
            fail_with_logs "postgres: pg_ctl start failed" "$(log_file postgres)" "$PG_LOG"
        _pg_record_pid
        up_note "started"
    fi
    EXTRA_LOG="$PG_LOG" wait_until "${EOSTREAM_PG_TIMEOUT:-60}" postgres "" \
        "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -d postgres
    if [[ "$UP_NOTE" == started ]] || ! postgres_healthy; then
        _pg_bootstrap_sql >>"$(log_file postgres)" 2>&1 ||
            fail_with_logs "postgres: creating role/databases failed" "$(log_file postgres)" "$PG_LOG"
    fi
    postgres_healthy || fail_with_logs "postgres: cannot log in as $PG_USER" "$(log_file postgres)" "$PG_LOG"
}

postgres_down() {
    if [[ -s "$PG_DATA/PG_VERSION" ]] && _pg_running; then
        _pg_ctl stop -m fast -w -t 60 >>"$(log_file postgres)" 2>&1 || true
    fi
    rm -f "$(pid_file postgres)"
}

postgres_is_running() { _pg_running; }

postgres_logs() { echo "$(log_file postgres)" "$PG_LOG"; }

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then component_main postgres "$@"; fi
