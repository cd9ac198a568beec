"""The labelled area follows its champion: when a better version of a model trained on the
user's labels goes live, inference maps again, through the scenes topic, the scenes its earlier
version mapped; a redelivered promotion repeats nothing, and EuroSAT models are left alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from eostream.inference import testing
from eostream.inference.remap import SOURCE, remap_events
from eostream.inference.service import InferenceService
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import decode
from eostream.shared.events import ModelPromoted, SceneClassified, SceneDiscovered

from .test_end_to_end import run_until, scene_event

SCENE = "S2A_29RKH_20200219_0_L2A"


def _events(bus: InMemoryBus, topic: str) -> list[object]:
    return [decode(m) for m in bus._logs.get(topic, [])]


def _labels_model(make_model: Callable[..., ModelPromoted], version: str) -> ModelPromoted:
    """A model of the user's own labels: its card names the chip dataset it learnt from."""
    card = testing.model_card("rgb", name="water").model_copy(
        update={"dataset": "/chips/water/chips.parquet", "dataset_test_split": "test"}
    )
    return make_model(version, name="water", data=testing.build_onnx(card, seed=int(version)))


async def test_a_better_labels_model_maps_the_earlier_scenes_again(
    service: InferenceService,
    bus: InMemoryBus,
    rkh_item: Path,
    make_model: Callable[..., ModelPromoted],
) -> None:
    await bus.publish(topics.MODELS_PROMOTED, _labels_model(make_model, "1"))
    await bus.publish(topics.SCENES_DISCOVERED, scene_event(rkh_item, SCENE))
    await run_until(bus, topics.SCENES_CLASSIFIED, 1)

    better = _labels_model(make_model, "2")
    await bus.publish(topics.MODELS_PROMOTED, better)
    await run_until(bus, topics.SCENES_CLASSIFIED, 2)
    remapped = [
        e
        for e in _events(bus, topics.SCENES_DISCOVERED)
        if isinstance(e, SceneDiscovered) and e.source_name == SOURCE
    ]
    assert [(e.item_id, e.item_href, e.processing_level) for e in remapped] == [
        (SCENE, rkh_item.as_uri(), "L2A")  # its result links the scene by URI
    ]
    done = [e for e in _events(bus, topics.SCENES_CLASSIFIED) if isinstance(e, SceneClassified)]
    assert [(e.item_id, e.model_version) for e in done] == [(SCENE, "1"), (SCENE, "2")]
    assert service.pipeline.results.exists(SCENE, "water", "2")

    # the promotion handled again (a redelivery, another replica): v2 mapped it, nothing to do
    await service.on_model(better, None)  # type: ignore[arg-type]
    assert bus.size(topics.SCENES_DISCOVERED) == 2
    assert bus.size(topics.SCENES_CLASSIFIED) == 2
    # a version that has not mapped the scene yet: every handling announces the same event
    first, second = (remap_events(service.pipeline, "water", "3") for _ in range(2))
    assert [e.id for e in first] == [e.id for e in second] and len(first) == 1
    assert first[0].id != remapped[0].id


async def test_a_eurosat_model_leaves_earlier_maps_alone(
    service: InferenceService,
    bus: InMemoryBus,
    rkh_item: Path,
    make_model: Callable[..., ModelPromoted],
) -> None:
    await bus.publish(topics.MODELS_PROMOTED, make_model("1"))
    await bus.publish(topics.SCENES_DISCOVERED, scene_event(rkh_item, SCENE))
    await run_until(bus, topics.SCENES_CLASSIFIED, 1)
    await bus.publish(topics.MODELS_PROMOTED, make_model("2"))
    await run_until(bus, topics.MODELS_PROMOTED, 2)
    await service.on_model(make_model("2"), None)  # type: ignore[arg-type]  # handled, no remap
    assert bus.size(topics.SCENES_DISCOVERED) == 1
    assert bus.size(topics.SCENES_CLASSIFIED) == 1
