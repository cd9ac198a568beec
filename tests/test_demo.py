"""`make demo`'s job, end to end on the embedded default: train the map recipe, gate, promote,
discover the real Boadella L2A scene, classify it, list it, measure the map against the scene's
hand-made water labels beside NDWI; then serve the printed URLs until Ctrl-C. A second run
(``--exit``, as scripts use it) finds everything done and only does what is new."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

SCENE = "boadella-2020-06-21"
ACCURACY = re.compile(
    r"map accuracy \((?P<precision>fp32|int8) model, as served\), .* "
    r"water IoU (?P<iou>[\d.]+) \(precision (?P<p>[\d.]+), recall (?P<r>[\d.]+)\); "
    r"NDWI > 0 baseline, same pixels: IoU (?P<ndwi>[\d.]+)"
)
#: A recognisable map: the reservoir is water (docs/maps-accuracy.md: 0.73-0.92 at stride 4 with
#: one class a window; 0.891 at stride 32 from the per-pixel map output, 2026-12-07).
MIN_WATER_IOU = 0.6


def command(home: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-c", "from eostream.runner.cli import main; main()", "demo",
        "--home", str(home), "--data-dir", str(data_dir), "--train-timeout", "900", *extra,
    ]  # fmt: skip


class Lines:
    """The demo's stdout, read line by line in a thread while it runs."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: io.TextIOBase) -> None:
        for line in stream:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, process: subprocess.Popen[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            if process.poll() is not None or time.monotonic() > deadline:
                self._thread.join(timeout=5)
                raise AssertionError(f"no {needle!r} in the demo's output:\n{self.text}")
            time.sleep(0.5)
        return self.text

    def join(self) -> str:
        self._thread.join(timeout=30)
        return self.text


def url_of(label: str, out: str) -> str:
    match = re.search(rf"^{re.escape(label)}: (http://\S+)( \(.*\))?$", out, re.MULTILINE)
    assert match, f"no {label} URL in:\n{out}"
    return match.group(1)


def test_demo_maps_the_reservoir_serves_its_urls_until_ctrl_c_and_a_rerun_only_does_what_is_new(
    tmp_path: Path, data_dir: Path
) -> None:
    home = tmp_path / "home"
    # any free port for its MLflow server, not 5000 first: test_embedded_crash may be starting
    # one beside it (`make test`'s parallel workers), and both could take 5000 as free
    env = {**os.environ, "COLUMNS": "200", "EOSTREAM_EMBEDDED_MLFLOW_PORT": "0"}
    env.pop("EOSTREAM_DEMO_EXIT", None)
    process = subprocess.Popen(
        command(home, data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env,
    )  # fmt: skip
    stderr: list[str] = []
    assert process.stderr is not None
    err_thread = threading.Thread(target=lambda: stderr.extend(process.stderr or []), daemon=True)
    err_thread.start()
    out = Lines(process)
    try:
        first = out.wait_for("Serving until Ctrl-C", process, timeout=1200)
        assert "no champion yet: asking for a centre_cnn on ms13" in first
        assert "training started: MLflow run" in first
        assert "model eurosat-landcover v1 is champion" in first
        assert f"scene classified: {SCENE} by v1" in first
        accuracy = ACCURACY.search(first)
        assert accuracy, first
        assert float(accuracy["iou"]) >= MIN_WATER_IOU, accuracy.group(0)
        assert float(accuracy["ndwi"]) > 0.9, "the NDWI baseline of the same run"

        # the URLs it printed answer while it runs
        api, bridge = url_of("inference REST API", first), url_of("registry-bridge REST API", first)
        mlflow = url_of("MLflow UI", first)
        assert httpx.get(f"{mlflow}/health", timeout=30).status_code == 200
        # its MLflow takes no request without the home's account (any local process could
        # register a version and write the tags the bridge reads), as the stack's
        search = f"{mlflow}/api/2.0/mlflow/experiments/search"
        create = f"{mlflow}/api/2.0/mlflow/experiments/create"
        assert httpx.post(create, json={"name": "anyone"}, timeout=30).status_code == 401
        assert httpx.post(search, json={"max_results": 1}, timeout=30).status_code == 401
        assert f"password in {home / 'mlflow-password'}" in first
        account = ("eostream", (home / "mlflow-password").read_text().strip())
        runs = httpx.post(search, json={"max_results": 50}, auth=account, timeout=30).json()
        names = {e["name"] for e in runs["experiments"]}
        assert "eostream-demo-map-accuracy" in names, names  # the accuracy run is in the UI
        [experiment] = [e for e in runs["experiments"] if e["name"] == "eostream-demo-map-accuracy"]
        found = httpx.post(
            f"{mlflow}/api/2.0/mlflow/runs/search",
            json={"experiment_ids": [experiment["experiment_id"]]},
            auth=account,
            timeout=30,
        ).json()
        [measured] = found["runs"]
        params = {p["key"]: p["value"] for p in measured["data"]["params"]}
        # it names the version, the precision and the training run of the model it scored
        assert (params["model_version"], params["precision"]) == ("1", accuracy["precision"])
        assert params["model_run_id"] in first, "the training run the demo printed"
        assert httpx.get(f"{bridge}/readyz", timeout=30).status_code == 200
        results = httpx.get(f"{api}/results", timeout=30).json()
        assert [r["scene_id"] for r in results["results"]] == [SCENE]
        # the figure is the served map's: measured with the file that made it (int8 on a CPU)
        served = httpx.get(f"{api}/results/{SCENE}/item", timeout=30).json()["properties"]
        assert accuracy["precision"] == served["eostream:model_precision"], served
        quicklook = httpx.get(f"{api}/results/{SCENE}/quicklook", timeout=30)
        with Image.open(io.BytesIO(quicklook.content)) as png:
            map_box = tuple(int(v) for v in png.info["map_box"].split(","))
            assert png.width > map_box[2], "the quicklook has its legend"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            rc = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    err_thread.join(timeout=30)
    said = out.join()
    assert rc == 0, said + "".join(stderr)
    assert said.rstrip().splitlines()[-1].startswith("eostream: stopping (signal)"), said
    assert "Traceback" not in "".join(stderr), "".join(stderr)
    assert re.search(r"epoch \d+/12: .* images/s", "".join(stderr))  # progress with rates
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{api}/results", timeout=5)  # served until Ctrl-C, not after

    second = subprocess.run(
        command(home, data_dir, "--exit"), capture_output=True, text=True, timeout=600,
        check=False, env=env,
    )  # fmt: skip
    assert second.returncode == 0, second.stdout + second.stderr
    out2 = second.stdout
    assert "a champion from an earlier run is live: no training needed" in out2
    assert f"{SCENE} was classified by v1 in an earlier run" in out2
    assert "measured in an earlier run" in out2
    assert "training started" not in out2 and "Serving until" not in out2
    assert "Classified scenes (1)" in out2
    again = ACCURACY.search(out2)
    assert again and again.group(0) == accuracy.group(0)
