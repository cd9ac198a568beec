"""Shipping: the verified ONNX artifact and its STAC MLM item into the models bucket.

Layout: ``<prefix>/<name>/<version>/model.onnx``, ``.../model.int8.onnx`` when an int8 variant
passed its check (:mod:`.quantize`; the item's ``model_int8`` asset) and ``.../item.json``. The
MLM item is written
last and is the commit marker: a version is shipped when, and only when, its item exists. A
crash between the two uploads leaves a model file with no item, which the next attempt simply
overwrites (same bytes), so shipping is idempotent on (name, version) and never half-done as
seen by readers, who look for the item first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from eostream.registry_bridge.errors import RefusedError
from eostream.registry_bridge.onnx_model import sha256_hex
from eostream.shared import mlm
from eostream.shared.errors import ObjectNotFoundError, RetryableError
from eostream.shared.modelcard import ModelCard
from eostream.shared.storage import ObjectStore

log = logging.getLogger(__name__)
T = TypeVar("T")

MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
ITEM_FILE = "item.json"


@dataclass(frozen=True)
class Variant:
    """Another file of the same model shipped beside it (the int8 one): ``file`` next to
    model.onnx, asset ``key`` of the MLM item with ``fields``."""

    key: str
    precision: str
    file: str
    onnx_bytes: bytes
    fields: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Shipment:
    name: str
    version: str
    artifact_uri: str
    sha256: str
    mlm_item_href: str
    already_shipped: bool = False


def store_retrying(attempts: int, backoff: float, backoff_max: float) -> Retrying:
    """Bounded exponential retries of an object-store call that failed transiently (shipping and
    the audit log share the store and this policy)."""
    return Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=backoff, max=backoff_max),
        retry=retry_if_exception_type((RetryableError, ConnectionError, TimeoutError)),
        reraise=True,
        before_sleep=lambda s: log.warning(
            "object store call failed (attempt %d), retrying: %s",
            s.attempt_number,
            s.outcome.exception() if s.outcome else "?",
        ),
    )


class Shipper:
    def __init__(
        self,
        store: ObjectStore,
        prefix: str = "models",
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        backoff_max: float = 15.0,
    ) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self._retrying = store_retrying(attempts, backoff, backoff_max)

    def _call(self, fn: Callable[[], T]) -> T:
        return self._retrying(fn)

    def keys(self, name: str, version: str) -> tuple[str, str]:
        base = f"{self.prefix}/{name}/{version}"
        return f"{base}/{MODEL_FILE}", f"{base}/{ITEM_FILE}"

    def existing(self, name: str, version: str) -> Shipment | None:
        """The committed shipment of (name, version), or None."""
        model_key, item_key = self.keys(name, version)
        try:
            item = json.loads(self._call(lambda: self.store.get_bytes(item_key)))
        except ObjectNotFoundError:
            return None
        if not self._call(lambda: self.store.exists(model_key)):
            log.warning("%s exists without %s; shipping again", item_key, model_key)
            return None
        return Shipment(
            name=name,
            version=version,
            artifact_uri=self.store.uri(model_key),
            sha256=str(item["properties"]["eostream:sha256"]),
            mlm_item_href=self.store.uri(item_key),
            already_shipped=True,
        )

    def item(self, name: str, version: str) -> dict[str, Any] | None:
        """The shipped MLM item of (name, version), or None when it was not shipped."""
        _, item_key = self.keys(name, version)
        try:
            data: dict[str, Any] = json.loads(self._call(lambda: self.store.get_bytes(item_key)))
        except ObjectNotFoundError:
            return None
        return data

    def ship(
        self,
        name: str,
        version: str,
        onnx_bytes: bytes,
        card: ModelCard,
        describe: Callable[[str, str, int], mlm.MlmFacts],
        variants: Callable[[], tuple[Variant, ...]] | None = None,
    ) -> Shipment:
        """Upload and describe; ``describe(artifact_uri, sha256, size)`` gives the MLM facts.
        ``variants()`` (called only when the version is not shipped yet) gives the files to
        ship beside the model, each checksummed like it."""
        digest = sha256_hex(onnx_bytes)
        found = self.existing(name, version)
        if found is not None:
            if found.sha256 != digest:
                raise RefusedError(
                    [
                        f"{name} v{version} was already shipped with sha256 {found.sha256}; the "
                        f"artifact now has {digest}. Register a new version instead."
                    ]
                )
            return found
        model_key, item_key = self.keys(name, version)
        extra = variants() if variants is not None else ()
        self._upload(model_key, onnx_bytes, digest)
        described: list[mlm.ModelVariant] = []
        for v in extra:
            key = f"{model_key.rsplit('/', 1)[0]}/{v.file}"
            sha = sha256_hex(v.onnx_bytes)
            self._upload(key, v.onnx_bytes, sha)
            described.append(
                mlm.ModelVariant(
                    v.key, v.precision, self.store.uri(key), sha, len(v.onnx_bytes), v.fields
                )
            )
        artifact_uri = self.store.uri(model_key)
        item_href = self.store.uri(item_key)
        facts = describe(artifact_uri, digest, len(onnx_bytes))
        facts = dataclasses.replace(facts, variants=(*facts.variants, *described))
        item = mlm.build_item(facts, item_href)
        problems = mlm.validate_item(item, card, digest)
        if problems:
            raise RefusedError([f"MLM item: {p}" for p in problems])
        body = json.dumps(item, indent=2).encode()
        self._call(lambda: self.store.put_bytes(item_key, body, "application/geo+json"))
        log.info("shipped %s v%s to %s (sha256 %s)", name, version, artifact_uri, digest[:12])
        return Shipment(name, version, artifact_uri, digest, item_href)

    def _upload(self, key: str, data: bytes, digest: str) -> None:
        """Upload ``data`` and read it back: the stored bytes must have ``digest``."""
        self._call(lambda: self.store.put_bytes(key, data, "application/octet-stream"))
        stored = sha256_hex(self._call(lambda: self.store.get_bytes(key)))
        if stored != digest:
            raise RetryableError(f"{key}: read back sha256 {stored}, expected {digest}")
