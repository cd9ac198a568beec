"""`make demo`'s job, end to end on the embedded default: train, gate, promote, discover,
classify, list; then a second run that finds everything done and only does what is new."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def demo(home: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from eostream.runner.cli import main; main()", "demo",
         "--home", str(home), "--data-dir", str(data_dir), "--train-timeout", "600"],
        capture_output=True, text=True, timeout=1100, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def test_demo_runs_the_main_job_and_a_second_run_only_does_what_is_new(
    tmp_path: Path, data_dir: Path
) -> None:
    first = demo(tmp_path / "home", data_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert "no champion yet: asking for a small_cnn" in out
    assert "training started: MLflow run" in out
    assert "model eurosat-landcover v1 is champion" in out
    assert "scene classified: S2A_29RKH_20200219_0_L2A by v1" in out
    assert "Classified scenes (1)" in out
    assert "epoch 3/3" in first.stderr  # progress with rates
    assert (tmp_path / "home" / "mlflow.db").is_file()

    second = demo(tmp_path / "home", data_dir)
    assert second.returncode == 0, second.stdout + second.stderr
    out = second.stdout
    assert "a champion from an earlier run is live: no training needed" in out
    assert "no new scenes" in out
    assert "training started" not in out
    assert "Classified scenes (1)" in out
