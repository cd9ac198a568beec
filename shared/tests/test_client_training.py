"""``eostream.client.TrainingClient`` on the in-process bus with no trainer listening: the request
is on the bus, and the wait for its MLflow run ends with one clear TrainingTimeout. (The whole
path, a trainer starting the run and registering the model, runs in notebooks/04.)"""

from __future__ import annotations

import pytest

from eostream.client import TrainingClient, TrainingTimeout
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.events import TrainingRequested


async def test_a_request_nobody_trains_is_published_and_the_wait_says_so() -> None:
    bus = InMemoryBus(service="client-test")
    await bus.start()
    try:
        request = TrainingRequested(epochs=1, requested_by="test")
        with pytest.raises(TrainingTimeout, match=request.request_id):
            await TrainingClient(bus).submit(request, wait_started=0.2)
        [record] = bus.records(topics.TRAINING_REQUESTS)
        assert record.key == request.key.encode()
    finally:
        await bus.close()
