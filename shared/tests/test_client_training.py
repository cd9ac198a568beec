"""``eostream.client.TrainingClient`` on the in-process bus with no trainer listening: the request
is on the bus, and the wait for its MLflow run ends with one clear TrainingTimeout. (The whole
path, a trainer starting the run and registering the model, runs in notebooks/04.)"""

from __future__ import annotations

import pytest

from eostream.client import TrainingClient, TrainingTimeout
from eostream.shared import topics
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import WireMessage
from eostream.shared.events import TrainingRequested, TrainingStarted


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


async def test_waiting_for_answers_dead_letters_no_old_record() -> None:
    """Each submission follows the trainer's topics in a group of its own, from their start: a
    record there that does not decode was dead-lettered again by every submission."""
    bus = InMemoryBus(service="client-test")
    await bus.start()
    try:
        await bus.publish_raw(
            topics.TRAINING_EVENTS, WireMessage(key=b"k", value=b"not json", headers={})
        )
        client = TrainingClient(bus)
        for _ in range(3):
            request = TrainingRequested(epochs=1, requested_by="test")
            await bus.publish(
                topics.TRAINING_EVENTS,
                TrainingStarted(
                    request_id=request.request_id, run_id="r", run_url="u", experiment_id="1"
                ),
            )
            submission = await client.submit(request, wait_started=30)
            assert submission.started is not None
            assert submission.started.request_id == request.request_id
            await client.close(submission)
        assert bus.size(bus.dead_letter_topic) == 0
    finally:
        await bus.close()
