"""The CLI: registered under eostream.commands, `serve` runs the API until SIGTERM, a missing
API key is one clear configuration error, and `classify` leaves the service's deployments alone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from eostream.inference import reference
from eostream.inference.cli import app, item_hrefs
from eostream.inference.settings import InferenceSettings
from eostream.inference.wiring import build_service
from eostream.shared.errors import ConfigError
from eostream.shared.events import ModelPromoted


def test_registered_as_an_eostream_command() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="eostream.commands")}
    assert names.get("inference") == "eostream.inference.cli:app"


def test_missing_api_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERENCE_API_KEY", raising=False)
    monkeypatch.setenv("INFERENCE_BUS", "memory")
    result = CliRunner().invoke(app, ["serve"])
    assert isinstance(result.exception, ConfigError)
    assert "INFERENCE_API_KEY is not set" in str(result.exception)


def test_serve_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        INFERENCE_API_KEY="k",
        INFERENCE_BUS="memory",
        INFERENCE_HTTP_PORT=str(port),
        INFERENCE_LOCAL_STORE_ROOT=str(tmp_path / "o"),
        INFERENCE_RESULTS_DB=f"sqlite:///{tmp_path}/r.db",
        INFERENCE_INTRA_OP_THREADS="1",
    )
    code = "from eostream.inference.cli import app; app(['serve'])"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                live = httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "serve did not answer within 60 s"
                time.sleep(0.2)
        assert live.json()["service"] == "inference"
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 503 and "no model" in ready.json()["detail"]
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]


def test_classify_into_the_service_index_leaves_its_last_live_model(
    monkeypatch: pytest.MonkeyPatch,
    settings: InferenceSettings,
    make_model: Callable[..., ModelPromoted],
    boadella_item: Callable[[str], Path],
) -> None:
    """A one-off `classify` (no --stac-out) writes its result into the configured index, but a
    service restarted on that index (no INFERENCE_MODEL_NAME) reloads its own model, not the
    CLI's."""
    service = build_service(settings, consume=False)
    try:
        service.deployment.deploy(make_model("1"))  # the service's model went live
    finally:
        service.results.close()

    adhoc = make_model("7", name="adhoc")
    for name in (
        "INFERENCE_MODEL_NAME",
        "INFERENCE_MODEL_ALIAS",
        "INFERENCE_INITIAL_MODEL_URI",
        "INFERENCE_KAFKA__BOOTSTRAP_SERVERS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INFERENCE_BUS", "kafka")  # the service's; classify uses no bus at all
    monkeypatch.setenv("INFERENCE_STORE", "local")
    monkeypatch.setenv("INFERENCE_LOCAL_STORE_ROOT", str(settings.local_store_root))
    monkeypatch.setenv("INFERENCE_RESULTS_DB", settings.results_db)
    monkeypatch.setenv("INFERENCE_INTRA_OP_THREADS", "1")
    href = str(boadella_item("2020-06-21"))
    result = CliRunner().invoke(app, ["classify", href, "--model", adhoc.artifact_uri])
    assert result.exit_code == 0, result.output
    # another file of the same card's name: another model, not "already classified" (both were
    # "cli v0", and the second run answered with the first one's result)
    other = make_model("8", name="adhoc")
    result = CliRunner().invoke(app, ["classify", href, "--model", other.artifact_uri])
    assert result.exit_code == 0, result.output

    restarted = build_service(settings, consume=False)
    try:
        for model in (adhoc, other):  # the CLI's results are kept, named by card and file
            version = f"file-{model.sha256[:12]}"
            record = restarted.results.get("boadella-2020-06-21", version, model_name="adhoc")
            assert record is not None, version
            properties = record.item["properties"]
            assert properties["eostream:model_sha256"] == model.sha256
            assert properties["eostream:model_version"] == version
        restarted.deployment.load_initial()
        live = restarted.deployment.current
        assert live is not None
        assert (live.info.name, live.info.version) == ("eurosat", "1")
        assert "adhoc" not in {d["name"] for d in restarted.results.deployments(50)}
    finally:
        restarted.results.close()


def test_a_stac_out_it_cannot_write_is_refused_before_any_work(
    tmp_path: Path, make_model: Callable[..., ModelPromoted], boadella_item: Callable[[str], Path]
) -> None:
    """The maps were made in a scratch store, then the catalog's folder failed: two tracebacks
    and every finished map thrown away. Now one line, before a scene is read."""
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    href = str(boadella_item("2020-06-21"))
    model = make_model("1").artifact_uri
    result = CliRunner().invoke(
        app, ["classify", href, "--model", model, "--stac-out", str(blocked / "out")]
    )
    assert result.exit_code == 2, result.output
    assert "cannot write to" in result.output and "Traceback" not in result.output
    assert "valid_pixels" not in result.output  # no scene was classified first
    # and a run that fails later (here: no such model) leaves no folder behind
    later = tmp_path / "new" / "catalog"
    args = ["classify", href, "--model", str(tmp_path / "none.onnx"), "--stac-out", str(later)]
    assert CliRunner().invoke(app, args).exit_code != 0
    assert not (tmp_path / "new").exists()


def test_a_reference_sets_catalogue_is_classified_scene_by_scene(
    data_dir: Path, tmp_path: Path
) -> None:
    """``classify`` on a reference set's catalogue classified its scenes, then failed on its
    first label item (no bands) and wrote nothing; label items are left out."""
    labels = reference.build_boadella(data_dir, tmp_path / "ref", ("2020-06-21", "2020-09-14"))
    catalog = next(p for p in (labels.parents[1] / "catalog.json", labels) if p.is_file())
    hrefs = item_hrefs(str(catalog))
    assert sorted(Path(h).parent.name for h in hrefs) == [
        "boadella-2020-06-21",
        "boadella-2020-09-14",
    ]
    assert all(json.loads(Path(h).read_text())["assets"] for h in hrefs)
