"""One contract for the object store, run unchanged against local files and real MinIO."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eostream.shared.errors import (
    ConfigError,
    InvalidKeyError,
    ObjectNotFoundError,
    RetryableError,
)
from eostream.shared.settings import S3Settings
from eostream.shared.storage import ObjectStore
from eostream.shared.storage.local import LocalObjectStore
from eostream.shared.storage.s3 import S3ObjectStore


def s3_settings(endpoint: str, access: str, secret: str) -> S3Settings:
    return S3Settings.model_validate(
        {"endpoint": endpoint, "access_key": access, "secret_key": secret}
    )


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.stack)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    bucket = f"contract-{uuid.uuid4().hex[:12]}"
    made: ObjectStore
    if request.param == "local":
        made = LocalObjectStore(tmp_path / "objects", bucket)
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        access, secret = request.getfixturevalue("s3_credentials")
        made = S3ObjectStore(s3_settings(endpoint, access, secret), bucket)
    made.check()
    yield made
    for info in list(made.list()):
        made.delete(info.key)


def test_bytes_round_trip_and_overwrite(store: ObjectStore) -> None:
    store.put_bytes("maps/2024/scene.tif", b"first")
    assert store.get_bytes("maps/2024/scene.tif") == b"first"
    store.put_bytes("maps/2024/scene.tif", b"second, longer")
    assert store.get_bytes("maps/2024/scene.tif") == b"second, longer"


def test_files_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(bytes(range(256)) * 4096)
    store.put_file("models/m/1/model.onnx", source)
    target = tmp_path / "out" / "copy.onnx"
    store.get_file("models/m/1/model.onnx", target)
    assert target.read_bytes() == source.read_bytes()


def test_exists_delete_and_missing_objects(store: ObjectStore) -> None:
    assert not store.exists("a/b.json")
    store.put_bytes("a/b.json", b"{}")
    assert store.exists("a/b.json")
    store.delete("a/b.json")
    assert not store.exists("a/b.json")
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("a/b.json")
    store.delete("a/b.json")  # deleting a missing object is not an error


def test_list_by_prefix_is_sorted_and_complete(store: ObjectStore) -> None:
    for key in ["results/s2/b.json", "results/s2/a.json", "results/l8/c.json", "other.txt"]:
        store.put_bytes(key, key.encode())
    listed = [(i.key, i.size) for i in store.list("results/s2/")]
    assert listed == [("results/s2/a.json", 17), ("results/s2/b.json", 17)]
    assert [i.key for i in store.list()] == sorted(
        ["results/s2/b.json", "results/s2/a.json", "results/l8/c.json", "other.txt"]
    )


def test_uri_names_the_object(store: ObjectStore) -> None:
    store.put_bytes("x/y.bin", b"1")
    uri = store.uri("x/y.bin")
    assert uri.endswith("/x/y.bin")
    assert uri.startswith(("s3://", "file://"))


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../b",
        "a//b",
        "a/./b",
        "a\\b",
        "nul\x00byte",
        "x" * 1025,
    ],
)
def test_unsafe_keys_are_refused_everywhere(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidKeyError):
        store.get_bytes(key)
    with pytest.raises(InvalidKeyError):
        store.exists(key)


@pytest.mark.stack
def test_bad_s3_credentials_fail_with_one_clear_line(s3_endpoint: str) -> None:
    bad = S3ObjectStore(s3_settings(s3_endpoint, "nobody", "wrong-secret-123"), "eostream")
    with pytest.raises(ConfigError) as caught:
        bad.check()
    message = str(caught.value)
    assert "rejected the credentials" in message
    assert "\n" not in message


@pytest.mark.stack
def test_a_bucket_made_by_another_replica_meanwhile_is_no_error(
    s3_endpoint: str, s3_credentials: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas starting at once both find no bucket and both make it: MinIO answers the
    second one BucketAlreadyOwnedByYou, which must not stop that replica."""
    settings = s3_settings(s3_endpoint, *s3_credentials)
    bucket = f"contract-{uuid.uuid4().hex[:12]}"
    first, second = S3ObjectStore(settings, bucket), S3ObjectStore(settings, bucket)
    # the second asked before the first made the bucket
    monkeypatch.setattr(second._client, "bucket_exists", lambda _name: False)
    first.check()
    try:
        second.check()
        second.put_bytes("made-twice", b"ok")
        assert first.get_bytes("made-twice") == b"ok"
    finally:
        for info in list(first.list()):
            first.delete(info.key)
        first._client.remove_bucket(bucket)


def test_unreachable_s3_fails_with_one_clear_line() -> None:
    unreachable = S3ObjectStore(s3_settings("127.0.0.1:9", "a", "b"), "eostream")
    with pytest.raises(ConfigError, match="unreachable"):
        unreachable.check()


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: bound by us, then closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    "call", ["put_bytes", "get_bytes", "put_file", "get_file", "exists", "delete", "list"]
)
def test_reads_and_writes_on_a_store_that_went_down_are_retryable(
    call: str, tmp_path: Path
) -> None:
    """MinIO down after the service started (connection refused): reads and writes raise
    RetryableError, which consumers and the bridge's Shipper retry with backoff (the bridge's
    tests/test_retries.py stands in a store that fails this way). The client's own urllib3
    retries (3, backoff 0.2 s) end it in about a second."""
    store = S3ObjectStore(s3_settings(f"127.0.0.1:{_closed_port()}", "a", "b"), "eostream")
    source = tmp_path / "model.onnx"
    source.write_bytes(b"onnx")
    calls: dict[str, Callable[[], object]] = {
        "put_bytes": lambda: store.put_bytes("models/m/1/model.onnx", b"onnx"),
        "get_bytes": lambda: store.get_bytes("models/m/1/model.onnx"),
        "put_file": lambda: store.put_file("models/m/1/model.onnx", source),
        "get_file": lambda: store.get_file("models/m/1/model.onnx", tmp_path / "copy.onnx"),
        # the bridge's Shipper asks exists() inside the retry that catches RetryableError
        "exists": lambda: store.exists("models/m/1/model.onnx"),
        "delete": lambda: store.delete("models/m/1/model.onnx"),
        "list": lambda: list(store.list("models/")),
    }
    with pytest.raises(RetryableError, match=r"S3 127\.0\.0\.1:"):
        calls[call]()
