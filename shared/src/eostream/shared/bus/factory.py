"""Pick the bus adapter the settings name."""

from __future__ import annotations

from eostream.shared.bus.base import Bus
from eostream.shared.errors import ConfigError
from eostream.shared.settings import ServiceSettings


def build_bus(settings: ServiceSettings, *, service: str) -> Bus:
    if settings.bus == "kafka":
        from eostream.shared.bus.kafka import KafkaBus

        if settings.kafka is None:  # ServiceSettings validation rules this out
            raise ConfigError("bus=kafka needs the kafka settings")
        return KafkaBus(settings.kafka, service=service)
    from eostream.shared.bus.memory import InMemoryBus

    return InMemoryBus(service=service)
