"""/tiles: XYZ tiles, TileJSON and WMTS capabilities of a result's land-cover map (its class colour
map) and of its scene's true colour, served by titiler's TilerFactory over rio-tiler readers.

A request names a scene id (and optionally a model name and version), never a path or URL: the path
dependencies below look the result up and give the readers what the service stored itself
(:mod:`eostream.inference.maptiles`). Only the tile, TileJSON and WMTS routes are registered;
expressions, band indexes, algorithms, rescaling and colour maps from the query are not offered.
"""

from __future__ import annotations

from typing import Annotated, Any

import morecantile
from attrs import define
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.routing import APIRoute
from titiler.core.dependencies import DefaultDependency
from titiler.core.factory import TilerFactory

from eostream.inference import fetch, maptiles
from eostream.inference.api import wmts
from eostream.inference.api.deps import Service, get_served
from eostream.inference.api.results import _one
from eostream.inference.errors import BadInputError
from eostream.inference.results import ResultRecord
from eostream.shared.http_errors import error_responses

#: The tile matrix sets served: web maps (XYZ) and plain latitude/longitude.
TMS = morecantile.TileMatrixSets(
    {
        "WebMercatorQuad": morecantile.tms.get("WebMercatorQuad"),
        "WorldCRS84Quad": morecantile.tms.get("WorldCRS84Quad"),
    }
)
#: The largest tile (pixels on a side) a request may ask for.
MAX_TILESIZE = 1024
ERRORS = error_responses(400, 404, 422)

SceneId = Annotated[str, Path(max_length=256, description="The scene id of a result")]
ModelVersion = Annotated[
    str | None,
    Query(
        max_length=100,
        description="The model version of the result (default: the served model's, else the "
        "latest). Versions are numbered per registered model: without model_name, the newest "
        "result of any model with this version",
    ),
]
ModelName = Annotated[
    str | None,
    Query(max_length=200, description="The registered model's name (default: any model)"),
]


def _record(
    service: Any, scene_id: str, model_version: str | None, model_name: str | None
) -> ResultRecord:
    return _one(service.results, scene_id, model_version, model_name, get_served(service))


def _env(service: Any) -> maptiles.EnvFactory:
    s = service.settings
    return fetch.gdal_env(s.s3, s.gdal_cache_mb)


def result_path(
    scene_id: SceneId,
    service: Service,
    model_version: ModelVersion = None,
    model_name: ModelName = None,
) -> maptiles.ResultSource:
    """The result's class COG (a request cannot name another file)."""
    record = _record(service, scene_id, model_version, model_name)
    uri = service.store.uri(f"{record.prefix}/classification.tif")
    return maptiles.result_source(record, uri, _env(service))


def scene_path(
    scene_id: SceneId,
    service: Service,
    model_version: ModelVersion = None,
    model_name: ModelName = None,
) -> maptiles.SceneSource:
    """The true-colour bands of the scene the result was made from. A scene a REST request named
    (``eostream:sources_checked``; and any result that does not say) is read again only from
    the sources a request may name (``INFERENCE_SOURCES__*``), its item and every band, else
    422: the item may have changed since. A scene announced on the bus is read as the pipeline
    read it: ingest took it from its configured sources (a STAC API on the private network)."""
    record = _record(service, scene_id, model_version, model_name)
    s = service.settings
    props = record.item.get("properties") or {}
    from_bus = props.get("eostream:sources_checked") is False
    policy = None if from_bus else fetch.source_policy(s)
    href = maptiles.scene_href(record)
    item = maptiles.read_scene_item(href, s.s3, s.max_item_bytes, policy)
    bands = maptiles.scene_bands(item, href, s.asset_href_rewrites)
    maptiles.check_band_sources(bands, policy)
    return maptiles.SceneSource(scene_id=scene_id, bands=bands, env=_env(service))


def bounded_tilesize(request: Request) -> None:
    """Refuse tiles larger than MAX_TILESIZE before any pixel is read."""
    value = request.query_params.get("tilesize")
    # ASCII digits, and few: str.isdigit takes "²", which int() refuses, as it does 5,000 digits
    if (
        value is not None
        and value.isascii()
        and value.isdigit()
        and (len(value) > len(str(MAX_TILESIZE)) or int(value) > MAX_TILESIZE)
    ):
        raise BadInputError(f"tilesize is at most {MAX_TILESIZE} pixels")


def _no_colormap() -> None:
    return None


def _no_process() -> None:
    return None


@define(kw_only=True)
class MapTiles(TilerFactory):
    """TilerFactory with only its tile and TileJSON routes, and a WMTS capabilities route."""

    layer_name: str = "map"

    def register_routes(self) -> None:
        self.tile()  # type: ignore[no-untyped-call]
        self.tilejson()  # type: ignore[no-untyped-call]
        self.wmts()

    def wmts(self) -> None:
        factory = self

        @self.router.get(
            "/{tileMatrixSetId}/WMTSCapabilities.xml",
            response_class=Response,
            responses={200: {"content": {"application/xml": {}}}},
            summary="OGC WMTS capabilities (KVP-free RESTful tile URLs)",
            operation_id=f"{self.operation_prefix}getWMTSCapabilities",
        )
        def wmts_capabilities(
            request: Request,
            tileMatrixSetId: Annotated[str, Path(pattern="^(WebMercatorQuad|WorldCRS84Quad)$")],
            # a default, not Annotated: the annotations are strings, and `self` is no global
            src_path: Any = Depends(self.path_dependency),  # noqa: B008
        ) -> Response:
            tms = factory.supported_tms.get(tileMatrixSetId)
            with factory.reader(src_path, tms=tms) as src:
                bounds = src.get_geographic_bounds(tms.rasterio_geographic_crs)
                minzoom, maxzoom = src.minzoom, src.maxzoom
            template = factory.url_for(
                request, "tile", tileMatrixSetId=tileMatrixSetId, z="{z}", x="{x}", y="{y}"
            )
            template = template.replace("{z}", "{TileMatrix}").replace("{x}", "{TileCol}")
            template = template.replace("{y}", "{TileRow}") + ".png"
            query = request.url.query
            body = wmts.capabilities(
                # a result's layer names its model version (the scene's true colour: the scene)
                title=f"{factory.layer_name} "
                + (getattr(src_path, "title", "") or request.path_params.get("scene_id", "")),
                layer=factory.layer_name,
                tms=tms,
                bounds=bounds,
                minzoom=minzoom,
                maxzoom=min(maxzoom + 4, maptiles.MAX_ZOOM),
                url_template=template + (f"?{query}" if query else ""),
                self_url=str(request.url),
            )
            return Response(body, media_type="application/xml")


def _factory(prefix: str, reader: type, path: Any, layer: str) -> MapTiles:
    return MapTiles(
        reader=reader,
        path_dependency=path,
        layer_dependency=DefaultDependency,
        dataset_dependency=DefaultDependency,
        tile_dependency=DefaultDependency,
        process_dependency=_no_process,
        colormap_dependency=_no_colormap,
        render_dependency=DefaultDependency,
        supported_tms=TMS,
        router_prefix=prefix,
        add_viewer=False,
        add_preview=False,
        add_part=False,
        name=f"tiles.{layer}",
        layer_name=layer,
    )


results_tiles = _factory(
    "/tiles/results/{scene_id}", maptiles.ResultReader, result_path, "landcover"
)
scenes_tiles = _factory(
    "/tiles/scenes/{scene_id}", maptiles.TrueColourReader, scene_path, "truecolour"
)

router = APIRouter()


def _documented(factory: MapTiles) -> APIRouter:
    """The factory's routes with the shared error body documented and the tilesize bound."""
    for route in factory.router.routes:
        if isinstance(route, APIRoute):
            route.responses = {**ERRORS, **route.responses}
            route.dependencies.append(Depends(bounded_tilesize))  # kept by include_router
    return factory.router


router.include_router(
    _documented(results_tiles), prefix="/tiles/results/{scene_id}", tags=["tiles"]
)
router.include_router(_documented(scenes_tiles), prefix="/tiles/scenes/{scene_id}", tags=["tiles"])
