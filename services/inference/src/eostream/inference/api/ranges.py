"""HTTP Range requests on objects of the store, so GDAL and QGIS read a result COG remotely
(``/vsicurl/``): ``Accept-Ranges: bytes``, ``206 Partial Content`` for one byte range, ``416``
for a range past the end, ``HEAD`` with the length.

The bytes are proxied (a ranged read of the local file, a ranged GetObject on S3/MinIO), never
redirected to a presigned URL: the bucket stays private and its endpoint need not be reachable
by clients (the local stack's MinIO listens on 127.0.0.1), an href saved in a QGIS project does
not expire, and reads go through the same (public) access rule as every result read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from fastapi import Request, Response

from eostream.shared.errors import ObjectNotFoundError
from eostream.shared.storage import ObjectStore

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _local_path(store: ObjectStore, key: str) -> Path | None:
    uri = store.uri(key)
    if not uri.startswith("file://"):
        return None
    return Path(unquote(urlparse(uri).path))


def _s3(store: ObjectStore) -> Any:
    return getattr(store, "_client", None) if store.uri("x").startswith("s3://") else None


def object_size(store: ObjectStore, key: str) -> int:
    path = _local_path(store, key)
    if path is not None:
        if not path.is_file():
            raise ObjectNotFoundError(f"no object {key!r}")
        return path.stat().st_size
    client = _s3(store)
    if client is not None:
        from minio.error import S3Error

        try:
            return int(client.stat_object(store.bucket, key).size)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                raise ObjectNotFoundError(f"no object {key!r}") from None
            raise
    return len(store.get_bytes(key))


def read_range(store: ObjectStore, key: str, start: int, length: int) -> bytes:
    path = _local_path(store, key)
    if path is not None:
        with path.open("rb") as f:
            f.seek(start)
            return f.read(length)
    client = _s3(store)
    if client is not None:
        response = client.get_object(store.bucket, key, offset=start, length=length)
        try:
            data: bytes = response.read()
            return data
        finally:
            response.close()
            response.release_conn()
    return store.get_bytes(key)[start : start + length]


class Unsatisfiable(ValueError):
    """A byte range that starts past the end of the object."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``bytes=`` range; None to answer the whole object (no
    header, several ranges or another unit: the server may ignore a Range it does not
    serve, or an invalid one: its last byte before its first, which RFC 9110 says to ignore);
    :class:`Unsatisfiable` for a range that starts past the end."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        n = _position(last)
        if n == 0:
            raise Unsatisfiable(header)
        return max(0, size - n), size - 1
    start = _position(first)
    if last and _position(last) < start:  # an invalid range-spec: the header is ignored
        return None
    end = min(_position(last), size - 1) if last else size - 1
    if start >= size:
        raise Unsatisfiable(header)
    return start, end


#: Stands for any position of more digits than an object's size can have (int() refuses
#: texts of over 4300 digits, and such numbers mean the same past the end of any object).
_FAR = 1 << 63


def _position(digits: str) -> int:
    """A byte position of a Range header: a run of ASCII digits, however long."""
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= 18 else _FAR


def ranged_object(request: Request, store: ObjectStore, key: str, media_type: str) -> Response:
    size = object_size(store, key)
    headers = {"Accept-Ranges": "bytes"}
    if request.method == "HEAD":
        return Response(
            status_code=200,
            media_type=media_type,
            headers={**headers, "Content-Length": str(size)},
        )
    try:
        wanted = parse_range(request.headers.get("range"), size)
    except Unsatisfiable:
        body = {
            "code": "range_not_satisfiable",
            "description": f"the range {request.headers.get('range')} is past the end of the "
            f"object ({size} bytes)",
        }
        return Response(
            json.dumps(body),
            status_code=416,
            media_type="application/json",
            headers={**headers, "Content-Range": f"bytes */{size}"},
        )
    if wanted is None:
        return Response(read_range(store, key, 0, size), media_type=media_type, headers=headers)
    start, end = wanted
    data = read_range(store, key, start, end - start + 1)
    return Response(
        data,
        status_code=206,
        media_type=media_type,
        headers={**headers, "Content-Range": f"bytes {start}-{end}/{size}"},
    )
