#!/usr/bin/env bash
# Apache Kafka (jars from Maven Central, deploy/local/kafka/pom.xml), single KRaft node:
# broker 127.0.0.1:19092, controller 127.0.0.1:19093.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_POM="$LOCAL_DIR/kafka/pom.xml"
KAFKA_LOG4J="$LOCAL_DIR/kafka/log4j2.properties"
KAFKA_VERSION="$(sed -n 's|.*<kafka.version>\(.*\)</kafka.version>.*|\1|p' "$KAFKA_POM")"
KAFKA_LIB="$CACHE/kafka-$KAFKA_VERSION/lib"
KAFKA_PORT=19092
KAFKA_CONTROLLER_PORT=19093
KAFKA_HOME="$STATE/kafka"
KAFKA_DATA="$KAFKA_HOME/data"
KAFKA_PROPS="$KAFKA_HOME/server.properties"

kafka_addr() { echo "$HOST:$KAFKA_PORT"; }
kafka_is_running() { pid_alive kafka; }
kafka_logs() { echo "$(log_file kafka)" "$LOG_DIR/kafka-server.log"; }

kafka_install() {
    [[ -n "$KAFKA_VERSION" ]] || die "kafka: cannot read <kafka.version> from $KAFKA_POM"
    local sum
    sum="$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
    if compgen -G "$KAFKA_LIB/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null &&
        [[ "$(cat "$KAFKA_LIB/.pom.sha256" 2>/dev/null)" == "$sum" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "kafka: Maven (mvn) is needed to fetch the Kafka jars"
    command -v java >/dev/null || die "kafka: Java 17+ is needed to run Kafka"
    log "kafka: fetching Kafka $KAFKA_VERSION jars from Maven Central (once)"
    rm -rf "$KAFKA_LIB"
    mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIB" \
        -DincludeScope=runtime >>"$LOG_DIR/kafka-install.log" 2>&1 ||
        fail_with_logs "kafka: mvn dependency:copy-dependencies failed" "$LOG_DIR/kafka-install.log"
    echo "$sum" >"$KAFKA_LIB/.pom.sha256"
}

_kafka_java() { java -Xms64m -Xmx256m -cp "$KAFKA_LIB/*" "$@"; }

_kafka_configure() {
    mkdir -p "$KAFKA_DATA"
    cat >"$KAFKA_PROPS" <<EOF
# Written by deploy/local/kafka.sh; changes are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=48
log.segment.bytes=67108864
EOF
    if [[ ! -s "$KAFKA_DATA/meta.properties" ]]; then
        if [[ ! -s "$KAFKA_HOME/cluster-id" ]]; then
            _kafka_java kafka.tools.StorageTool random-uuid 2>>"$LOG_DIR/kafka-install.log" \
                | tail -n 1 >"$KAFKA_HOME/cluster-id"
        fi
        _kafka_java kafka.tools.StorageTool format -t "$(cat "$KAFKA_HOME/cluster-id")" \
            -c "$KAFKA_PROPS" >>"$(log_file kafka)" 2>&1 ||
            fail_with_logs "kafka: formatting the KRaft storage failed" "$(log_file kafka)"
    fi
}

# A real metadata round trip through the broker, not just an open port.
kafka_metadata_ok() {
    "$VENV_PY" - "$HOST:$KAFKA_PORT" >/dev/null 2>&1 <<'PY'
import asyncio
import sys

from aiokafka.admin import AIOKafkaAdminClient


async def main() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=5000)
    await admin.start()
    try:
        await admin.list_topics()
        await admin.describe_cluster()
    finally:
        await admin.close()


asyncio.run(asyncio.wait_for(main(), 15))
PY
}

kafka_healthy() { port_open "$KAFKA_PORT" && kafka_metadata_ok; }

kafka_up() {
    need_venv
    kafka_install
    if kafka_is_running; then
        up_note "already running"
    else
        ensure_port_free kafka "$KAFKA_PORT"
        ensure_port_free kafka "$KAFKA_CONTROLLER_PORT"
        _kafka_configure
        start_daemon kafka "kafka.Kafka" java -Xms256m -Xmx512m -XX:+UseG1GC \
            -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
            -Dlog4j2.configurationFile="$KAFKA_LOG4J" -Dkafka.logs.dir="$LOG_DIR" \
            -cp "$KAFKA_LIB/*" kafka.Kafka "$KAFKA_PROPS"
        up_note "started"
    fi
    local timeout="${EOSTREAM_KAFKA_TIMEOUT:-90}"
    EXTRA_LOG="$LOG_DIR/kafka-server.log" wait_for_port "$timeout" kafka kafka "$KAFKA_PORT"
    EXTRA_LOG="$LOG_DIR/kafka-server.log" wait_until "$timeout" kafka kafka kafka_metadata_ok
}

kafka_down() { stop_daemon kafka 60; }

kafka_restart() {
    kafka_down
    kafka_up
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then component_main kafka "$@"; fi
