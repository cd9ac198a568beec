#!/usr/bin/env bash
# MinIO (built from the Go module proxy) on 127.0.0.1:19000 (S3 API) and :19001 (console).
# Buckets: mlflow, eostream, models.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MINIO_VERSION="${EOSTREAM_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
MINIO_DIR="$CACHE/minio-$MINIO_VERSION"
MINIO_BIN="$MINIO_DIR/minio"
MINIO_PORT=19000
MINIO_CONSOLE_PORT=19001
MINIO_DATA="$STATE/minio-data"
MINIO_BUCKETS=(mlflow eostream models)

minio_addr() { echo "$HOST:$MINIO_PORT"; }
minio_is_running() { pid_alive minio; }
minio_logs() { log_file minio; }

minio_install() {
    [[ -x "$MINIO_BIN" ]] && return 0
    mkdir -p "$MINIO_DIR"
    command -v go >/dev/null || die "minio: the Go toolchain is needed to build MinIO (go not on PATH)"
    log "minio: building github.com/minio/minio@$MINIO_VERSION (takes ~4 min, once)"
    local tmpbin="$MINIO_DIR/.build"
    rm -rf "$tmpbin"
    GOBIN="$tmpbin" go install "github.com/minio/minio@$MINIO_VERSION" \
        >>"$LOG_DIR/minio-build.log" 2>&1 ||
        fail_with_logs "minio: go install failed" "$LOG_DIR/minio-build.log"
    mv "$tmpbin/minio" "$MINIO_BIN"
    rm -rf "$tmpbin"
}

minio_healthy() {
    http_ok "http://$HOST:$MINIO_PORT/minio/health/ready"
}

_minio_buckets() {
    "$VENV_PY" - "$HOST:$MINIO_PORT" "$S3_USER" "$S3_PASSWORD" "${MINIO_BUCKETS[@]}" <<'PY'
import sys
from minio import Minio

endpoint, user, password, *buckets = sys.argv[1:]
client = Minio(endpoint, access_key=user, secret_key=password, secure=False)
for bucket in buckets:
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
PY
}

minio_up() {
    need_venv
    minio_install
    if minio_is_running; then
        up_note "already running"
    else
        ensure_port_free minio "$MINIO_PORT"
        ensure_port_free minio "$MINIO_CONSOLE_PORT"
        mkdir -p "$MINIO_DATA"
        (
            export MINIO_ROOT_USER="$S3_USER" MINIO_ROOT_PASSWORD="$S3_PASSWORD"
            export MINIO_PROMETHEUS_AUTH_TYPE=public MINIO_UPDATE=off MINIO_BROWSER_REDIRECT=off
            export GOMAXPROCS=2
            start_daemon minio "$MINIO_BIN server" "$MINIO_BIN" server "$MINIO_DATA" --quiet \
                --address "$HOST:$MINIO_PORT" --console-address "$HOST:$MINIO_CONSOLE_PORT"
        )
        up_note "started"
    fi
    wait_for_http "${EOSTREAM_MINIO_TIMEOUT:-60}" minio minio "http://$HOST:$MINIO_PORT/minio/health/ready"
    _minio_buckets >>"$(log_file minio)" 2>&1 ||
        fail_with_logs "minio: creating buckets ${MINIO_BUCKETS[*]} failed" "$(log_file minio)"
}

minio_down() { stop_daemon minio 20; }

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then component_main minio "$@"; fi
