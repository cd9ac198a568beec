#!/usr/bin/env bash
# MLflow tracking server (from the workspace venv) on 127.0.0.1:15000.
# Backend store: PostgreSQL database `mlflow`; artifacts: proxied to MinIO s3://mlflow/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MLFLOW_PORT=15000
MLFLOW_HOME="$STATE/mlflow"
MLFLOW_BIN="$ROOT/.venv/bin/mlflow"
# Bump when the server's launch settings below change: `stack up` then restarts a server started
# with the old ones (its PID alone says nothing about how it was started).
MLFLOW_LAUNCH_VERSION=2

mlflow_addr() { echo "http://$HOST:$MLFLOW_PORT"; }
mlflow_is_running() { pid_alive mlflow; }
mlflow_logs() { log_file mlflow; }
mlflow_healthy() { http_ok "http://$HOST:$MLFLOW_PORT/health"; }

mlflow_install() {
    need_venv
    [[ -x "$MLFLOW_BIN" ]] || die "mlflow: $MLFLOW_BIN missing: mlflow must be in the workspace venv"
    "$VENV_PY" -c 'import boto3, psycopg' 2>/dev/null ||
        die "mlflow: the workspace venv lacks boto3 or psycopg (S3 artifacts / PostgreSQL backend)"
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
            start_daemon mlflow "mlflow server" "$MLFLOW_BIN" server \
                --host "$HOST" --port "$MLFLOW_PORT" --workers 1 \
                --backend-store-uri "postgresql+psycopg://$PG_USER:$PG_PASSWORD@$HOST:$PG_PORT/mlflow" \
                --artifacts-destination s3://mlflow/ --serve-artifacts \
                --allowed-hosts "127.0.0.1,127.0.0.1:*,localhost,localhost:*"
        )
        echo "$MLFLOW_LAUNCH_VERSION" >"$MLFLOW_HOME/launch-version"
        up_note "started"
    fi
    wait_for_http "${EOSTREAM_MLFLOW_TIMEOUT:-120}" mlflow mlflow "http://$HOST:$MLFLOW_PORT/health"
}

mlflow_down() { stop_daemon mlflow 30; }

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then component_main mlflow "$@"; fi
