"""Object store on the local file system: the embedded mode's store."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from eostream.shared.errors import ConfigError, ObjectNotFoundError
from eostream.shared.storage.base import ObjectInfo, validate_key, validate_prefix

DEFAULT_CONTENT_TYPE = "application/octet-stream"


class LocalObjectStore:
    """Objects are files under ``root/bucket``; writes are atomic (temp file, then rename)."""

    def __init__(self, root: Path, bucket: str) -> None:
        self._root = root.resolve()
        self._bucket = bucket
        self._base = self._root / bucket

    @property
    def bucket(self) -> str:
        return self._bucket

    def check(self) -> None:
        try:
            self._base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use local object store at {self._base}: {exc}") from None
        if not os.access(self._base, os.W_OK):
            raise ConfigError(f"local object store {self._base} is not writable")

    def _path(self, key: str) -> Path:
        path = self._base / validate_key(key)
        # validate_key already forbids traversal; this guards against symlinks inside the store
        if not path.resolve().is_relative_to(self._base.resolve()):
            raise ObjectNotFoundError(f"{key} resolves outside the store")
        return path

    def put_bytes(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: Path, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object {key!r} in {self._bucket}") from None

    def get_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFoundError(f"no object {key!r} in {self._bucket}")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        if not self._base.is_dir():
            return
        found = []
        for dirpath, _dirnames, filenames in os.walk(self._base):
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self._base).as_posix()
                if key.startswith(prefix):
                    found.append(ObjectInfo(key=key, size=full.stat().st_size))
        yield from sorted(found, key=lambda info: info.key)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()
