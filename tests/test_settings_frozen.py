"""Every service's settings are frozen: built once at the entrypoint and passed down, never
changed on the way (STYLE.md). Each service writes its own ``model_config``, so each class is
checked here, built as the services' own tests build it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import SecretStr, ValidationError

from eostream.inference.settings import InferenceSettings
from eostream.ingest.settings import IngestSettings
from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared.settings import ServiceSettings
from eostream.trainer.settings import TrainerSettings


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(
            lambda: InferenceSettings(api_key=SecretStr("k"), bus="memory"), id="inference"
        ),
        pytest.param(lambda: IngestSettings(bus="memory"), id="ingest"),
        pytest.param(lambda: TrainerSettings(bus="memory"), id="trainer"),
        pytest.param(lambda: BridgeSettings(bus="memory"), id="registry-bridge"),
    ],
)
def test_each_service_settings_class_is_frozen(build: Callable[[], ServiceSettings]) -> None:
    settings = build()
    with pytest.raises(ValidationError, match="frozen"):
        settings.bus = "kafka"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        settings.http_port = 1  # type: ignore[misc]
    assert settings.bus == "memory"
