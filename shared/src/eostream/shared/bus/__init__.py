"""The bus port (publish events, run consumers) and its Kafka and in-process adapters."""

from eostream.shared.bus.base import (
    Bus,
    Consumer,
    ConsumerProgress,
    ConsumerStopped,
    Delivery,
    Handler,
    RetryPolicy,
    heartbeat,
)
from eostream.shared.bus.factory import build_bus
from eostream.shared.bus.supervisor import Consumers, SupervisedConsumer

__all__ = [
    "Bus",
    "Consumer",
    "ConsumerProgress",
    "ConsumerStopped",
    "Consumers",
    "Delivery",
    "Handler",
    "RetryPolicy",
    "SupervisedConsumer",
    "build_bus",
    "heartbeat",
]
