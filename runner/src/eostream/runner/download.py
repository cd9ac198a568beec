"""Downloading one file over HTTP: streamed, resumed with Range requests, checked by digest.

Used by :mod:`eostream.runner.datasets`; nothing here knows what the files are.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from eostream.shared.errors import ConfigError

_CHUNK = 1 << 16
_ATTEMPTS = 3


class DataFetchError(ConfigError):
    """A download failed or its content is not the expected one. One line: URL and digests.

    A ConfigError, so the ``eostream`` command ends with that one line and exit status 2.
    """


def mirrored(url: str, mirror: str | None) -> str:
    """``url`` on the mirror: ``<mirror>/<host>/<path>``, the query dropped; as is without one.
    A mirror that is not an http(s) URL is refused (it made 385 URLs that could not work)."""
    if not mirror:
        return url
    try:
        base = urlsplit(mirror)
        valid = base.scheme in ("http", "https") and bool(base.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise DataFetchError(f"mirror {mirror!r}: not an http(s) URL (EOSTREAM_DATA_MIRROR)")
    parts = urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


def unreachable(exc: BaseException) -> bool:
    """``exc`` (or what caused it) says the host does not answer at all: no name, no route,
    refused or timed out connecting. The other files of that host will not come either."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, httpx.ConnectError | httpx.ConnectTimeout):
            return True
        seen = seen.__cause__
    return False


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


Advance = Callable[[int], None]


def download(client: httpx.Client, url: str, part: Path, advance: Advance) -> None:
    """Stream ``url`` into ``part``, resuming a partial ``part`` with a Range request."""
    for attempt in range(1, _ATTEMPTS + 1):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with client.stream("GET", url, headers=headers) as response:
                if response.status_code == 416:  # nothing after offset: complete, or too long
                    if response.headers.get("content-range") == f"bytes */{offset}":
                        advance(offset)
                        return
                    part.unlink()
                    continue
                if response.status_code >= 500 and attempt < _ATTEMPTS:
                    time.sleep(attempt)
                    continue
                if response.status_code >= 400:
                    raise DataFetchError(f"{url}: HTTP {response.status_code}")
                resumed = offset > 0 and response.status_code == 206
                if resumed:
                    advance(offset)
                with part.open("ab" if resumed else "wb") as f:
                    for chunk in response.iter_bytes(_CHUNK):
                        f.write(chunk)
                        advance(len(chunk))
            return
        except httpx.TransportError as exc:  # the next attempt resumes from what arrived
            if attempt == _ATTEMPTS:
                raise DataFetchError(f"{url}: download failed ({exc!r})") from exc
            time.sleep(attempt)
    raise DataFetchError(f"{url}: no complete answer in {_ATTEMPTS} attempts")


def fetch_verified(
    client: httpx.Client, url: str, final: Path, expected: str, advance: Advance,
    *, algorithm: str = "sha256",
) -> None:  # fmt: skip
    """Download ``url`` to ``final`` through ``final.part``; a digest other than ``expected``
    deletes the download and raises :class:`DataFetchError` naming the URL and both digests."""
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    download(client, url, part, advance)
    actual = file_digest(part, algorithm)
    if actual != expected:
        part.unlink()
        raise DataFetchError(
            f"{url}: {algorithm} {actual} but the manifest expects {expected}; "
            "the download was deleted (a changed or corrupted source, or a wrong mirror)"
        )
    part.replace(final)
