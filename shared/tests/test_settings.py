"""Settings: built once from the environment; a bad environment fails with one clear line."""

from __future__ import annotations

import pytest
from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from eostream.shared.errors import ConfigError
from eostream.shared.settings import ServiceSettings, load_settings


class DemoSettings(ServiceSettings):
    # ServiceSettings' own config with only the prefix changed, so the tests below check what
    # every service inherits (frozen, nested "__"), not a copy of it written here; each service's
    # own class is checked in tests/test_settings_frozen.py
    model_config = SettingsConfigDict(**{**ServiceSettings.model_config, "env_prefix": "DEMO_"})


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("DEMO_"):
            monkeypatch.delenv(name)


def test_nested_settings_come_from_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    monkeypatch.setenv("DEMO_STORE", "s3")
    monkeypatch.setenv("DEMO_S3__ENDPOINT", "127.0.0.1:19000")
    monkeypatch.setenv("DEMO_S3__ACCESS_KEY", "me")
    monkeypatch.setenv("DEMO_S3__SECRET_KEY", "hush")
    settings = load_settings(DemoSettings)
    assert settings.kafka is not None and settings.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert settings.s3 is not None and settings.s3.endpoint == "127.0.0.1:19000"
    assert "hush" not in repr(settings)  # secrets never show in logs


def test_missing_bootstrap_servers_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(DemoSettings)
    assert "DEMO_KAFKA__BOOTSTRAP_SERVERS is not set" in str(caught.value)


def test_missing_nested_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_BUS", "memory")
    monkeypatch.setenv("DEMO_STORE", "s3")
    monkeypatch.setenv("DEMO_S3__ENDPOINT", "127.0.0.1:19000")
    monkeypatch.setenv("DEMO_S3__ACCESS_KEY", "me")
    with pytest.raises(ConfigError, match="DEMO_S3__SECRET_KEY is not set"):
        load_settings(DemoSettings)


def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_BUS", "carrier-pigeon")
    with pytest.raises(ConfigError, match="DEMO_BUS is invalid"):
        load_settings(DemoSettings)


def test_settings_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_BUS", "memory")
    settings = load_settings(DemoSettings)
    assert DemoSettings.model_config["env_prefix"] == "DEMO_"
    with pytest.raises(ValidationError, match="frozen"):
        settings.bus = "kafka"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):  # the nested pieces too
        settings.consumers.stall_seconds = 1.0  # type: ignore[misc]


class _WithAliases(BaseSettings):
    """As the bridge's and the trainer's ``data_dir``: a prefixed variable and the shared one."""

    model_config = SettingsConfigDict(env_prefix="DEMO_")
    data_dir: str = Field(validation_alias=AliasChoices("data_dir", "DEMO_DATA_DIR", "EOSTREAM_X"))


def test_a_missing_setting_names_every_variable_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """``eostream models list`` without a data folder asked for BRIDGE_DATA_DIR alone, where the
    README only ever names EOSTREAM_DATA_DIR (which the setting reads too)."""
    for name in ("DEMO_DATA_DIR", "EOSTREAM_X", "DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"DEMO_DATA_DIR \(or EOSTREAM_X\) is not set; it is"):
        load_settings(_WithAliases)
