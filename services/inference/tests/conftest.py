"""Fixtures: real scenes from EOSTREAM_DATA_DIR, tiny real ONNX models, a started service."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from eostream.inference import testing
from eostream.inference.api.app import create_app
from eostream.inference.service import InferenceService
from eostream.inference.settings import InferenceSettings, SourcesSettings
from eostream.inference.wiring import build_service
from eostream.shared.bus.base import RetryPolicy
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.events import ModelPromoted

API_KEY = "test-key-123"
BOADELLA_BANDS = [
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B11",
    "B12",
]
RKH = "sentinel2_scenes/S2A_29RKH_20200219_0_L2A_cog_downsampled"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    value = os.environ.get("EOSTREAM_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.fail(
            "EOSTREAM_DATA_DIR must point to the shared data folder (e.g. /work/shared/data)"
        )
    return Path(value)


@pytest.fixture
def rkh_item(data_dir: Path, tmp_path: Path) -> Path:
    """The 29RKH item with its asset hrefs rewritten to the local COGs (a copy; data untouched)."""
    out = tmp_path / "S2A_29RKH_20200219_0_L2A.json"
    testing.localise_item(data_dir / RKH / "S2A_29RKH_20200219_0_L2A.json", out)
    return out


@pytest.fixture
def boadella_item(data_dir: Path, tmp_path: Path) -> Callable[[str], Path]:
    def make(date: str = "2020-06-21") -> Path:
        tif = (
            data_dir
            / "sentinel2_scenes/boadella_l2a_sentinelhub/sentinel_2"
            / f"Boadella_{date}.tif"
        )
        item = testing.item_for_raster(
            tif, f"boadella-{date}", BOADELLA_BANDS, level="L2A", when=f"{date}T10:30:00Z"
        )
        out = tmp_path / f"boadella-{date}.json"
        out.write_text(json.dumps(item))
        return out

    return make


@pytest.fixture
def make_model(tmp_path: Path) -> Callable[..., ModelPromoted]:
    """Write a tiny real ONNX model and return the ModelPromoted event that names it."""

    def make(
        version: str = "1",
        band_set: str = "rgb",
        seed: int | None = None,
        name: str = "eurosat",
        data: bytes | None = None,
        **card_kw: Any,
    ) -> ModelPromoted:
        card = testing.model_card(band_set, name=name, **card_kw)
        blob = (
            data
            if data is not None
            else testing.build_onnx(
                card, seed=seed if seed is not None else int(version) if version.isdigit() else 0
            )
        )
        path = tmp_path / "models" / f"{name}-{version}.onnx"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(blob)
        return ModelPromoted(
            name=name,
            version=version,
            alias="champion",
            artifact_uri=path.as_uri(),
            sha256=hashlib.sha256(blob).hexdigest(),
            mlm_item_href=f"file:///models/{name}/{version}/mlm.json",
            run_id=f"run{version}",
        )

    return make


@pytest.fixture
def settings(tmp_path: Path) -> InferenceSettings:
    return InferenceSettings(
        api_key=SecretStr(API_KEY),
        bus="memory",
        store="local",
        local_store_root=tmp_path / "objects",
        results_db=f"sqlite:///{tmp_path}/results.db",
        intra_op_threads=1,
        stride=32,
        model_wait_seconds=5,
        max_upload_bytes=5_000_000,
        allow_coarse_scenes=True,  # most tests classify the 100 m 29RKH tile
        # test HTTP servers on 127.0.0.1 stand for STAC APIs (loopback is refused by default)
        sources=SourcesSettings(allowed_networks=("127.0.0.1/32",)),
        # the tests' models lie in pytest's temporary folders, not in a store the bridge shipped
        model_roots=(tempfile.gettempdir(),),
        _env_file=None,
    )


@pytest.fixture
def bus() -> InMemoryBus:
    return InMemoryBus(service="inference", policy=RetryPolicy(max_retries=0, backoff_seconds=0.01))


@pytest.fixture
async def service(settings: InferenceSettings, bus: InMemoryBus) -> AsyncIterator[InferenceService]:
    svc = build_service(settings, bus=bus)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def client(
    settings: InferenceSettings, service: InferenceService
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, service)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


AUTH = {"X-API-Key": API_KEY}


@pytest.fixture
def own_results_db() -> Iterator[str]:
    """A results index of the test's own: a new database on the stack's PostgreSQL, dropped at
    the end. On the shared one, another test's inference service (a neighbour on `make test`'s
    parallel workers) matched its own 29RKH result to test_subscriptions_stack's
    subscriptions, and its notifier claimed that delivery and dead-lettered it after one
    attempt, under its own settings."""
    import psycopg
    from psycopg import sql

    server = os.environ.get("EOSTREAM_PG_DSN", "").rstrip("/")
    if not server:
        pytest.fail("EOSTREAM_PG_DSN is not set: run `deploy/local/stack up` and export its env")
    name = f"results_own_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


class _Redirect(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        targets = {
            "/to-other-host": "http://127.0.0.2:{port}/item.json",
            "/to-nowhere": "http://127.0.0.3:1/item.json",
            "/band.tif": "http://127.0.0.2:{port}/band.tif",  # a raster asset that redirects
        }
        target = targets.get(self.path.split("?")[0])
        if target is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(302)
        port = self.headers.get("Host", "").rsplit(":", 1)[-1]
        self.send_header("Location", target.format(port=port))
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 whose paths redirect to other hosts (127.0.0.2 on the same
    port, or 127.0.0.3:1 where nothing listens): for the source policy's redirect checks."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
