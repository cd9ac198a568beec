"""Objects by URI and asset hrefs, read and rewritten the same way by every service."""

from __future__ import annotations

from pathlib import Path

import pytest

from eostream.shared import objects
from eostream.shared.errors import (
    ObjectNotFoundError,
    ObjectUnreadableError,
    RetryableError,
    is_transient,
)


def test_local_paths_and_file_uris_read_within_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "item.json"
    path.write_bytes(b"{}")
    assert objects.read_bytes(str(path), s3=None, max_bytes=10) == b"{}"
    assert objects.read_bytes(path.as_uri(), s3=None, max_bytes=10) == b"{}"
    with pytest.raises(ObjectUnreadableError, match="larger than 1 bytes"):
        objects.read_bytes(str(path), s3=None, max_bytes=1)
    with pytest.raises(ObjectNotFoundError, match="no such file"):
        objects.read_bytes(str(tmp_path / "gone.json"), s3=None, max_bytes=10)


def test_uris_that_cannot_be_read_say_why() -> None:
    with pytest.raises(ObjectUnreadableError, match="S3 settings"):
        objects.read_bytes("s3://bucket/key", s3=None, max_bytes=10)
    with pytest.raises(ObjectUnreadableError, match="unsupported URI scheme 'ftp'"):
        objects.read_bytes("ftp://host/x", s3=None, max_bytes=10)


def test_relative_hrefs_then_the_longest_rewrite() -> None:
    assert objects.absolute_href("B04.tif", "/data/item.json") == "/data/B04.tif"
    assert objects.absolute_href("s3://b/B04.tif", "/data/item.json") == "s3://b/B04.tif"
    bucket = "https://bucket.example/cogs/"
    rewrites = {bucket: "s3://mirror/", bucket + "29/": "/local/29/"}
    assert objects.rewrite_href(bucket + "29/B04.tif", rewrites) == "/local/29/B04.tif"
    assert objects.rewrite_href(bucket + "31/B04.tif", rewrites) == "s3://mirror/31/B04.tif"


class _Mlflowish(Exception):
    def __init__(self, message: str, error_code: str = "INTERNAL_ERROR") -> None:
        super().__init__(message)
        self.error_code = error_code


def test_transient_failures_are_told_from_the_others() -> None:
    assert is_transient(ConnectionRefusedError())
    assert is_transient(RetryableError("down"))
    assert is_transient(_Mlflowish("busy", "TEMPORARILY_UNAVAILABLE"))
    assert is_transient(_Mlflowish("API request failed with error code 503 != 200"))
    assert is_transient(_Mlflowish("HTTPConnectionPool: Max retries exceeded with url"))
    assert not is_transient(_Mlflowish("RESOURCE_DOES_NOT_EXIST", "RESOURCE_DOES_NOT_EXIST"))
    assert not is_transient(ValueError("bad card"))
