"""``eostream.client`` against real HTTP servers on 127.0.0.1 that record what they were sent:
the API key reaches the client's own API and no other server, every failure (a body that is not
the JSON expected included) is one ApiError, and an id is always one path segment."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eostream.client import ApiError, BridgeClient, InferenceClient

KEY = "the-key-of-this-test-000000"

#: what each path answers (status, content type, body); anything else: 200 with some bytes
ANSWERS: dict[str, tuple[int, str, bytes]] = {
    "/api/results/login": (200, "text/html", b"<html>sign in to the proxy</html>"),
    "/api/results/odd": (200, "application/json", b'{"unexpected": true}'),
    "/api/results/odd/item": (200, "application/json", b"[1, 2]"),
    "/api/jobs/odd/results": (200, "application/json", b'{"status": "successful"}'),
    "/api/models": (200, "application/json", b"[]"),
    "/api/models/odd": (200, "application/json", b'{"versions": []}'),
    "/api/stac/search": (200, "application/json", b'{"type": "FeatureCollection"}'),
}


class Recorder(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str | None]] = []  # (raw path, X-API-Key)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.path, self.headers.get("X-API-Key")))
        status, kind, body = ANSWERS.get(self.path.split("?")[0], (200, "image/png", b"png"))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def servers() -> Iterator[tuple[Recorder, Recorder]]:
    """The service, and another server (another port: another origin)."""
    both = (Recorder(), Recorder())
    threads = [threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True) for s in both]
    for thread in threads:
        thread.start()
    try:
        yield both
    finally:
        for server in both:
            server.shutdown()
            server.server_close()


def test_the_api_key_goes_to_the_service_and_never_to_another_server(
    servers: tuple[Recorder, Recorder],
) -> None:
    service, elsewhere = servers
    with InferenceClient(f"{service.url}/api", api_key=KEY) as api:
        api.download("/results/a/files/m/1/cog.tif")  # a path of this API
        api.download(f"{service.url}/api/results/a/files/m/1/map.png")  # a URL under it
        api.download(f"{elsewhere.url}/api/results/a/files/m/1/map.png")  # a href elsewhere
        api.download(f"{service.url}/other/map.png")  # same server, outside the API
        api.download(f"{service.url}/api-other/map.png")  # a look-alike prefix
    assert [key for _, key in service.seen] == [KEY, KEY, None, None]
    assert elsewhere.seen == [("/api/results/a/files/m/1/map.png", None)]


def test_an_answer_that_is_not_the_json_expected_is_one_api_error(
    servers: tuple[Recorder, Recorder],
) -> None:
    service, _ = servers
    with InferenceClient(f"{service.url}/api") as api, BridgeClient(f"{service.url}/api") as bridge:
        calls: dict[str, Callable[[], object]] = {
            "not JSON": lambda: api.result("login"),
            "a missing field": lambda: api.result("odd"),
            "a list for an object": lambda: api.item("odd"),
            "no result in a job's results": lambda: api.job_result("odd"),
            "a list for the models": api.models,
            "no features": api.stac_search,
            "an object for the versions": lambda: bridge.versions("odd"),
        }
        for what, call in calls.items():
            with pytest.raises(ApiError) as caught:
                call()
            assert (caught.value.status, caught.value.code) == (200, "invalid_response"), what


def test_an_id_is_one_path_segment(servers: tuple[Recorder, Recorder]) -> None:
    service, _ = servers
    with InferenceClient(service.url) as api, BridgeClient(service.url) as bridge:
        calls: list[Callable[[], object]] = [
            lambda: api.result("a/statistics"),
            lambda: api.statistics("../models"),
            lambda: api.item(".."),
            lambda: api.job("x?y#z"),
            lambda: bridge.versions("a/promote"),
        ]
        for call in calls:
            with pytest.raises(ApiError):  # the recorder answers bytes, not JSON
                call()
        api.quicklook("a/b")
    assert [path for path, _ in service.seen] == [
        "/results/a%2Fstatistics",
        "/results/..%2Fmodels/statistics",
        "/results/%2E%2E/item",
        "/jobs/x%3Fy%23z",
        "/models/a%2Fpromote",
        "/results/a%2Fb/quicklook",
    ]
