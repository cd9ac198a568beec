"""`eostream up` SIGKILLed while the real 29RKH scene is being classified, then started again:
the scene ends with exactly one result and one SceneClassified event (issue 20, ADR 0014).

Before the durable bus, ingest's "published" mark outlived the in-memory record: the restarted
system called the scene a duplicate and never classified it.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from eostream.inference import testing
from eostream.shared import topics
from eostream.shared.bus.sqlite_log import SqliteLog
from eostream.shared.codec import decode
from eostream.shared.embedded import BUS_FILE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SCENE = "S2A_29RKH_20200219_0_L2A"
#: inference logs this as the 100 m demo scene's classification begins
STARTED = "classifying a 100 m scene at its own resolution"
#: ... and this as it ends (a model file is named by its card's name and digest: ModelInfo.of_file)
DONE = f"classified {SCENE} with crash-test file-"
EOSTREAM = [sys.executable, "-u", "-c", "from eostream.runner.cli import main; main()"]
SERVICE_PREFIXES = ("INGEST_", "TRAINER_", "BRIDGE_", "INFERENCE_")


class Up:
    """``eostream up`` as a subprocess; its output lines, read as they come."""

    def __init__(self, home: Path, data_dir: Path, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        up = [*EOSTREAM, "up", "--home", str(home), "--data-dir", str(data_dir)]
        # --mlflow-port 0: any free port, not 5000 first (test_demo may be starting a server
        # beside this one on `make test`'s parallel workers, and both could take 5000 as free)
        self.process = subprocess.Popen(
            [*up, "--mlflow-port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def wait_for(self, text: str, timeout: float = 600) -> str:
        """The first line containing ``text`` (read already, or to come); fails if the process
        ends first."""
        for seen in self.lines:
            if text in seen:
                return seen
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._new.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"eostream up ended before {text!r}:\n" + self.output())
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} within {timeout:.0f}s:\n" + self.output())

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no handler runs, nothing is flushed or committed
        self.process.wait(timeout=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def scene_events(home: Path, topic: str) -> list[str]:
    log = SqliteLog(home / BUS_FILE)
    try:
        return [str(getattr(decode(r.message), "item_id", "")) for r in log.read(topic)]
    finally:
        log.close()


def committed(home: Path, group: str, topic: str) -> tuple[int, int]:
    log = SqliteLog(home / BUS_FILE)
    try:
        return log.committed(group, topic), log.end(topic)
    finally:
        log.close()


def test_a_sigkill_mid_classification_loses_nothing_and_repeats_nothing(
    tmp_path: Path, data_dir: Path
) -> None:
    card = testing.model_card("rgb", level="L2A", name="crash-test")
    model = tmp_path / "model.onnx"
    model.write_bytes(testing.build_small_cnn(card, seed=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_PREFIXES)}
    env.update(
        {
            # a model live from the start: no training, the scene is classified at once
            "INFERENCE_INITIAL_MODEL_URI": model.as_uri(),
            "INFERENCE_INITIAL_MODEL_SHA256": hashlib.sha256(model.read_bytes()).hexdigest(),
            "INFERENCE_INTRA_OP_THREADS": "1",
            "COLUMNS": "200",
        }
    )
    home = tmp_path / "home"

    first = Up(home, data_dir, env)
    try:
        first.wait_for(STARTED)
    finally:
        first.kill()
    # The kill landed mid-classification: announced, not classified, not committed.
    assert DONE not in first.output()
    assert scene_events(home, topics.SCENES_DISCOVERED) == [SCENE]
    assert scene_events(home, topics.SCENES_CLASSIFIED) == []
    assert committed(home, "inference-scenes", topics.SCENES_DISCOVERED) == (0, 1)

    second = Up(home, data_dir, env)
    try:
        api = re.sub(r".*inference REST API: ", "", second.wait_for("inference REST API: "))
        second.wait_for(DONE)  # the uncommitted record, delivered again
        second.wait_for(f"scene classified: {SCENE}")  # the embedded observer heard of it
        found = httpx.get(f"{api.strip()}/results", params={"limit": 10}, timeout=30).json()
    finally:
        second.stop()
    assert [r["scene_id"] for r in found["results"]] == [SCENE]
    assert found["total"] == 1
    assert scene_events(home, topics.SCENES_DISCOVERED) == [SCENE]  # not announced again
    assert scene_events(home, topics.SCENES_CLASSIFIED) == [SCENE]  # classified once
    assert committed(home, "inference-scenes", topics.SCENES_DISCOVERED) == (1, 1)
