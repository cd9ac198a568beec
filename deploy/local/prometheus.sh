#!/usr/bin/env bash
# Prometheus (Debian package) on 127.0.0.1:19090, config rendered from deploy/prometheus/prometheus.yml.
# Scrape targets: drop JSON files into $EOSTREAM_STACK_DIR/prometheus-targets/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROM_BIN=/usr/bin/prometheus
PROM_PORT=19090
PROM_TEMPLATE="$ROOT/deploy/prometheus/prometheus.yml"
PROM_RULES="$ROOT/deploy/prometheus/rules"
PROM_HOME="$STATE/prometheus"
PROM_CONFIG="$PROM_HOME/prometheus.yml"
PROM_TARGETS="$STATE/prometheus-targets"

prometheus_addr() { echo "http://$HOST:$PROM_PORT"; }
prometheus_is_running() { pid_alive prometheus; }
prometheus_logs() { log_file prometheus; }
prometheus_healthy() { http_ok "http://$HOST:$PROM_PORT/-/ready"; }

prometheus_install() {
    [[ -x "$PROM_BIN" ]] || apt_install prometheus
}

# Render the template next to a link to the repo's rules/; returns 0 when the rendered config
# or the rule files changed since the last render.
_prom_render() {
    mkdir -p "$PROM_HOME/data" "$PROM_TARGETS"
    ln -sfn "$PROM_RULES" "$PROM_HOME/rules"
    sed "s|__EOSTREAM_PROMETHEUS_TARGETS_DIR__|$PROM_TARGETS|g" "$PROM_TEMPLATE" >"$PROM_CONFIG"
    if command -v promtool >/dev/null; then
        promtool check config "$PROM_CONFIG" >>"$(log_file prometheus)" 2>&1 ||
            fail_with_logs "prometheus: invalid config rendered from $PROM_TEMPLATE" "$(log_file prometheus)"
    fi
    local sum
    sum="$(cat "$PROM_CONFIG" "$PROM_RULES"/*.yml 2>/dev/null | sha256sum | cut -d' ' -f1)"
    if [[ "$(cat "$PROM_HOME/config.sha256" 2>/dev/null)" == "$sum" ]]; then
        return 1
    fi
    echo "$sum" >"$PROM_HOME/config.sha256"
}

prometheus_up() {
    prometheus_install
    if prometheus_is_running; then
        if _prom_render; then
            curl -fsS -m 10 -X POST "http://$HOST:$PROM_PORT/-/reload" >/dev/null ||
                fail_with_logs "prometheus: config reload failed" "$(log_file prometheus)"
            up_note "already running, config reloaded"
        else
            up_note "already running"
        fi
    else
        ensure_port_free prometheus "$PROM_PORT"
        _prom_render || true
        (
            cd "$PROM_HOME"
            export GOMAXPROCS=2
            start_daemon prometheus "$PROM_BIN" "$PROM_BIN" \
                --config.file="$PROM_CONFIG" \
                --storage.tsdb.path="$PROM_HOME/data" \
                --storage.tsdb.retention.time=2d \
                --web.listen-address="$HOST:$PROM_PORT" \
                --web.enable-lifecycle
        )
        up_note "started"
    fi
    wait_for_http "${EOSTREAM_PROMETHEUS_TIMEOUT:-60}" prometheus prometheus \
        "http://$HOST:$PROM_PORT/-/ready"
}

prometheus_down() { stop_daemon prometheus 30; }

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then component_main prometheus "$@"; fi
