"""`eostream up --stack local` as a person runs it: four service processes on the real stack,
registered with Prometheus, all gone after one SIGTERM to the command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# alone: its registry-bridge re-points the stack's one MLflow webhook
# (`eostream-registry-bridge`) to itself, which a neighbour's bridge test is listening on, and
# its services use the stack's shared defaults (results index, model name, Prometheus targets)
pytestmark = [pytest.mark.stack, pytest.mark.alone, pytest.mark.timeout(300)]


async def _topics(bootstrap: str) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_up_stack_local_runs_each_service_as_its_own_process(
    kafka_bootstrap: str, tmp_path: Path, data_dir: Path
) -> None:
    targets_dir = os.environ.get("EOSTREAM_PROMETHEUS_TARGETS_DIR")
    assert targets_dir, "EOSTREAM_PROMETHEUS_TARGETS_DIR is not set (deploy/local/stack env)"
    targets = Path(targets_dir) / "eostream-local.json"
    prefix = f"up{uuid.uuid4().hex[:6]}."
    command = [
        sys.executable, "-c", "from eostream.runner.cli import main; main()",
        "up", "--stack", "local", "--home", str(tmp_path), "--topic-prefix", prefix,
    ]  # fmt: skip
    out = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not targets.exists() and time.monotonic() < deadline:
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            time.sleep(0.5)
        registered = json.loads(targets.read_text())
        jobs = sorted(t["labels"]["job"] for t in registered)
        assert jobs == [
            "eostream-bridge",
            "eostream-inference",
            "eostream-ingest",
            "eostream-trainer",
        ]
        logs = sorted(p.name for p in (tmp_path / "local" / "logs").glob("*.log"))
        assert logs == ["inference.log", "ingest.log", "registry-bridge.log", "trainer.log"]
        children = [
            int(line.split()[0])
            for line in subprocess.run(
                ["ps", "-o", "pid=,ppid=", "--ppid", str(up.pid)],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.splitlines()
        ]
        assert len(children) == 4
        # the deployment's topics live in its namespace on the broker
        assert {f"{prefix}eostream.scenes.discovered", f"{prefix}eostream.models.promoted"} <= (
            asyncio.run(_topics(kafka_bootstrap))
        )
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=120)
        out.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert not [pid for pid in children if _alive(pid)]
    assert not targets.exists()
    text = (tmp_path / "up.log").read_text()
    assert "one process per service" in text and "Ctrl-C stops every service" in text
