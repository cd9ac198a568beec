"""Every topic eostream uses, in one place. docs/architecture.md describes each."""

from __future__ import annotations

SCENES_DISCOVERED = "eostream.scenes.discovered"
SCENES_CLASSIFIED = "eostream.scenes.classified"
TRAINING_REQUESTS = "eostream.training.requests"
TRAINING_EVENTS = "eostream.training.events"
DATASETS_UPDATED = "eostream.datasets.updated"
MODELS_REGISTERED = "eostream.models.registered"
MODELS_PROMOTED = "eostream.models.promoted"
DEAD_LETTER = "eostream.deadletter"
#: ``eostream dlq replay``'s log: one record per dead letter replayed (key: the letter's id)
DEAD_LETTER_REPLAYED = "eostream.deadletter.replayed"
#: replays of STAC items ingest rejected (``ItemReplayRequested``, key: the item id)
INGEST_REPLAY = "eostream.ingest.replay"

ALL = (
    SCENES_DISCOVERED,
    SCENES_CLASSIFIED,
    TRAINING_REQUESTS,
    TRAINING_EVENTS,
    DATASETS_UPDATED,
    MODELS_REGISTERED,
    MODELS_PROMOTED,
    DEAD_LETTER,
    DEAD_LETTER_REPLAYED,
    INGEST_REPLAY,
)
