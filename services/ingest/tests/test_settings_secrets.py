"""The push webhook's secret is judged by the address of the server that takes the pushes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from eostream.ingest.settings import IngestSettings

PUBLISHED = "eostream-local-webhook-secret"  # shipped in earlier compose files: anybody knows it


def _settings(ops_host: str, push_host: str, push_port: int | None) -> IngestSettings:
    return IngestSettings(
        http_host=ops_host,
        bus="memory",
        push={"enabled": True, "secret": PUBLISHED, "host": push_host, "port": push_port},
        _env_file=None,
    )


def test_a_push_server_of_its_own_on_a_network_address_refuses_a_published_secret() -> None:
    with pytest.raises(ValidationError, match="INGEST_PUSH__SECRET holds a published default"):
        _settings("127.0.0.1", "0.0.0.0", 8090)  # noqa: S104 - the case refused


def test_a_push_server_of_its_own_on_loopback_keeps_it_whatever_the_ops_address() -> None:
    settings = _settings("0.0.0.0", "127.0.0.1", 8090)  # noqa: S104 - ops only: no secret there
    assert settings.push.host == "127.0.0.1"


def test_pushes_served_on_the_ops_server_are_judged_by_its_address() -> None:
    """No port of its own: the push route is on the ops server (HTTP_HOST), and PUSH__HOST
    binds nothing."""
    with pytest.raises(ValidationError, match="INGEST_PUSH__SECRET"):
        _settings("0.0.0.0", "127.0.0.1", None)  # noqa: S104
    assert _settings("127.0.0.1", "0.0.0.0", None).push.port is None  # noqa: S104
