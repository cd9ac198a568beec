"""The object-store port: what services need of S3, and nothing more."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from eostream.shared.errors import InvalidKeyError

MAX_KEY_BYTES = 1024
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise InvalidKeyError.

    Keys are ``/``-separated, relative, with no empty, ``.`` or ``..`` segments, no control
    characters or backslashes, and at most 1024 UTF-8 bytes (the S3 limit).
    """
    if not isinstance(key, str) or not key:
        raise InvalidKeyError("an object key must be a non-empty string")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"object key is longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise InvalidKeyError(f"object key {key!r} is absolute; keys are relative to the bucket")
    if _FORBIDDEN_CHARS.search(key):
        raise InvalidKeyError(f"object key {key!r} has a control character or a backslash")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKeyError(f"object key {key!r} has an empty, '.' or '..' segment")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a valid key optionally ending in '/'."""
    if prefix:
        validate_key(prefix.removesuffix("/"))
    return prefix


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


@runtime_checkable
class ObjectStore(Protocol):
    """Blocking API; async callers wrap calls in ``asyncio.to_thread``."""

    @property
    def bucket(self) -> str: ...

    def check(self) -> None:
        """Fail with ConfigError when the store cannot be used (credentials, endpoint)."""

    def put_bytes(self, key: str, data: bytes, content_type: str = ...) -> None: ...

    def put_file(self, key: str, path: Path, content_type: str = ...) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def get_file(self, key: str, path: Path) -> None: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def uri(self, key: str) -> str:
        """A URI that names the object (s3://bucket/key or file:///...)."""
