"""The bus port (publish events, run consumers) and its adapters: Kafka, the durable SQLite log
of the embedded mode (:mod:`.sqlite`) and the in-process bus of throwaway test buses."""

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
