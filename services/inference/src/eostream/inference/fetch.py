"""Read bytes from the URIs events carry (local paths, file://, s3://bucket/key, http(s)://)
through :mod:`eostream.shared.objects`, and open rasters through GDAL."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urljoin, urlparse

import rasterio
import rasterio.session

from eostream.inference.errors import BadInputError, NotFoundError, SourceNotAllowedError
from eostream.inference.settings import InferenceSettings
from eostream.shared import objects, sources_policy
from eostream.shared.errors import ObjectNotFoundError, ObjectUnreadableError
from eostream.shared.objects import local_path
from eostream.shared.settings import S3Settings
from eostream.shared.sources_policy import SourcePolicy
from eostream.shared.storage import ObjectStore

__all__ = [
    "RASTER_DRIVERS",
    "check_http_raster",
    "check_source",
    "gdal_env",
    "gdal_path",
    "local_path",
    "open_raster",
    "read_bytes",
    "source_policy",
]

log = logging.getLogger(__name__)
#: The only GDAL drivers a raster is opened with: no VRT (it reads other files and URLs), no
#: raw formats, whatever a file's name says.
RASTER_DRIVERS = ("GTiff", "COG", "JP2OpenJPEG")


def open_raster(path: str, drivers: Sequence[str] = RASTER_DRIVERS) -> Any:
    """Open a raster for reading with only ``drivers`` tried (GDAL's allowed-drivers list).

    ``rasterio.open`` documents a list of drivers but 1.4 refuses one (TypeError), so this builds
    its reader directly. Call it inside a ``rasterio.Env`` (``gdal_env``'s, or a plain one).
    """
    from rasterio._path import _parse_path
    from rasterio.io import DatasetReader

    return DatasetReader(_parse_path(path), driver=list(drivers))


def source_policy(settings: InferenceSettings) -> SourcePolicy:
    """What a REST request may name: the allowed roots, the data folder, the service's store."""
    roots = list(settings.sources.allowed_roots)
    data_dir = settings.data_dir or os.environ.get("EOSTREAM_DATA_DIR")
    if data_dir:
        roots.append(str(data_dir))
    if settings.store == "local":
        roots.append(str(settings.local_store_root))
    else:
        roots.append(f"s3://{settings.bucket}")
    return SourcePolicy.build(
        roots, settings.sources.allowed_hosts, settings.sources.allowed_networks
    )


#: a key whose URI, less the key, is the store's root (``s3://bucket``, ``file:///root/bucket``)
_PROBE = "eostream-probe"


def store_root(store: ObjectStore) -> str:
    """The root of ``store`` as a policy root: ``s3://bucket``, or its local folder."""
    root = store.uri(_PROBE).removesuffix("/" + _PROBE)
    path = local_path(root)
    return str(path) if path is not None else root


def promotion_policy(settings: InferenceSettings, store: str | None = None) -> SourcePolicy:
    """Where a promotion on the bus may name its files: the service's own store (``store``,
    :func:`store_root` of the one it was built with, where the registry-bridge ships them; else
    the settings') and ``settings.model_roots``; no http(s) host."""
    roots = list(settings.model_roots)
    if store is not None:
        roots.append(store)
    elif settings.store == "local":
        roots.append(str(settings.local_store_root))
    else:
        roots.append(f"s3://{settings.bucket}")
    return SourcePolicy.build(roots)


#: what the service's own model reader reads; a ModelSource plugged in for another scheme (a
#: registry client, a cache) decides itself what it reads
READ_SCHEMES = frozenset({"", "file", "s3", "http", "https"})


def check_promoted(uri: str, settings: InferenceSettings, store: str | None = None) -> None:
    """Raise :class:`sources_policy.SourceNotAllowedError` (with its reason) unless a promotion's
    file ``uri`` lies where models ship (:func:`promotion_policy`)."""
    if urlparse(uri).scheme in READ_SCHEMES:
        sources_policy.check(uri, promotion_policy(settings, store))


def check_source(uri: str, policy: SourcePolicy) -> None:
    """Raise this service's SourceNotAllowedError (one message; the reason is logged)."""
    try:
        sources_policy.check(uri, policy)
    except sources_policy.SourceNotAllowedError as exc:
        log.warning("refused source %r: %s", uri, exc.reason)
        raise SourceNotAllowedError(sources_policy.GENERIC) from None


#: Redirects a REST-named raster URL may take, all on its own host.
MAX_REDIRECTS = 3


def check_http_raster(uri: str, policy: SourcePolicy) -> None:
    """A raster href over http(s) that a REST user named, asked before GDAL opens it: GDAL's HTTP
    client follows every redirect (it has no switch), so the URL must answer (a 1-byte range)
    without a redirect to another host, each hop an allowed source. A refusal and a server that
    cannot be reached get the same one message."""
    import httpx

    check_source(uri, policy)  # refuses what is not a URL before it is parsed here
    origin = urlparse(uri)
    current = uri
    for hop in range(MAX_REDIRECTS + 1):
        if hop:
            check_source(current, policy)
        try:
            with httpx.stream(
                "GET",
                current,
                headers={"Range": "bytes=0-0"},
                timeout=10.0,
                follow_redirects=False,
            ) as response:
                location = response.headers.get("location", "") if response.is_redirect else None
        except httpx.HTTPError as exc:
            log.warning("refused source %r: %s", uri, exc)
            raise SourceNotAllowedError(sources_policy.GENERIC) from None
        if location is None:
            return
        try:
            target = urlparse(urljoin(current, location))
        except ValueError:
            log.warning("refused source %r: a redirect to no URL (%r)", uri, location)
            raise SourceNotAllowedError(sources_policy.GENERIC) from None
        if (target.scheme, target.netloc) != (origin.scheme, origin.netloc):
            log.warning("refused source %r: a redirect to another host (%s)", uri, target.netloc)
            raise SourceNotAllowedError(sources_policy.GENERIC)
        current = target.geturl()
    log.warning("refused source %r: too many redirects", uri)
    raise SourceNotAllowedError(sources_policy.GENERIC)


def read_bytes(
    uri: str, *, s3: S3Settings | None, max_bytes: int, policy: SourcePolicy | None = None
) -> bytes:
    """:func:`eostream.shared.objects.read_bytes`, its errors told as this service's."""
    try:
        return objects.read_bytes(uri, s3=s3, max_bytes=max_bytes, policy=policy)
    except sources_policy.SourceNotAllowedError as exc:
        log.warning("refused source %r: %s", uri, exc.reason)
        raise SourceNotAllowedError(sources_policy.GENERIC) from None
    except ObjectNotFoundError as exc:
        raise NotFoundError(str(exc)) from None
    except ObjectUnreadableError as exc:
        hint = " (INFERENCE_S3__*)" if uri.startswith("s3://") and s3 is None else ""
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
        # no probing: no directory listing or sidecar lookups next to a raster (.aux.xml, .ovr,
        # .msk, world files), /vsicurl/ only for raster extensions, bounded retries and waits
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_PAM_ENABLED": "NO",
        "GDAL_GEOREF_SOURCES": "INTERNAL",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2,.JP2",
        "GDAL_HTTP_MAX_RETRY": "2",
        "GDAL_HTTP_TIMEOUT": "30",
        "GDAL_HTTP_CONNECTTIMEOUT": "10",
        # GDAL has no switch to refuse redirects: credentials never follow one, no .netrc, and
        # REST-named hrefs were checked (allowed host, public address, no redirect elsewhere)
        "CPL_VSIL_CURL_AUTHORIZATION_HEADER_ALLOWED_IF_REDIRECT": "NO",
        "GDAL_HTTP_NETRC": "NO",
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
