"""The models catalogue on the real stack: two versions shipped through the real bridge (MLflow
server, MinIO, Kafka) land in the ``eostream-models`` collection of the stack's STAC API
(stac-fastapi-pgstac, transactions), where pystac-client finds them by ``mlm:tasks``, by class
name (CQL2-JSON filter) and by bbox; their aliases follow promotion and rollback.

The collection is shared with every other run (and with real deployments), so each search is
narrowed to this test's model name; the items stay (models are never deleted from the
catalogue)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import mlflow
import pytest
from pystac_client import Client

from eostream.registry_bridge.catalog import validate_catalog_item, validate_collection
from eostream.registry_bridge.service import standalone_bridge
from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared import topics
from eostream.shared.settings import KafkaSettings, S3Settings

pytestmark = pytest.mark.stack

COLLECTION = "eostream-models"
EUROPE = (-10.0, 35.0, 30.0, 60.0)
AUSTRALIA = (113.0, -39.0, 153.0, -11.0)


def settings_for(
    name: str,
    stac_api_url: str,
    mlflow_uri: str,
    kafka: str,
    s3: str,
    keys: tuple[str, str],
    data_dir: Any,
) -> BridgeSettings:
    return BridgeSettings(
        bus="kafka",
        kafka=KafkaSettings(bootstrap_servers=kafka, client_id="bridge-catalog-test"),
        store="s3",
        s3=S3Settings(endpoint=s3, access_key=keys[0], secret_key=keys[1]),
        bucket="eostream",
        mlflow_tracking_uri=mlflow_uri,
        data_dir=data_dir,
        model_names=(name,),
        registration_grace_seconds=0,
        holdout={"per_class": 15},
        gate={"min_accuracy": 0.2, "max_class_drop": 0.5, "min_improvement": 0.0},
        catalog={"stac_api_url": stac_api_url},
    )


def by(name: str, *clauses: dict[str, Any]) -> dict[str, Any]:
    """CQL2-JSON: this test's model and every clause."""
    own = {"op": "=", "args": [{"property": "eostream:model_name"}, name]}
    return {"op": "and", "args": [own, *clauses]}


def contains(prop: str, value: str) -> dict[str, Any]:
    return {"op": "a_contains", "args": [{"property": prop}, [value]]}


def found(client: Client, name: str, *clauses: dict[str, Any], **search: Any) -> dict[str, Any]:
    """Item id -> properties of the items a search finds."""
    results = client.search(
        collections=[COLLECTION], filter=by(name, *clauses), filter_lang="cql2-json", **search
    )
    return {item.id: item.properties for item in results.items()}


async def test_shipped_versions_are_found_by_task_class_and_bbox_and_follow_promotions(
    stac_api_url: str,
    mlflow_uri: str,
    kafka_bootstrap: str,
    s3_endpoint: str,
    s3_credentials: tuple[str, str],
    data_dir: Any,
    models: Any,
    stac_validator: Any,
    register_to: Any,
) -> None:
    name = f"eurosat-landcover-catalog-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    settings = settings_for(
        name, stac_api_url, mlflow_uri, kafka_bootstrap, s3_endpoint, s3_credentials, data_dir
    )
    bridge = standalone_bridge(settings)
    await bridge.bus.start()
    try:
        await bridge.bus.ensure_topics([topics.MODELS_PROMOTED])
        v1 = await asyncio.to_thread(register_to, mlflow_uri, models.better, name=name)
        assert (await bridge.handle_version(name, v1, "event")).state == "promoted"
        v2 = await asyncio.to_thread(register_to, mlflow_uri, models.better, name=name)
        assert (await bridge.handle_version(name, v2, "event")).state == "promoted"
        ids = {v: f"{name}-v{v}" for v in (v1, v2)}

        client = Client.open(stac_api_url)
        by_task = found(client, name, contains("mlm:tasks", "classification"))
        assert set(by_task) == set(ids.values())
        assert by_task[ids[v2]]["eostream:aliases"] == ["champion"]
        assert by_task[ids[v2]]["eostream:status"] == "champion"
        assert (by_task[ids[v1]]["eostream:aliases"], by_task[ids[v1]]["eostream:status"]) == (
            [],
            "archived",
        )
        assert set(found(client, name, contains("eostream:classes", "SeaLake"))) == set(
            ids.values()
        )
        assert found(client, name, contains("eostream:classes", "Glacier")) == {}
        assert found(client, name, contains("mlm:tasks", "object-detection")) == {}
        assert set(found(client, name, bbox=EUROPE)) == set(ids.values())
        assert found(client, name, bbox=AUSTRALIA) == {}

        # what the items name: version, gate verdict and figures, run metrics, run, sources
        props = by_task[ids[v2]]
        assert props["version"] == v2 and props["eostream:gate"] == "passed"
        assert 0 < props["eostream:gate:accuracy"] <= 1
        assert props["eostream:metric:test_accuracy"] == 0.5
        assert props["eostream:mlflow_run_id"]
        async with httpx.AsyncClient(base_url=stac_api_url) as http:
            item = (await http.get(f"/collections/{COLLECTION}/items/{ids[v2]}")).json()
            collection = (await http.get(f"/collections/{COLLECTION}")).json()
        rels = {link["rel"] for link in item["links"]}
        assert {"derived_from", "via", "alternate"} <= rels and "derived-from" not in rels
        # pgstac leaves out the null `datetime` (the item has start/end_datetime) that STAC's
        # schema wants present; what the bridge published has it
        assert "datetime" not in item["properties"]
        published = item | {"properties": {**item["properties"], "datetime": None}}
        assert validate_catalog_item(published, COLLECTION) == []
        assert stac_validator(published) == []
        assert validate_collection(collection) == []
        assert stac_validator(collection) == []
        assert "classification" in collection["summaries"]["mlm:tasks"]
        assert "SeaLake" in collection["summaries"]["eostream:classes"]
        # other models shipped to the stack's collection add their bands (l2a, ms13): a superset
        assert set(collection["summaries"]["eostream:bands"]) >= {"B02", "B03", "B04"}
        assert name in collection["summaries"]["eostream:model_name"]

        # a rollback moves the champion back: both items follow
        await bridge.rollback(name, by="catalog-test", reason="catalogue drill")
        after = found(client, name)
        assert (after[ids[v1]]["eostream:aliases"], after[ids[v1]]["eostream:status"]) == (
            ["champion"],
            "champion",
        )
        assert after[ids[v1]]["eostream:promoted_by"] == "catalog-test"
        assert (after[ids[v2]]["eostream:aliases"], after[ids[v2]]["eostream:status"]) == (
            [],
            "archived",
        )
        champion = {"op": "=", "args": [{"property": "eostream:status"}, "champion"]}
        assert set(found(client, name, champion)) == {ids[v1]}
    finally:
        await bridge.bus.close()
