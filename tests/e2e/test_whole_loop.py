"""The mission as one system: STAC item in, land-cover map out, with a model that improves, on the
real stack, each service its own process. The tests run in file order on one deployment."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from rasterio.io import MemoryFile

from eostream.shared.events import ModelPromoted

from .conftest import System, restart_kafka

pytestmark = [pytest.mark.stack, pytest.mark.alone, pytest.mark.slow, pytest.mark.timeout(1500)]


def test_a_new_stac_item_ends_as_a_classification_queryable_over_rest(
    system: System, first_champion: ModelPromoted
) -> None:
    scene = system.insert()
    result = system.wait(f"a result for {scene}", lambda: system.result(scene), 120)

    assert result["model_name"] == system.model_name
    assert result["model_version"] == first_champion.version
    assert result["run_id"] == first_champion.run_id
    cog = httpx.get(result["links"]["cog"], timeout=30)
    assert cog.status_code == 200
    with MemoryFile(cog.content) as mem, mem.open() as raster:
        labels = raster.read(1)
        assert raster.shape == (1098, 1098) and raster.crs.to_epsg() == 32629
    # every pixel is a class, "uncertain" (254: this deliberately weak model on a desert tile is
    # mostly unsure) or nodata (255)
    decided = (labels < 10) | (labels == 254)
    assert (decided | (labels == 255)).all() and decided.mean() > 0.9
    stats = httpx.get(result["links"]["statistics"], timeout=30).json()
    assert stats["pixels"] == 1098 * 1098
    assert 0.0 <= result["uncertain_share"] <= 1.0  # the result says how unsure it was
    assert httpx.get(result["links"]["quicklook"], timeout=30).headers["content-type"] == (
        "image/png"
    )
    # the result names the scene, the model version and the MLflow run that made it
    item = httpx.get(result["links"]["item"], timeout=30).json()
    rels = {link["rel"] for link in item["links"]}
    assert "derived_from" in rels
    (event,) = [e for e in system.classified() if e.item_id == scene]
    assert (event.model_version, event.run_id) == (first_champion.version, first_champion.run_id)


def test_a_poison_item_and_a_corrupt_raster_are_dead_lettered_and_the_rest_flows(
    system: System, first_champion: ModelPromoted
) -> None:
    # a STAC item ingest cannot use: no processing level anywhere in it
    poison = system.new_item(f"poison-{system.run}")
    poison["id"] = f"poison-{system.run}"
    for key in list(poison["properties"]):
        if key.startswith(("s2:", "processing:", "earthsearch:")) or key in ("constellation",):
            poison["properties"].pop(key)
    # a well-formed item whose red band is a truncated GeoTIFF
    good_red = system.item_template["assets"]["red"]["href"]
    blob = system.store.get_bytes(good_red.removeprefix("s3://eostream/"))
    system.store.put_bytes(f"e2e/{system.run}/corrupt/B04.tif", blob[: len(blob) // 3])
    corrupt = system.new_item(
        f"corrupt-{system.run}", red=system.store.uri(f"e2e/{system.run}/corrupt/B04.tif")
    )
    system.insert(poison)
    system.insert(corrupt)
    after = system.insert()

    system.wait(f"a result for {after}", lambda: system.result(after), 180)

    def letters() -> dict[str | None, str]:
        return {d.original_key: f"{d.service}: {d.reason}" for d in system.dead_letters()}

    found = system.wait(
        "both dead letters",
        lambda: (d := letters()) and {poison["id"], corrupt["id"]} <= set(d) and d,
        120,
    )
    assert found[poison["id"]].startswith("ingest:"), found[poison["id"]]
    assert found[corrupt["id"]].startswith("inference:"), found[corrupt["id"]]
    assert "B04.tif" in found[corrupt["id"]] or "red" in found[corrupt["id"]]
    assert system.result(corrupt["id"]) is None
    for name, process in system.group.processes.items():
        assert process.starts == 1, f"{name} restarted: bad input must not crash a service"


def test_a_better_model_is_trained_gated_promoted_and_swapped_in_while_classifying(
    system: System, first_champion: ModelPromoted
) -> None:
    # 4 epochs on 100 patches a class: ~0.65 on the held-out patches, far above the weak
    # champion plus the 5-point margin
    request = system.request_training(epochs=4, samples_per_class=100, reason="e2e better")
    stop = threading.Event()
    inserted_at: dict[str, float] = {}

    def keep_inserting() -> None:
        while not stop.is_set():
            inserted_at[system.insert()] = time.monotonic()
            stop.wait(3.0)

    feeder = threading.Thread(target=keep_inserting, daemon=True)
    feeder.start()
    try:
        registered = system.wait(
            "the better model's registration",
            lambda: system.registered(request.request_id),
            600,
            every=3.0,
        )
        version = registered[0].version
        system.wait(
            f"the promotion of v{version}",
            lambda: [p for p in system.promoted() if p.version == version],
            240,
        )
        system.wait_for_champion(version, timeout=120)
        swapped_at = time.monotonic()
        time.sleep(10)  # a few more scenes under the new model
    finally:
        stop.set()
        feeder.join(timeout=60)

    scenes = list(inserted_at)
    system.wait_for_results(scenes, 300)
    by_scene: dict[str, set[str]] = defaultdict(set)
    for r in system.results():
        by_scene[r["scene_id"]].add(r["model_version"])
    assert all(len(by_scene[s]) == 1 for s in scenes)  # each scene classified once
    # in the order inference classified them: the first model until the swap, the new one after
    # (one consumer, one scene at a time: the versions never interleave)
    unique = {e.id: e for e in system.classified() if e.item_id in inserted_at}
    done = sorted(unique.values(), key=lambda e: e.time)
    versions = [e.model_version for e in done]
    switch = versions.index(version)
    assert switch > 0, "no scene was classified while the better model was trained and gated"
    assert set(versions[:switch]) == {first_champion.version}
    assert set(versions[switch:]) == {version}
    # every scene that arrived after the swap names the new version
    after = [s for s in scenes if inserted_at[s] > swapped_at]
    assert after and all(by_scene[s] == {version} for s in after)
    # no request failed across the swap
    letters = [d for d in system.dead_letters() if d.original_key in inserted_at]
    assert letters == []
    metrics = httpx.get(f"{system.inference_url}/metrics", timeout=30).text
    # exported from the start at 0 (an alert counts the first failure): still 0
    assert 'eostream_inference_scenes_total{outcome="failed"} 0.0' in metrics
    # what the maps say reaches the real Prometheus, per model version and scene kind (L2A)
    _assert_map_metrics_in_prometheus(system, (first_champion.version, version))


def _prometheus_by_version(system: System, query: str) -> dict[str, float]:
    prometheus = system.stack.prometheus_url
    assert prometheus, "EOSTREAM_PROMETHEUS_URL is not set"
    body = httpx.post(f"{prometheus}/api/v1/query", data={"query": query}, timeout=30).json()
    assert body["status"] == "success", (query, body)
    return {r["metric"]["version"]: float(r["value"][1]) for r in body["data"]["result"]}


def _assert_map_metrics_in_prometheus(system: System, versions: tuple[str, ...]) -> None:
    """Class pixels (uncertain as a class), per-scene mean confidence and uncertain share of
    ``versions`` of this deployment's model are in Prometheus, labelled by version and scene kind;
    each version's class shares sum to 1 and it counted at most the scenes it has results for."""
    model = f'model="{system.model_name}", scene_kind="L2A"'
    results = Counter(r["model_version"] for r in system.results())

    def scenes() -> dict[str, float]:
        found = _prometheus_by_version(
            system,
            f"sum by (version) (eostream_inference_scene_mean_confidence_count{{{model}}})",
        )
        return found if set(versions) <= set(found) else {}

    counted = system.wait("the map metrics of both versions in Prometheus", scenes, 60)
    for v in versions:
        assert 0 < counted[v] <= results[v], (v, counted, results)
    # both per-scene histograms counted the same scenes: compared in one query, at one instant
    # (two queries may straddle a scrape while the last scenes' metrics arrive)
    difference = _prometheus_by_version(
        system,
        f"sum by (version) (eostream_inference_scene_uncertain_share_count{{{model}}})"
        f" - sum by (version) (eostream_inference_scene_mean_confidence_count{{{model}}})",
    )
    assert [difference.get(v) for v in versions] == [0.0 for _ in versions], difference
    pixels = _prometheus_by_version(
        system,
        f'sum by (version) (eostream_inference_class_pixels_total{{{model}, class="uncertain"}})'
        f" >= 0",
    )
    assert set(versions) <= set(pixels)  # "uncertain" is a class of its own
    shares = _prometheus_by_version(
        system,
        f"sum by (version) (sum by (version, class) (eostream_inference_class_pixels_total"
        f"{{{model}}}) / ignoring (class) group_left () sum by (version) "
        f"(eostream_inference_class_pixels_total{{{model}}}))",
    )
    for v in versions:
        assert abs(shares[v] - 1.0) < 1e-6, (v, shares)
    confidence = _prometheus_by_version(
        system,
        f"sum by (version) (eostream_inference_scene_mean_confidence_sum{{{model}}})"
        f" / sum by (version) (eostream_inference_scene_mean_confidence_count{{{model}}})",
    )
    assert all(0.0 < confidence[v] <= 1.0 for v in versions), confidence


def _dashboards_module() -> ModuleType:
    """tests/test_grafana_dashboards.py: the panel walker and the list of error-only panels."""
    path = Path(__file__).resolve().parents[1] / "test_grafana_dashboards.py"
    spec = importlib.util.spec_from_file_location("eostream_dashboard_checks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


#: Error-only panels whose errors the tests above did drive: they must show data too.
DRIVEN_ERRORS = {("eostream-overview", "Dead letters by service and topic")}


def test_every_grafana_panel_shows_data_after_traffic_through_all_four_services(
    system: System,
) -> None:
    """After the traffic of the tests above (scenes, trainings, gates, a swap, bad input), every
    panel's PromQL returns data from the real Prometheus scraping this deployment's processes."""
    boards = _dashboards_module()
    prometheus = system.stack.prometheus_url
    assert prometheus, "EOSTREAM_PROMETHEUS_URL is not set"
    deployment = system.group.deployment.name
    # some REST traffic of the kind analysts make, for the request panels
    for path in ("/results", "/models", "/stac/search", "/results/no-such-scene"):
        httpx.get(f"{system.inference_url}{path}", timeout=30)

    def up_targets() -> bool:
        body = httpx.get(
            f"{prometheus}/api/v1/query",
            params={"query": f'up{{deployment="{deployment}"}} == 1'},
            timeout=30,
        ).json()
        return len(body["data"]["result"]) == 4

    system.wait("Prometheus to scrape all four services", up_targets, 90)
    allowed_empty = {k: v for k, v in boards.ERROR_ONLY_PANELS.items() if k not in DRIVEN_ERRORS}

    def empty_panels() -> dict[str, str]:
        empty: dict[str, str] = {}
        for uid, panel, target in boards.targets():
            query = boards.catalogue.grafana_to_promql(target["expr"])
            body = httpx.post(
                f"{prometheus}/api/v1/query", data={"query": query}, timeout=30
            ).json()
            assert body["status"] == "success", (uid, panel["title"], body)
            if not body["data"]["result"] and (uid, panel["title"]) not in allowed_empty:
                empty[boards.where(uid, panel, target)] = query
        return empty

    # rates need two scrapes (5 s apart) inside their window: give Prometheus a little time
    deadline = time.monotonic() + 90
    while (empty := empty_panels()) and time.monotonic() < deadline:
        time.sleep(5)
    assert empty == {}


def test_services_killed_mid_work_and_a_broker_restart_lose_nothing_and_repeat_nothing(
    system: System,
) -> None:
    stop = threading.Event()
    inserted: list[str] = []

    def keep_inserting() -> None:
        while not stop.is_set():
            try:
                inserted.append(system.insert())
            except (httpx.HTTPError, AssertionError):
                pass  # the STAC API is not under test here; try again
            stop.wait(2.0)

    def kill_and_wait_back(name: str) -> None:
        process = system.group[name]
        starts = process.starts
        process.kill()
        system.wait(f"{name} restarted", lambda: process.starts > starts, 60, every=0.5)
        process.wait_ready(240, probe="/livez")

    feeder = threading.Thread(target=keep_inserting, daemon=True)
    feeder.start()
    try:
        # ingest, in the middle of its polls
        system.wait("ingest to announce the new scenes", lambda: len(inserted) >= 2, 60)
        kill_and_wait_back("ingest")

        # inference, while it classifies a scene
        def busy() -> bool:
            done = {e.item_id for e in system.classified()}
            return bool(set(inserted) - done)

        system.wait("inference to be busy", busy, 60, every=0.2)
        kill_and_wait_back("inference")

        # the trainer, in the middle of a run; then the bridge, in the middle of its gate
        # small epochs (~410 patches), but five of them: three are left to run when the second
        # epoch's metrics are seen, time enough to kill the trainer mid-run
        request = system.request_training(epochs=5, samples_per_class=60, reason="e2e kills")
        (started,) = system.wait(
            "the training to start",
            lambda: system.started(request.request_id),
            300,
        )
        # Kill it once a checkpoint is on disk. Each epoch's metrics reach MLflow just before its
        # checkpoint is written, so the second epoch's metrics mean the first's checkpoint is
        # there (a fixed sleep was shorter than one epoch on a busy machine).
        from mlflow import MlflowClient

        # both URIs explicit: other tests in this process may have set a global registry URI
        client = MlflowClient(
            tracking_uri=system.stack.mlflow_uri, registry_uri=system.stack.mlflow_uri
        )
        system.wait(
            "the training's second epoch",
            lambda: len(client.get_metric_history(started.run_id, "val_accuracy")) >= 2,
            300,
            every=0.5,
        )
        kill_and_wait_back("trainer")
        registered = system.wait(
            "the killed run's registration",
            lambda: system.registered(request.request_id),
            600,
            every=1.0,
        )
        kill_and_wait_back("registry-bridge")

        # the broker, once, while scenes flow
        restart_kafka()
        time.sleep(8)
    finally:
        stop.set()
        feeder.join(timeout=60)

    # no scene is lost...
    results = system.wait_for_results(inserted, 420)
    assert set(inserted) <= set(results)
    # ...and none is classified twice for one model version: one result and one distinct
    # SceneClassified (redeliveries carry the same event id) per scene and version
    classified = [e for e in system.classified() if e.item_id in set(inserted)]
    ids = defaultdict(set)
    for e in classified:
        ids[(e.item_id, e.model_version)].add(e.id)
    assert {k: v for k, v in ids.items() if len(v) != 1} == {}
    per_version = Counter((r["scene_id"], r["model_version"]) for r in system.results())
    assert [k for k, n in per_version.items() if n != 1] == []
    discovered = defaultdict(set)
    for found in system.discovered():
        discovered[found.item_id].add(found.id)
    assert all(len(discovered[s]) == 1 for s in inserted)

    # the killed training run resumed from its checkpoint and was registered once, never half
    assert "resuming from" in system.group["trainer"].log_path.read_text()
    versions = {e.version for e in system.registered(request.request_id)}
    assert versions == {registered[0].version}
    for mv in client.search_model_versions(f"name='{system.model_name}'"):
        assert {"band_set", "onnx_sha256", "eostream.model_card"} <= set(mv.tags), mv.version
    # the bridge, killed mid-gate, still reached one verdict for that version
    system.wait(
        "the gate's verdict on the killed run's version",
        lambda: client.get_model_version(system.model_name, registered[0].version).tags.get(
            "eostream.gate"
        ),
        180,
    )
    assert not [d for d in system.dead_letters() if d.original_key in set(inserted)]
