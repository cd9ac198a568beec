"""Published default secrets are refused for servers other machines can reach (issue #20)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from eostream.shared.errors import ConfigError
from eostream.shared.secrets_policy import is_loopback, published_defaults
from eostream.shared.settings import S3Settings, ServiceSettings, load_settings


class _Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="DEMO_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    api_key: SecretStr = SecretStr("a-key-of-my-own-000000")
    results_db: str = "sqlite:///results.db"


def _s3(endpoint: str, secret: str) -> dict[str, object]:
    return {"endpoint": endpoint, "access_key": "eostream", "secret_key": secret}


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.0.0.1:19000", "localhost", "[::1]:9000", "::1", "127.1.2.3"):
        assert is_loopback(host), host
    remote: list[str | None] = ["0.0.0.0", "minio:9000", "10.0.0.5", "example.org", "", None]  # noqa: S104
    for other in [*remote, "[::]:80"]:
        assert not is_loopback(other), other


def test_published_secrets_for_reachable_servers_are_named() -> None:
    # the old compose defaults: API on 0.0.0.0, MinIO and PostgreSQL on the compose network
    fine = _Settings(bus="memory", _env_file=None)
    bad = fine.model_copy(  # not validated: what the settings' own check looks at
        update={
            "http_host": "0.0.0.0",  # noqa: S104
            "store": "s3",
            "s3": S3Settings.model_validate(_s3("minio:9000", "eostream-local-secret")),
            "api_key": SecretStr("eostream-local-api-key"),
            "results_db": "postgresql://eostream:eostream@postgres:5432/results",
        }
    )
    assert published_defaults(bad, prefix="DEMO_") == [
        "DEMO_S3__SECRET_KEY",
        "DEMO_API_KEY",
        "DEMO_RESULTS_DB",
    ]


def test_the_same_values_on_this_machine_alone_are_allowed() -> None:
    """The local stack (127.0.0.1) and a service listening on loopback keep their defaults."""
    local = _Settings(
        bus="memory",
        store="s3",
        s3=_s3("127.0.0.1:19000", "eostream-local-secret"),
        api_key=SecretStr("eostream-local-api-key"),
        results_db="postgresql://eostream:eostream@127.0.0.1:15432/results",
        _env_file=None,
    )
    assert published_defaults(local) == []


def test_a_service_started_with_one_gets_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_HTTP_HOST", "0.0.0.0")  # noqa: S104
    monkeypatch.setenv("DEMO_BUS", "memory")
    monkeypatch.setenv("DEMO_API_KEY", "eostream-local-api-key")
    with pytest.raises(ConfigError) as caught:
        load_settings(_Settings)
    text = str(caught.value)
    assert "DEMO_API_KEY holds a published default secret" in text and "\n" not in text
    assert "eostream-local-api-key" not in text  # the value itself is never echoed
    monkeypatch.setenv("DEMO_API_KEY", "a-secret-of-my-own-1234")
    assert load_settings(_Settings).api_key.get_secret_value() == "a-secret-of-my-own-1234"


def test_a_dsn_kept_as_a_secret_is_checked_like_a_plain_one() -> None:
    """Ingest's ``pg_dsn`` is a SecretStr: its password counts where its host is not loopback,
    whatever the service's own HTTP host."""

    class _WithDsn(_Settings):
        pg_dsn: SecretStr = SecretStr("postgresql://u:a-password-of-my-own@db:5432/results")

    base = _WithDsn(bus="memory", _env_file=None)
    remote = SecretStr("postgresql://eostream:eostream@postgres:5432/results")
    local = SecretStr("postgresql://eostream:eostream@127.0.0.1:15432/results")
    for http_host in ("0.0.0.0", "127.0.0.1"):  # noqa: S104
        bad = base.model_copy(update={"http_host": http_host, "pg_dsn": remote})
        assert published_defaults(bad, prefix="INGEST_") == ["INGEST_PG_DSN"], http_host
    fine = base.model_copy(update={"http_host": "0.0.0.0", "pg_dsn": local})  # noqa: S104
    assert published_defaults(fine, prefix="INGEST_") == []
    assert published_defaults(base.model_copy(update={"http_host": "0.0.0.0"})) == []  # noqa: S104


def test_a_short_secret_guarding_a_reachable_server_is_refused() -> None:
    """``INFERENCE_API_KEY=x`` was taken for an API on 0.0.0.0 (the bridge's keys and ingest's
    push secret already needed 16 characters); on loopback, and for other servers' secrets (S3
    follows MinIO's own rules), a short one stays allowed."""
    short = _Settings(bus="memory", api_key=SecretStr("x"), _env_file=None)
    assert published_defaults(short) == []  # on 127.0.0.1
    reachable = short.model_copy(update={"http_host": "0.0.0.0"})  # noqa: S104
    assert published_defaults(reachable, prefix="DEMO_") == ["DEMO_API_KEY"]
    own = reachable.model_copy(
        update={
            "api_key": SecretStr("sixteen-chars-ok"),
            "store": "s3",
            "s3": S3Settings.model_validate(_s3("minio:9000", "eight-ch")),
        }
    )
    assert published_defaults(own, prefix="DEMO_") == []
