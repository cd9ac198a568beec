#!/usr/bin/env bash
# STAC API: stac-fastapi-pgstac (own venv under the cache) on 127.0.0.1:18082, backed by the
# pgstac schema in the PostgreSQL database `stac`. Transactions extension enabled.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STAC_API_VERSION="${EOSTREAM_STAC_API_VERSION:-7.2.0}"
PYPGSTAC_VERSION="${EOSTREAM_PYPGSTAC_VERSION:-0.10.0}"
STAC_VENV="$CACHE/stac-api-$STAC_API_VERSION-pgstac-$PYPGSTAC_VERSION"
STAC_PORT=18082
STAC_HOME="$STATE/stac-api"
STAC_DSN="postgresql://$PG_USER:$PG_PASSWORD@$HOST:$PG_PORT/stac"
# The extensions the server declares and answers. Not `fields` and not `query`: stac-fastapi-pgstac
# 7.2 answers them in ways stac-api-validator reports as errors (fields: application/json bodies,
# `fields: null` taken as none, type/stac_version dropped; query: only its comparison operators),
# and a server should declare only what it conforms to. CQL2 `filter` covers what `query` did.
STAC_EXTENSIONS="sort,filter,pagination,collection_search"
# Bump when the launch settings below change: `stack up` then restarts a server started with the
# old ones.
STAC_LAUNCH_VERSION=2

stac_api_addr() { echo "http://$HOST:$STAC_PORT"; }
stac_api_is_running() { pid_alive stac-api; }
stac_api_logs() { log_file stac-api; }
stac_api_healthy() { http_ok "http://$HOST:$STAC_PORT/_mgmt/ping"; }

stac_api_install() {
    [[ -f "$STAC_VENV/.installed" ]] && return 0
    command -v uv >/dev/null || die "stac-api: uv is needed to create the STAC API venv"
    log "stac-api: installing stac-fastapi-pgstac $STAC_API_VERSION + pypgstac $PYPGSTAC_VERSION (once)"
    rm -rf "$STAC_VENV"
    {
        uv venv -q --python 3.11 "$STAC_VENV" &&
            uv pip install -q --python "$STAC_VENV/bin/python" \
                "stac-fastapi-pgstac[server]==$STAC_API_VERSION" \
                "pypgstac[psycopg]==$PYPGSTAC_VERSION"
    } >>"$LOG_DIR/stac-api-install.log" 2>&1 ||
        fail_with_logs "stac-api: installing into $STAC_VENV failed" "$LOG_DIR/stac-api-install.log"
    touch "$STAC_VENV/.installed"
}

_stac_pgstac_version() {
    PGPASSWORD="$PG_PASSWORD" /usr/lib/postgresql/15/bin/psql -X -qtA -h "$HOST" -p "$PG_PORT" \
        -U "$PG_USER" -d stac -c 'select pgstac.get_version()' 2>/dev/null || true
}

stac_api_migrate() {
    if [[ "$(_stac_pgstac_version)" != "$PYPGSTAC_VERSION" ]]; then
        "$STAC_VENV/bin/pypgstac" migrate --dsn "$STAC_DSN" >>"$(log_file stac-api)" 2>&1 ||
            fail_with_logs "stac-api: pypgstac migrate failed" "$(log_file stac-api)"
    fi
}

stac_api_up() {
    stac_api_install
    if stac_api_is_running &&
        [[ "$(cat "$STAC_HOME/launch-version" 2>/dev/null)" != "$STAC_LAUNCH_VERSION" ]]; then
        up_note "restarting: started with older launch settings"
        stac_api_down
    fi
    if stac_api_is_running; then
        up_note "already running"
    else
        ensure_port_free stac-api "$STAC_PORT"
        mkdir -p "$STAC_HOME"
        stac_api_migrate
        (
            # Its settings also read a `.env` from the working directory: run from the state dir.
            cd "$STAC_HOME"
            export PGHOST="$HOST" PGPORT="$PG_PORT" PGUSER="$PG_USER" PGPASSWORD="$PG_PASSWORD"
            export PGDATABASE=stac
            export ENABLE_TRANSACTIONS_EXTENSIONS=true DB_MIN_CONN_SIZE=1 DB_MAX_CONN_SIZE=5
            export STAC_FASTAPI_TITLE="eostream local STAC API" STAC_FASTAPI_LANDING_ID=eostream-local
            export STAC_FASTAPI_DESCRIPTION="stac-fastapi-pgstac $STAC_API_VERSION, pgstac $PYPGSTAC_VERSION"
            export STAC_FASTAPI_VERSION="$STAC_API_VERSION"
            export ENABLED_EXTENSIONS="$STAC_EXTENSIONS"
            start_daemon stac-api "stac_fastapi.pgstac.app" "$STAC_VENV/bin/uvicorn" \
                stac_fastapi.pgstac.app:create_app --factory \
                --host "$HOST" --port "$STAC_PORT" --workers 1
        )
        echo "$STAC_LAUNCH_VERSION" >"$STAC_HOME/launch-version"
        up_note "started"
    fi
    wait_for_http "${EOSTREAM_STAC_API_TIMEOUT:-60}" stac-api stac-api "http://$HOST:$STAC_PORT/_mgmt/ping"
}

stac_api_down() { stop_daemon stac-api 20; }

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then component_main stac-api "$@"; fi
