"""Objects named by URI, read the same way by every service (ADR 0010).

Events and STAC items name objects by URI: a local path, ``file://``, ``s3://bucket/key`` or
``http(s)://``. :func:`read_bytes` reads any of them; :func:`bucket_reader` gives the
``(bucket, key) -> bytes`` function that pystac-style readers take; :func:`absolute_href` and
:func:`rewrite_href` turn an asset's href into the one to open (relative to its item, then
pointed at a mirror of the original bucket).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urljoin, urlparse

from eostream.shared import sources_policy
from eostream.shared.errors import ObjectNotFoundError, ObjectUnreadableError, RetryableError
from eostream.shared.settings import S3Settings
from eostream.shared.sources_policy import SourcePolicy

if TYPE_CHECKING:
    import httpx

HTTP_TIMEOUT_SECONDS = 30.0
MAX_REDIRECTS = 5


def local_path(uri: str) -> Path | None:
    """The file a local URI names (a path, ``file://``, ``C:\\...``), or None for a remote one."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in (":/", ":\\")):
        return Path(uri)
    return None


def bucket_reader(s3: S3Settings) -> Callable[[str, str], bytes]:
    """``read(bucket, key) -> bytes`` through the shared S3 store, one client per bucket."""
    from eostream.shared.storage.s3 import S3ObjectStore

    stores: dict[str, S3ObjectStore] = {}

    def read(bucket: str, key: str) -> bytes:
        if bucket not in stores:
            stores[bucket] = S3ObjectStore(s3, bucket)
        return stores[bucket].get_bytes(key)

    return read


def read_bytes(
    uri: str, *, s3: S3Settings | None, max_bytes: int, policy: SourcePolicy | None = None
) -> bytes:
    """The object's bytes.

    With a ``policy`` (a URI a REST user named), the URI must be allowed by it
    (:func:`eostream.shared.sources_policy.check`) and an HTTP redirect is followed only to the
    same scheme, host and port, itself allowed; anything else raises SourceNotAllowedError.

    Raises ObjectNotFoundError (no such file, key or 404), ObjectUnreadableError (larger than
    ``max_bytes``, an unknown scheme, s3:// without S3 settings, another 4xx) or RetryableError
    (a network error or a 5xx).
    """
    if policy is not None:
        sources_policy.check(uri, policy)
    try:
        path = local_path(uri)
        parsed = urlparse(uri)
    except ValueError:  # "http://[bad/x"
        raise ObjectUnreadableError(f"{uri}: not a URL") from None
    if path is not None:
        if not path.is_file():
            raise ObjectNotFoundError(f"{uri}: no such file")
        if path.stat().st_size > max_bytes:
            raise ObjectUnreadableError(f"{uri}: larger than {max_bytes} bytes")
        return path.read_bytes()
    if parsed.scheme == "s3":
        if s3 is None:
            raise ObjectUnreadableError(f"{uri}: an s3:// URI needs the service's S3 settings")
        try:
            return bucket_reader(s3)(parsed.netloc, parsed.path.lstrip("/"))
        except ObjectNotFoundError as exc:
            raise ObjectNotFoundError(f"{uri}: {exc}") from None
    if parsed.scheme in ("http", "https"):
        response = _http_get(uri, policy)
        if response.status_code == 404:
            raise ObjectNotFoundError(f"{uri}: 404 Not Found")
        if response.status_code >= 500:
            raise RetryableError(f"{uri}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise ObjectUnreadableError(f"{uri}: HTTP {response.status_code}")
        if len(response.content) > max_bytes:
            raise ObjectUnreadableError(f"{uri}: larger than {max_bytes} bytes")
        return response.content
    raise ObjectUnreadableError(
        f"{uri}: unsupported URI scheme {parsed.scheme!r} (use file, s3 or https)"
    )


def _http_get(uri: str, policy: SourcePolicy | None) -> httpx.Response:
    import httpx

    if policy is None:
        try:
            return httpx.get(uri, timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise RetryableError(f"{uri}: {exc}") from exc
    origin = urlparse(uri)
    current = uri
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = httpx.get(current, timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise RetryableError(f"{uri}: {exc}") from exc
        if not response.is_redirect:
            return response
        try:
            target = urlparse(urljoin(current, response.headers.get("location", "")))
        except ValueError:
            raise sources_policy.SourceNotAllowedError("a redirect to no URL") from None
        if (target.scheme, target.netloc) != (origin.scheme, origin.netloc):
            raise sources_policy.SourceNotAllowedError("a redirect to another host")
        current = target.geturl()
        sources_policy.check(current, policy)
    raise sources_policy.SourceNotAllowedError("too many redirects")


def absolute_href(href: str, item_href: str) -> str:
    """An asset href relative to its item's href made absolute (absolute ones stay)."""
    if "://" in href or href.startswith("/"):
        return href
    base = item_href.rsplit("/", 1)[0] if "/" in item_href else "."
    return f"{base}/{href}"


def rewrite_href(href: str, rewrites: Mapping[str, str]) -> str:
    """Apply the longest matching prefix rewrite (a mirror of the original bucket)."""
    for prefix in sorted(rewrites, key=len, reverse=True):
        if href.startswith(prefix):
            return rewrites[prefix] + href[len(prefix) :]
    return href
