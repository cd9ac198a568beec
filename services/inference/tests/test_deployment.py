"""Model deployment apart from the scene pipeline: models come from the ModelSource the service is
built with, a failed promotion is recorded and keeps the live model, and a restart reloads the
last model that went live (not a later one that failed)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from eostream.inference import testing
from eostream.inference.api.schemas import DeployedModel
from eostream.inference.errors import ModelLoadError
from eostream.inference.model import ModelInfo
from eostream.inference.results import build_results_store
from eostream.inference.settings import InferenceSettings
from eostream.inference.wiring import build_service
from eostream.shared.errors import RetryableError
from eostream.shared.events import ModelPromoted

SWAPS = "eostream_inference_model_swaps_total"


class ModelsInMemory:
    """A ModelSource over a dict: what a registry client or a cache would plug in."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.read_uris: list[str] = []

    def read(self, uri: str) -> bytes:
        self.read_uris.append(uri)
        return self.blobs[uri]


def test_models_come_from_the_source_the_service_is_built_with(
    settings: InferenceSettings, boadella_item: Callable[[str], Path]
) -> None:
    blob = testing.build_onnx(testing.model_card(name="mem-cnn"))
    source = ModelsInMemory({"mem://mem-cnn/1": blob})
    service = build_service(settings, models=source, consume=False)
    try:
        info = ModelInfo(name="mem-cnn", version="1", artifact_uri="mem://mem-cnn/1")
        sha = hashlib.sha256(blob).hexdigest()
        service.deployment.deploy_uri(info, "mem://mem-cnn/1", sha)
        outcome = service.pipeline.classify_href(str(boadella_item("2020-06-21")))
    finally:
        service.results.close()
    assert source.read_uris == ["mem://mem-cnn/1"]
    assert (outcome.record.model_name, outcome.record.model_version) == ("mem-cnn", "1")
    assert service.deployment.describe()["name"] == "mem-cnn"


async def test_a_restart_reloads_the_last_model_that_went_live(
    settings: InferenceSettings, make_model: Callable[..., ModelPromoted]
) -> None:
    first = build_service(settings, consume=False)
    await first.start()
    try:
        first.deployment.deploy(make_model("1"))
        with pytest.raises(ModelLoadError, match="sha256"):
            first.deployment.deploy(make_model("2").model_copy(update={"sha256": "0" * 64}))
        live = first.deployment.current
        assert live is not None and live.info.version == "1"
    finally:
        await first.stop()

    results = build_results_store(settings.results_db)
    assert [(d["version"], d["status"]) for d in results.deployments(5)] == [
        ("2", "failed"),
        ("1", "live"),
    ]
    second = build_service(settings, results=results, consume=False)
    await second.start()
    try:
        reloaded = second.deployment.current
        assert reloaded is not None and reloaded.info.version == "1"
        assert second.readiness()[0]
    finally:
        await second.stop()


def test_on_cpu_the_int8_file_of_the_mlm_item_runs_when_its_checksum_holds(
    settings: InferenceSettings,
) -> None:
    """The MLM item's int8 asset runs on CPU (checked against its own checksum); a wrong
    checksum, a failed check or ``int8_on_cpu=False`` run the fp32 file."""
    fp32 = testing.build_onnx(testing.model_card(name="q-cnn"), seed=1)
    int8 = testing.build_onnx(testing.model_card(name="q-cnn"), seed=2)  # stands for the int8 file

    def item(checksum: str, check: str = "passed") -> bytes:
        asset = {
            "href": "model.int8.onnx",  # relative to the item, as an item may write it
            "roles": ["data"],
            "file:checksum": "1220" + checksum,
            "eostream:precision": "int8",
            "eostream:int8_check": check,
        }
        return json.dumps(
            {"assets": {"model": {"href": "mem://q/model.onnx"}, "model_int8": asset}}
        ).encode()

    good = hashlib.sha256(int8).hexdigest()
    info = ModelInfo(
        name="q-cnn",
        version="1",
        sha256=hashlib.sha256(fp32).hexdigest(),
        artifact_uri="mem://q/model.onnx",
        mlm_item_href="mem://q/item.json",
    )
    cases = [
        (settings, item(good), "int8"),
        (settings, item("0" * 64), "fp32"),
        (settings, item(good, check="failed"), "fp32"),
        (settings.model_copy(update={"int8_on_cpu": False}), item(good), "fp32"),
    ]
    for s, item_bytes, expected in cases:
        cpu = s.model_copy(update={"providers": ("CPUExecutionProvider",)})
        source = ModelsInMemory(
            {
                "mem://q/model.onnx": fp32,
                "mem://q/model.int8.onnx": int8,
                "mem://q/item.json": item_bytes,
            }
        )
        service = build_service(cpu, models=source, consume=False)
        try:
            model = service.deployment.deploy_uri(info, info.artifact_uri, info.sha256)
        finally:
            service.results.close()
        assert model.precision == expected, (item_bytes, s.int8_on_cpu)
        ran = int8 if expected == "int8" else fp32  # the running file's digest, beside the model's
        assert model.file_sha256 == hashlib.sha256(ran).hexdigest()
        assert model.info.sha256 == hashlib.sha256(fp32).hexdigest()
        described = DeployedModel.model_validate(service.deployment.describe())  # GET /models
        assert described.precision == expected


class UnreachableModels:
    """A ModelSource whose store cannot be reached (a MinIO outage during a promotion)."""

    def read(self, uri: str) -> bytes:
        raise RetryableError(f"{uri}: connection refused")


def test_a_swap_the_store_stops_counts_as_failed(settings: InferenceSettings) -> None:
    """A promotion the object store cannot serve leaves the old model serving: the failed-swap
    alert must see it (it counted only a bad model file, not an unreachable store)."""
    service = build_service(settings, models=UnreachableModels(), consume=False)
    failed = REGISTRY.get_sample_value(SWAPS, {"outcome": "failed"}) or 0.0
    try:
        info = ModelInfo(name="mem-cnn", version="1", artifact_uri="mem://mem-cnn/1")
        with pytest.raises(RetryableError):  # retried by the consumer, dead-lettered at last
            service.deployment.deploy_uri(info, "mem://mem-cnn/1", None)
    finally:
        service.results.close()
    assert REGISTRY.get_sample_value(SWAPS, {"outcome": "failed"}) == failed + 1


def test_a_promotion_names_a_file_where_models_ship_or_nothing_loads(
    settings: InferenceSettings, tmp_path: Path
) -> None:
    """Anyone who could publish a ModelPromoted chose the file inference ran: its checksum comes
    in the same event. A promotion's file must lie in the service's own store (where the
    registry-bridge ships) or INFERENCE_MODEL_ROOTS; the refusal is recorded and counted."""
    strict = settings.model_copy(update={"model_roots": ()})
    blob = testing.build_onnx(testing.model_card(name="eurosat"))
    sha = hashlib.sha256(blob).hexdigest()
    outside = tmp_path / "elsewhere" / "model.onnx"
    inside = strict.local_store_root / strict.bucket / "models" / "eurosat" / "2" / "model.onnx"
    for path in (outside, inside):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)

    def promoted(version: str, uri: str) -> ModelPromoted:
        return ModelPromoted(
            name="eurosat", version=version, alias="champion", artifact_uri=uri, sha256=sha,
            mlm_item_href=(inside.parent / "item.json").as_uri(), run_id="r",
        )  # fmt: skip

    service = build_service(strict, consume=False)
    failed = REGISTRY.get_sample_value(SWAPS, {"outcome": "failed"}) or 0.0
    try:
        for version, uri in (("1", outside.as_uri()), ("3", "https://example.org/m.onnx")):
            with pytest.raises(ModelLoadError, match="outside this service's model store"):
                service.deployment.deploy(promoted(version, uri))
        assert service.deployment.current is None
        service.deployment.deploy(promoted("2", inside.as_uri()))
        live = service.deployment.current
        assert live is not None and live.info.version == "2"
        history = {(d["version"], d["status"]) for d in service.results.deployments(5)}
        assert {("1", "failed"), ("3", "failed"), ("2", "live")} <= history
    finally:
        service.results.close()
    assert REGISTRY.get_sample_value(SWAPS, {"outcome": "failed"}) == failed + 2


def test_a_replayed_promotion_never_undoes_a_later_one(
    settings: InferenceSettings, make_model: Callable[..., ModelPromoted]
) -> None:
    """v3 promoted, then rolled back to v2: v3's promotion replayed from the dead letters (or
    delivered late) made v3 live again, with no promoter's word and no audit entry."""
    start = datetime(2026, 12, 7, 10, tzinfo=UTC)
    v2, v3 = make_model("2"), make_model("3")
    service = build_service(settings, consume=False)
    try:
        promote = service.deployment.promote
        assert promote(v2.model_copy(update={"time": start})) is not None
        promoted_v3 = v3.model_copy(update={"time": start + timedelta(minutes=5)})
        assert promote(promoted_v3) is not None
        rollback = v2.model_copy(update={"time": start + timedelta(minutes=9)})
        assert promote(rollback) is not None
        assert promote(promoted_v3) is None  # the replay
        live = service.deployment.current
        assert live is not None and live.info.version == "2"
        later = v3.model_copy(update={"time": start + timedelta(minutes=12)})
        assert promote(later) is not None  # a new promotion of v3 is one
    finally:
        service.results.close()
