"""Read bytes from the URIs events carry: local paths, file://, s3://bucket/key, http(s)://."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
import rasterio
import rasterio.session

from eostream.inference.errors import BadInputError, NotFoundError
from eostream.shared.errors import ObjectNotFoundError, RetryableError
from eostream.shared.settings import S3Settings

log = logging.getLogger(__name__)


def local_path(uri: str) -> Path | None:
    """The file a local URI names, or None for a remote one."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in (":/", ":\\")):
        return Path(uri)
    return None


def read_bytes(uri: str, *, s3: S3Settings | None, max_bytes: int) -> bytes:
    path = local_path(uri)
    parsed = urlparse(uri)
    if path is not None:
        if not path.is_file():
            raise NotFoundError(f"{uri}: no such file")
        if path.stat().st_size > max_bytes:
            raise BadInputError(f"{uri}: larger than {max_bytes} bytes")
        return path.read_bytes()
    if parsed.scheme == "s3":
        if s3 is None:
            raise BadInputError(f"{uri}: an s3:// URI needs the S3 settings (INFERENCE_S3__*)")
        from eostream.shared.storage.s3 import S3ObjectStore

        store = S3ObjectStore(s3, parsed.netloc)
        try:
            return store.get_bytes(parsed.path.lstrip("/"))
        except ObjectNotFoundError as exc:
            raise NotFoundError(f"{uri}: {exc}") from None
    if parsed.scheme in ("http", "https"):
        try:
            response = httpx.get(uri, timeout=30.0, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise RetryableError(f"{uri}: {exc}") from exc
        if response.status_code == 404:
            raise NotFoundError(f"{uri}: 404 Not Found")
        if response.status_code >= 500:
            raise RetryableError(f"{uri}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise BadInputError(f"{uri}: HTTP {response.status_code}")
        if len(response.content) > max_bytes:
            raise BadInputError(f"{uri}: larger than {max_bytes} bytes")
        return response.content
    raise BadInputError(f"{uri}: unsupported URI scheme {parsed.scheme!r} (use file, s3 or https)")


def gdal_path(href: str) -> str:
    """An href rasterio can open (it maps s3:// and https:// to /vsis3/ and /vsicurl/)."""
    path = local_path(href)
    return str(path) if path is not None else href


class _S3EndpointSession(rasterio.session.Session):  # type: ignore[misc]
    """Credentials for an S3-compatible endpoint as GDAL options (no boto3 needed)."""

    def __init__(self, options: dict[str, str]) -> None:
        self._options = options

    @classmethod
    def hascreds(cls, config: dict[str, Any]) -> bool:
        return True

    @property
    def credentials(self) -> dict[str, str]:
        return dict(self._options)

    def get_credential_options(self) -> dict[str, str]:
        return dict(self._options)


def gdal_env(s3: S3Settings | None, cache_mb: int = 256) -> Callable[[], rasterio.Env]:
    """A factory of rasterio Envs for COGs over HTTP and an S3 endpoint.

    GDAL keeps configuration per thread in child threads, so every thread that opens or reads
    enters its own Env from this factory.
    """
    options: dict[str, str | int] = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
        "GDAL_HTTP_MAX_RETRY": "2",
        "GDAL_HTTP_TIMEOUT": "30",
        "GDAL_CACHEMAX": cache_mb,
    }
    credentials: dict[str, str] = {}
    if s3 is not None:
        credentials = {
            "AWS_S3_ENDPOINT": s3.endpoint,
            "AWS_ACCESS_KEY_ID": s3.access_key.get_secret_value(),
            "AWS_SECRET_ACCESS_KEY": s3.secret_key.get_secret_value(),
            "AWS_HTTPS": "YES" if s3.secure else "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
        }
        if s3.region:
            credentials["AWS_REGION"] = s3.region

    def make() -> rasterio.Env:
        if credentials:
            return rasterio.Env(session=_S3EndpointSession(credentials), **options)
        return rasterio.Env(**options)

    return make
