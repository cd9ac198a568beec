"""Event contracts: closed models, the wire format, and schema upgraders."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from eostream.shared import events
from eostream.shared.codec import WireMessage, decode, encode
from eostream.shared.errors import InvalidEventError
from eostream.shared.events import (
    EVENT_TYPES,
    ModelPromoted,
    SceneDiscovered,
    TrainingRequested,
    parse_event,
)

WHEN = datetime(2024, 3, 2, 11, 5, tzinfo=UTC)


def a_scene() -> SceneDiscovered:
    return SceneDiscovered(
        item_id="S2B_MSIL2A_20240302T110839_R137_T29RKH",
        item_href="https://earth-search.example/items/x",
        datetime=WHEN,
        tile="29RKH",
        cloud_cover=12.5,
        processing_level="L2A",
        processing_baseline="05.10",
        bands=("B02", "B03", "B04", "B08"),
        source_name="earth-search",
    )


def test_events_are_frozen_and_closed() -> None:
    scene = a_scene()
    with pytest.raises(ValidationError):
        scene.item_id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs"):
        SceneDiscovered.model_validate({**scene.model_dump(), "surprise": 1})


@pytest.mark.parametrize("seed", [-1, 2**32, 10**30])
def test_a_training_seed_is_one_the_generators_take(seed: int) -> None:
    """numpy's generators refuse a negative seed and torch's a seed past 64 bits: such a request
    used to fail at the first epoch, after TrainingStarted and its MLflow run."""
    with pytest.raises(ValidationError, match="seed"):
        TrainingRequested(request_id="r", seed=seed)
    assert TrainingRequested(request_id="r", seed=2**32 - 1).seed == 2**32 - 1


def test_times_must_be_aware() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        SceneDiscovered.model_validate({**a_scene().model_dump(), "datetime": "2024-03-02T11:05"})


def test_every_event_type_round_trips_through_the_wire() -> None:
    samples = [
        a_scene(),
        TrainingRequested(band_set="rgb", epochs=3),
        events.DatasetUpdated(dataset="eurosat-rgb", href="s3://d/x.parquet", digest="abc"),
        events.TrainingStarted(
            request_id="r1", run_id="abc", run_url="http://m/#/r", experiment_id="1"
        ),
        events.ModelVersionRegistered(name="m", version="3", run_id="abc", band_set="rgb"),
        ModelPromoted(
            name="m",
            version="3",
            alias="champion",
            artifact_uri="s3://models/m/3/model.onnx",
            sha256="a" * 64,
            mlm_item_href="s3://models/m/3/item.json",
        ),
        events.SceneClassified(
            item_id="S2",
            model_name="m",
            model_version="3",
            result_item_href="s3://r/i.json",
            cog_href="s3://r/c.tif",
            pixels=100,
            duration_seconds=1.5,
        ),
        events.ItemReplayRequested(item_id="S2", source_name="es", letter_id="0123456789ab"),
    ]
    assert {type(s).__name__ for s in samples} == {c.__name__ for c in EVENT_TYPES.values()}
    for sample in samples:
        message = encode(sample, source="test")
        assert message.key == sample.key.encode()
        assert decode(message) == sample


def test_keys_follow_the_natural_ids() -> None:
    promoted = ModelPromoted(
        name="eurosat",
        version="7",
        alias="champion",
        artifact_uri="s3://a/b",
        sha256="0" * 64,
        mlm_item_href="s3://a/c",
    )
    assert a_scene().key == "S2B_MSIL2A_20240302T110839_R137_T29RKH"
    assert promoted.key == "eurosat"
    assert (
        events.ModelVersionRegistered(name="eurosat", version="7", run_id="r", band_set="rgb").key
        == "eurosat:7"
    )


def test_ids_are_minted_once_and_survive_the_wire() -> None:
    scene = a_scene()
    assert decode(encode(scene)).id == scene.id
    assert a_scene().id != scene.id


def test_headers_that_disagree_with_the_payload_are_rejected() -> None:
    message = encode(a_scene())
    headers = {**message.headers, "ce_type": b"io.eostream.model.promoted"}
    with pytest.raises(InvalidEventError, match="does not match"):
        decode(WireMessage(message.key, message.value, headers))
    headers = {**message.headers, "ce_id": str(uuid.uuid4()).encode()}
    with pytest.raises(InvalidEventError, match="ce_id"):
        decode(WireMessage(message.key, message.value, headers))


def test_a_newer_schema_than_known_is_refused_with_advice() -> None:
    payload = json.loads(encode(a_scene()).value)
    payload["schema_version"] = 2
    with pytest.raises(InvalidEventError, match="upgrade the service"):
        parse_event(payload)


def test_registered_upgraders_bring_old_payloads_up_to_date(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pretend SceneDiscovered is at v2, where v1's "cloud" field was renamed "cloud_cover".
    monkeypatch.setattr(events, "_upgraders", {})
    monkeypatch.setattr(events, "_current_version", lambda cls: 2)

    @events.register_upgrader("scene.discovered", 1)
    def rename_cloud(payload: events.JsonDict) -> events.JsonDict:
        payload["cloud_cover"] = payload.pop("cloud")
        return payload

    old = json.loads(encode(a_scene()).value)
    old["cloud"] = old.pop("cloud_cover")
    upgraded = events.upgrade(old)
    assert upgraded["schema_version"] == 2
    assert upgraded["cloud_cover"] == 12.5
    with pytest.raises(ValueError, match="already exists"):
        events.register_upgrader("scene.discovered", 1)(rename_cloud)


def test_unknown_event_types_are_poison() -> None:
    with pytest.raises(InvalidEventError, match="unknown event_type"):
        parse_event({"event_type": "scene.vanished", "schema_version": 1})
