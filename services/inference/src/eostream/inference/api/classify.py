"""On-demand classification: POST a GeoTIFF (multipart) or a STAC item href. Needs the API key."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from eostream.inference import fetch
from eostream.inference.api.deps import ApiKey, PipelineDep, Settings
from eostream.inference.api.params import parse_datetime
from eostream.inference.api.results import summary
from eostream.inference.api.schemas import ClassifyResult
from eostream.inference.errors import BadInputError, NoModelError, TooLargeError
from eostream.inference.pipeline import Outcome, Pipeline, parse_item
from eostream.inference.settings import InferenceSettings
from eostream.inference.uploads import describe_bands, item_for_raster
from eostream.inference.validation import validate_item
from eostream.shared import sentinel2
from eostream.shared.errors import EostreamError
from eostream.shared.http_errors import error_responses
from eostream.shared.objects import absolute_href, rewrite_href

router = APIRouter(prefix="/classify", tags=["classify"], dependencies=[ApiKey])
CHUNK = 1 << 20
#: 400 unusable input, 401 no key, 413 too large, 422 invalid request or a scene that cannot be
#: classified as it is (bands, level, scale, model), 503 no model yet
CLASSIFY = error_responses(400, 401, 413, 422, 503)


class ItemRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_href: str = Field(
        min_length=1, max_length=4000, description="STAC item: path, s3:// or https://"
    )
    replace: bool = False
    allow_coarse: bool | None = Field(
        default=None,
        description="classify a scene much coarser than the model's GSD at its own resolution "
        "(marked eostream:coarse_scene) instead of refusing it; default: the service setting",
    )


def _rasters_opened(item: dict[str, Any], href: str, rewrites: Mapping[str, str]) -> set[str]:
    """The hrefs the pipeline may open as rasters, for any model: every band's source asset and
    the cloud mask, made absolute and rewritten as :func:`~eostream.inference.scene.prepare_scene`
    does (metadata, thumbnails and other assets are never read)."""
    raw = item.get("assets")
    assets = {
        key: {**asset, "href": rewrite_href(absolute_href(str(asset["href"]), href), rewrites)}
        for key, asset in (raw.items() if isinstance(raw, dict) else ())
        if isinstance(asset, dict) and asset.get("href")
    }
    sources, _ = sentinel2.band_sources(assets, sentinel2.SPECTRAL_ORDER)
    opened = {source.href for source in sources.values()}
    scl = sentinel2.scl_href(assets)
    return opened | {scl} if scl else opened


def load_checked_item(settings: InferenceSettings, href: str) -> dict[str, Any]:
    """The STAC item a REST user named, read only if it and every raster the pipeline may open
    from it are allowed sources (``INFERENCE_SOURCES__*``); HTTP redirects only to the same
    host, for the item and for every http(s) raster (asked before GDAL opens it)."""
    policy = fetch.source_policy(settings)
    data = fetch.read_bytes(href, s3=settings.s3, max_bytes=settings.max_item_bytes, policy=policy)
    item = parse_item(data, href)
    check_item_sources(settings, item, href)
    return item


def check_item_sources(settings: InferenceSettings, item: dict[str, Any], href: str) -> None:
    """Refuse an item a REST user gave (by href or inline) unless it is valid and every raster
    the pipeline may open from it is an allowed source, http(s) ones redirecting only to the
    same host (asked before GDAL, which follows redirects, opens them)."""
    validate_item(item, href)  # before its hrefs are read: a field of the wrong type is a 400
    policy = fetch.source_policy(settings)
    targets = sorted(_rasters_opened(item, href, settings.asset_href_rewrites))
    for target in targets:
        fetch.check_source(target, policy)
    for target in targets:
        if urlparse(target).scheme in ("http", "https"):
            fetch.check_http_raster(target, policy)


def classify_named_item(
    pipeline: Pipeline,
    settings: InferenceSettings,
    href: str,
    *,
    replace: bool = False,
    allow_coarse: bool | None = None,
) -> Outcome:
    """Classify the item a REST user named (``/classify/item``, the OGC process): its sources
    checked first, then the pipeline (which opens rasters with GTiff/COG/JPEG 2000 drivers only)."""
    if pipeline.models.current is None:
        raise NoModelError("no model is deployed yet; promote one (ModelPromoted)")
    item = load_checked_item(settings, href)
    return pipeline.classify_item(
        item, href, replace=replace, allow_coarse=allow_coarse, requested=True
    )


@router.post(
    "/item",
    summary="Classify the scene of a STAC item href now",
    response_model=ClassifyResult,
    responses=CLASSIFY,
)
async def classify_item(
    request: Request, body: ItemRequest, pipeline: PipelineDep, settings: Settings
) -> dict[str, Any]:
    outcome = await run_in_threadpool(
        classify_named_item,
        pipeline,
        settings,
        body.item_href,
        replace=body.replace,
        allow_coarse=body.allow_coarse,
    )
    return summary(outcome.record, str(request.base_url)) | {"skipped": outcome.skipped}


@contextmanager
def _without_path(folder: str) -> Iterator[None]:
    """Errors raised inside never name the server's temp folder: it becomes "upload"."""
    try:
        yield
    except EostreamError as exc:
        text = str(exc)
        if folder not in text:
            raise
        scrubbed = text.replace(f"{folder}/upload.tif", "upload").replace(folder, "upload")
        try:
            clean = type(exc)(scrubbed)
        except TypeError:
            clean = BadInputError(scrubbed)
        raise clean from None


async def _save(upload: UploadFile, target: Path, limit: int) -> str:
    digest = hashlib.sha256()
    size = 0
    with target.open("wb") as fh:
        while chunk := await upload.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise TooLargeError(f"the upload is larger than the {limit} bytes allowed")
            digest.update(chunk)
            fh.write(chunk)
    if size == 0:
        raise BadInputError("the upload is empty")
    return digest.hexdigest()


@router.post(
    "/upload",
    summary="Classify an uploaded multi-band GeoTIFF (multipart)",
    response_model=ClassifyResult,
    responses=CLASSIFY,
)
async def classify_upload(
    request: Request,
    pipeline: PipelineDep,
    settings: Settings,
    file: Annotated[UploadFile, File(description="GeoTIFF, bands as DN (reflectance x 10000)")],
    bands: Annotated[
        str | None, Form(description="band ids in file order, e.g. B04,B03,B02")
    ] = None,
    level: Annotated[Literal["L1C", "L2A"], Form()] = "L2A",
    scale: Annotated[float, Form(gt=0, le=1)] = 1e-4,
    offset: Annotated[float, Form(ge=-1, le=1)] = 0.0,
    acquired: Annotated[str | None, Form(description="acquisition time, RFC 3339")] = None,
    allow_coarse: Annotated[
        bool | None, Form(description="classify a coarse scene at its own resolution")
    ] = None,
) -> dict[str, Any]:
    # the key and the declared size were checked before the form was parsed (api/guard.py)
    when, _ = parse_datetime(acquired)
    with tempfile.TemporaryDirectory(prefix="eostream-upload-") as tmp, _without_path(tmp):
        path = Path(tmp) / "upload.tif"
        digest = await _save(file, path, settings.max_upload_bytes)
        declared = [b.strip() for b in bands.split(",") if b.strip()] if bands else None
        band_ids = await run_in_threadpool(
            describe_bands, path, declared, max_pixels=settings.max_request_pixels
        )
        item = await run_in_threadpool(
            item_for_raster,
            path,
            f"upload-{digest[:16]}",
            band_ids,
            level=level,
            scale=scale,
            offset=offset,
            when=(when or datetime.now(UTC)).isoformat(),
        )
        outcome = await run_in_threadpool(
            pipeline.classify_item,
            item,
            f"upload:{file.filename or 'upload.tif'}",
            replace=True,
            allow_coarse=allow_coarse,
            requested=True,
        )
    return summary(outcome.record, str(request.base_url)) | {"skipped": outcome.skipped}
