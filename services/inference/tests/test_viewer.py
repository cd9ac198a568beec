"""The map page at the service root: browsers get the page, API clients the JSON landing page;
the page's scripts (MapLibre GL from npm, as an ES module) are served by the service."""

from __future__ import annotations

import httpx

from eostream.inference.api.viewer import DEFAULT_DIR, MAPLIBRE

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def test_root_is_the_page_for_browsers_and_json_for_clients(
    client: httpx.AsyncClient,
) -> None:
    assert (DEFAULT_DIR / MAPLIBRE / "maplibre-gl.mjs").is_file(), "run `make viewer` (npm ci)"
    page = await client.get("/", headers={"Accept": BROWSER})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="viewer/static/viewer.js"' in page.text
    for accept in ("application/json", "*/*", "application/json, text/html"):
        landing = await client.get("/", headers={"Accept": accept})
        assert landing.status_code == 200, accept
        assert landing.headers["content-type"] == "application/json", accept
        assert any(link["rel"] == "service-desc" for link in landing.json()["links"])
    assert (await client.get("/?f=html")).headers["content-type"].startswith("text/html")
    assert (await client.get("/?f=json", headers={"Accept": BROWSER})).json()["links"]


async def test_the_page_scripts_are_served_as_javascript(client: httpx.AsyncClient) -> None:
    for path in (
        "/viewer/static/viewer.js",
        "/viewer/maplibre/maplibre-gl.mjs",
        "/viewer/maplibre/maplibre-gl-worker.mjs",
    ):
        r = await client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("text/javascript"), path
    assert (await client.get("/viewer/maplibre/maplibre-gl.css")).status_code == 200
