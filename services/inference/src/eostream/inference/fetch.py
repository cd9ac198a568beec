"""Read bytes from the URIs events carry (local paths, file://, s3://bucket/key, http(s)://)
through :mod:`eostream.shared.objects`, and open rasters through GDAL."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import rasterio
import rasterio.session

from eostream.inference.errors import BadInputError, NotFoundError
from eostream.shared import objects
from eostream.shared.errors import ObjectNotFoundError, ObjectUnreadableError
from eostream.shared.objects import local_path
from eostream.shared.settings import S3Settings

__all__ = ["gdal_env", "gdal_path", "local_path", "read_bytes"]

log = logging.getLogger(__name__)


def read_bytes(uri: str, *, s3: S3Settings | None, max_bytes: int) -> bytes:
    """:func:`eostream.shared.objects.read_bytes`, its errors told as this service's."""
    try:
        return objects.read_bytes(uri, s3=s3, max_bytes=max_bytes)
    except ObjectNotFoundError as exc:
        raise NotFoundError(str(exc)) from None
    except ObjectUnreadableError as exc:
        hint = " (INFERENCE_S3__*)" if urlparse(uri).scheme == "s3" and s3 is None else ""
        raise BadInputError(f"{exc}{hint}") from None


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
