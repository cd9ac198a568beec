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

ALL = (
    SCENES_DISCOVERED,
    SCENES_CLASSIFIED,
    TRAINING_REQUESTS,
    TRAINING_EVENTS,
    DATASETS_UPDATED,
    MODELS_REGISTERED,
    MODELS_PROMOTED,
    DEAD_LETTER,
)
