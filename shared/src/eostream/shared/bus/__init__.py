"""The bus port (publish events, run consumers) and its Kafka and in-process adapters."""

from eostream.shared.bus.base import (
    Bus,
    Consumer,
    ConsumerStopped,
    Delivery,
    Handler,
    RetryPolicy,
)
from eostream.shared.bus.factory import build_bus

__all__ = [
    "Bus",
    "Consumer",
    "ConsumerStopped",
    "Delivery",
    "Handler",
    "RetryPolicy",
    "build_bus",
]
