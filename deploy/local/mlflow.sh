#!/usr/bin/env bash
# MLflow tracking server (from the workspace venv) on 127.0.0.1:15000, with MLflow's
# authentication app (basic auth): no request without an account, none for anonymous writes.
# Backend store: PostgreSQL database `mlflow`; artifacts: proxied to MinIO s3://mlflow/.
# Auth store: sqlite $STATE/mlflow/basic_auth.db. Accounts (passwords made once, 0600, in
# $STATE/mlflow/auth/): eostream-admin (operators, tests), eostream-trainer, eostream-bridge;
# made by deploy/mlflow/init_auth.py on `up`. `stack env` exports them.
#
# A second instance beside the stack's (e.g. to try a change) needs its own state dir, port,
# database and bucket: EOSTREAM_STACK_DIR, EOSTREAM_MLFLOW_PORT, EOSTREAM_MLFLOW_DB (created
# when missing), EOSTREAM_MLFLOW_ARTIFACTS (an existing bucket or folder).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MLFLOW_PORT="${EOSTREAM_MLFLOW_PORT:-15000}"
MLFLOW_DB="${EOSTREAM_MLFLOW_DB:-mlflow}"
MLFLOW_ARTIFACTS="${EOSTREAM_MLFLOW_ARTIFACTS:-s3://mlflow/}"
MLFLOW_HOME="$STATE/mlflow"
MLFLOW_AUTH_DIR="$MLFLOW_HOME/auth"
MLFLOW_BIN="$ROOT/.venv/bin/mlflow"
# Account names; their passwords live in $MLFLOW_AUTH_DIR/<role>-password.
MLFLOW_ADMIN_USER=eostream-admin
MLFLOW_TRAINER_USER=eostream-trainer
MLFLOW_BRIDGE_USER=eostream-bridge
# Bump when the server's launch settings below change: `stack up` then restarts a server started
# with the old ones (its PID alone says nothing about how it was started).
# 3: the authentication app (basic-auth) and the eostream accounts.
# 4: the tracking store's URI in the environment, not on the command line (ps shows that).
MLFLOW_LAUNCH_VERSION=4

mlflow_addr() { echo "http://$HOST:$MLFLOW_PORT"; }
mlflow_is_running() { pid_alive mlflow; }
mlflow_logs() { log_file mlflow; }
mlflow_healthy() { http_ok "http://$HOST:$MLFLOW_PORT/health"; }

# mlflow_secret NAME: a secret of the server (an account's password, a key), made once.
mlflow_secret() {
    local f="$MLFLOW_AUTH_DIR/$1"
    if [[ ! -s "$f" ]]; then
        mkdir -p "$MLFLOW_AUTH_DIR"
        chmod 700 "$MLFLOW_AUTH_DIR"
        (umask 077 && "$VENV_PY" -c 'import secrets; print(secrets.token_urlsafe(24))' >"$f")
    fi
    cat "$f"
}

# The credentials clients use: `stack env` prints them, init_auth.py reads them.
mlflow_credentials_env() {
    printf '%s\n' \
        "MLFLOW_TRACKING_USERNAME=$MLFLOW_ADMIN_USER" \
        "MLFLOW_TRACKING_PASSWORD=$(mlflow_secret admin-password)" \
        "EOSTREAM_MLFLOW_TRAINER_USERNAME=$MLFLOW_TRAINER_USER" \
        "EOSTREAM_MLFLOW_TRAINER_PASSWORD=$(mlflow_secret trainer-password)" \
        "EOSTREAM_MLFLOW_BRIDGE_USERNAME=$MLFLOW_BRIDGE_USER" \
        "EOSTREAM_MLFLOW_BRIDGE_PASSWORD=$(mlflow_secret bridge-password)"
}

# Has this state dir an authenticated MLflow (so `stack env` prints its credentials)?
mlflow_has_auth() { [[ -s "$MLFLOW_AUTH_DIR/admin-password" ]]; }

_mlflow_ensure_database() {
    [[ "$MLFLOW_DB" == mlflow ]] && return 0 # made by postgres.sh
    PGPASSWORD="$PG_PASSWORD" psql -q -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres \
        -v ON_ERROR_STOP=1 >/dev/null <<SQL || die "mlflow: cannot create database $MLFLOW_DB"
SELECT 'CREATE DATABASE $MLFLOW_DB OWNER $PG_USER'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$MLFLOW_DB')\\gexec
SQL
}

# The eostream accounts (idempotent): after a (re)start, or when the last try failed.
_mlflow_init_auth() {
    [[ "$(cat "$MLFLOW_AUTH_DIR/accounts" 2>/dev/null)" == "$MLFLOW_LAUNCH_VERSION" ]] && return 0
    local out
    if ! out="$(
        set -a
        # shellcheck disable=SC1090
        source <(mlflow_credentials_env)
        set +a
        EOSTREAM_MLFLOW_TIMEOUT="${EOSTREAM_MLFLOW_TIMEOUT:-120}" MLFLOW_DISABLE_TELEMETRY=true \
            "$VENV_PY" "$ROOT/deploy/mlflow/init_auth.py" "$(mlflow_addr)" 2>&1
    )"; then
        printf '%s\n' "$out" >>"$(log_file mlflow)"
        die "mlflow: creating the accounts failed: ${out##*$'\n'}"
    fi
    printf '%s\n' "$out" >>"$(log_file mlflow)"
    echo "$MLFLOW_LAUNCH_VERSION" >"$MLFLOW_AUTH_DIR/accounts"
}

mlflow_install() {
    need_venv
    [[ -x "$MLFLOW_BIN" ]] || die "mlflow: $MLFLOW_BIN missing: mlflow must be in the workspace venv"
    "$VENV_PY" -c 'import boto3, psycopg, flask_wtf' 2>/dev/null ||
        die "mlflow: the workspace venv lacks boto3, psycopg or flask-wtf (S3 artifacts, PostgreSQL backend, mlflow[auth])"
}

mlflow_up() {
    mlflow_install
    if mlflow_is_running &&
        [[ "$(cat "$MLFLOW_HOME/launch-version" 2>/dev/null)" != "$MLFLOW_LAUNCH_VERSION" ]]; then
        up_note "restarting: started with older launch settings"
        mlflow_down
    fi
    if mlflow_is_running; then
        up_note "already running"
    else
        ensure_port_free mlflow "$MLFLOW_PORT"
        mkdir -p "$MLFLOW_HOME"
        chmod 700 "$MLFLOW_HOME" # the auth store holds password hashes
        _mlflow_ensure_database
        rm -f "$MLFLOW_AUTH_DIR/accounts"
        # Webhook secrets are encrypted with this key; keep it stable across restarts.
        if [[ ! -s "$MLFLOW_HOME/webhook-secret-key" ]]; then
            "$VENV_PY" -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())' \
                >"$MLFLOW_HOME/webhook-secret-key"
            chmod 600 "$MLFLOW_HOME/webhook-secret-key"
        fi
        (
            cd "$MLFLOW_HOME"
            export MLFLOW_S3_ENDPOINT_URL="http://$HOST:19000"
            export AWS_ACCESS_KEY_ID="$S3_USER" AWS_SECRET_ACCESS_KEY="$S3_PASSWORD"
            export AWS_DEFAULT_REGION=us-east-1
            export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
            # The job runner (GenAI scorers/evaluation) forks ~8 huey processes (~450 MB): off.
            export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
            # Local webhooks: plain http to services on 127.0.0.1.
            export MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true
            # MLflow caches the webhook list (60 s by default): a bridge that re-registers its
            # webhook on a new port would get no event for a minute. Local bridges come and go
            # (every test starts one), so the stack reads the list afresh each second.
            export MLFLOW_WEBHOOK_CACHE_TTL=1
            MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY="$(cat "$MLFLOW_HOME/webhook-secret-key")"
            export MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY
            # The authentication app (deploy/mlflow/server.sh writes its settings): auth store in
            # sqlite beside the state, the admin made on the first start.
            export MLFLOW_BIN MLFLOW_AUTH_CONFIG_PATH="$MLFLOW_HOME/basic_auth.ini"
            export MLFLOW_AUTH_DATABASE_URI="sqlite:///$MLFLOW_HOME/basic_auth.db"
            export MLFLOW_AUTH_ADMIN_USERNAME="$MLFLOW_ADMIN_USER"
            MLFLOW_AUTH_ADMIN_PASSWORD="$(mlflow_secret admin-password)"
            MLFLOW_FLASK_SERVER_SECRET_KEY="$(mlflow_secret flask-secret-key)"
            export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
            # The tracking store through the environment, which `mlflow server` reads: as
            # --backend-store-uri its password would show in the process list.
            export MLFLOW_BACKEND_STORE_URI="postgresql+psycopg://$PG_USER:$PG_PASSWORD@$HOST:$PG_PORT/$MLFLOW_DB"
            start_daemon mlflow "mlflow server" "$ROOT/deploy/mlflow/server.sh" \
                --host "$HOST" --port "$MLFLOW_PORT" --workers 1 \
                --artifacts-destination "$MLFLOW_ARTIFACTS" --serve-artifacts \
                --allowed-hosts "127.0.0.1,127.0.0.1:*,localhost,localhost:*"
        )
        echo "$MLFLOW_LAUNCH_VERSION" >"$MLFLOW_HOME/launch-version"
        up_note "started"
    fi
    wait_for_http "${EOSTREAM_MLFLOW_TIMEOUT:-120}" mlflow mlflow "http://$HOST:$MLFLOW_PORT/health"
    _mlflow_init_auth
}

mlflow_down() { stop_daemon mlflow 30; }

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then component_main mlflow "$@"; fi
