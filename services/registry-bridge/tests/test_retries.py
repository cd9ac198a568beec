"""MLflow or the object store down: bounded retries with backoff, then a retryable error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eostream.registry_bridge.errors import RegistryUnavailableError
from eostream.registry_bridge.registry import MlflowRegistry
from eostream.registry_bridge.shipping import Shipper
from eostream.shared.errors import RetryableError
from eostream.shared.storage.local import LocalObjectStore


def test_mlflow_down_gives_registry_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    registry = MlflowRegistry("http://127.0.0.1:9", attempts=3, backoff=0.01, backoff_max=0.02)
    with pytest.raises(RegistryUnavailableError, match="did not answer"):
        registry.check()


class FlakyStore(LocalObjectStore):
    """A real local store whose first writes fail the way S3 does when MinIO is down: the real
    S3ObjectStore raises RetryableError on a refused connection, checked in
    shared/tests/test_storage_contract.py
    (test_reads_and_writes_on_a_store_that_went_down_are_retryable)."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root, "eostream")
        self.failures = failures
        self.attempts = 0

    def put_bytes(self, key: str, data: bytes, content_type: str = "") -> None:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise RetryableError("S3 127.0.0.1:19000: connection refused")
        super().put_bytes(key, data)


def test_store_outage_is_retried_then_shipping_completes(
    tmp_path: Path, models: Any, export: Any, card: Any
) -> None:
    from datetime import UTC, datetime

    from eostream.shared.mlm import MlmFacts

    data = export(models.better, card)
    store = FlakyStore(tmp_path, failures=2)
    shipper = Shipper(store, attempts=4, backoff=0.01, backoff_max=0.02)

    def describe(uri: str, sha: str, size: int) -> MlmFacts:
        return MlmFacts(
            name="m",
            version="1",
            card=card,
            artifact_href=uri,
            sha256=sha,
            size=size,
            created=datetime.now(UTC),
        )

    shipment = shipper.ship("m", "1", data, card, describe)
    assert store.attempts == 4 and shipper.existing("m", "1") == shipment.__class__(
        **{**shipment.__dict__, "already_shipped": True}
    )

    down = FlakyStore(tmp_path / "down", failures=100)
    with pytest.raises(RetryableError):
        Shipper(down, attempts=3, backoff=0.01, backoff_max=0.02).ship(
            "m", "1", data, card, describe
        )
    assert down.attempts == 3
    assert shipper.existing("m", "1") is not None
    assert Shipper(down).existing("m", "1") is None  # nothing half-shipped is visible


def test_mlflow_down_is_not_taken_for_a_missing_champion(
    monkeypatch: pytest.MonkeyPatch, tracking_uri: str
) -> None:
    """An unreachable server's error names the alias route (.../registered-models/alias), so a
    test of the text alone read it as "no champion": a rollback answered 409 "nothing to roll
    back" and the gate saw no champion. Only MLflow's own not-found answer means no alias."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = MlflowRegistry("http://127.0.0.1:9", attempts=2, backoff=0.01, backoff_max=0.02)
    with pytest.raises(RegistryUnavailableError, match="did not answer"):
        down.alias_version("eurosat-landcover", "champion")
    # a real registry: a model without the alias, and no such model, are both None
    registry = MlflowRegistry(tracking_uri, attempts=1)
    registry.client.create_registered_model("no-champion-yet")
    assert registry.alias_version("no-champion-yet", "champion") is None
    assert registry.alias_version("no-such-model", "champion") is None
