"""``eostream inference ...``: run the service, or classify scenes from the command line.

``classify`` takes a STAC item, or a folder (or ``catalog.json``) holding a STAC catalog, the
stage-in layout of the OGC EO application package best practice. With ``--stac-out DIR`` it keeps
nothing in the configured store: it writes a self-contained STAC catalog to DIR (``catalog.json``,
one result item per scene, its GeoTIFF, quicklook and statistics), the stage-out layout the
CWL package in deploy/cwl relies on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import SecretStr

from eostream.inference.settings import InferenceSettings, scratch_settings
from eostream.shared.settings import configure_logging, load_settings

if TYPE_CHECKING:  # the service's modules are slow to import: serve imports them when it runs
    from eostream.inference.service import InferenceService
    from eostream.shared.ops import OpsServer

app = typer.Typer(
    name="inference", help="Whole-scene classification and its REST API.", no_args_is_help=True
)
log = logging.getLogger(__name__)


@app.command()
def serve() -> None:
    """Run the REST API and the SceneDiscovered / ModelPromoted consumers until SIGTERM."""
    # a bad environment is reported before the slow imports, and what they log before logging
    # is configured stays out of the service's log (as it did when they came first)
    settings = load_settings(InferenceSettings)
    from eostream.inference.api.app import create_app
    from eostream.inference.wiring import build_service
    from eostream.shared.ops import OpsServer
    from eostream.shared.runtime import install_stop_signals, preflight, run_service

    configure_logging(settings.log_level)

    async def main() -> None:
        await preflight(settings)
        stop = asyncio.Event()
        install_stop_signals(stop.set)
        service = await asyncio.to_thread(build_service, settings)
        server = OpsServer(create_app(settings, service), settings.http_host, settings.http_port)
        await server.start()
        log.info("inference API on %s (docs at /docs)", server.url)
        await stop.wait()
        await shutdown(service, server)

    run_service(main)


async def shutdown(service: InferenceService, server: OpsServer) -> None:
    """SIGTERM's drain: first take no new scenes or promotions (the record in flight finishes and
    is committed), then stop the HTTP server, which finishes the requests in flight and then runs
    the app's lifespan shutdown (jobs, notifier, results index). The consumers stop first because
    uvicorn runs that shutdown only once every request has ended: a long classification would
    otherwise leave them taking records until the orchestrator kills the process."""
    await service.stop_intake()
    await server.stop()


CATALOG_FILE = "catalog.json"


def item_hrefs(href: str) -> list[str]:
    """The STAC items to classify: ``href`` itself, or every item of the catalog it names.

    A folder stands for the ``catalog.json`` inside it (a staged-in catalog); anything else that
    is not a local catalog (an item path, s3:// or https://) is taken as one item.
    """
    import pystac

    path = Path(href)
    if path.is_dir():
        path = path / CATALOG_FILE
        if not path.is_file():
            raise typer.BadParameter(f"{href} is a folder without a {CATALOG_FILE}")
    if not path.is_file() or _stac_type(path) not in ("Catalog", "Collection"):
        return [href]
    catalog = pystac.read_file(str(path.resolve()))
    if not isinstance(catalog, pystac.Catalog):
        raise typer.BadParameter(f"{path} is not a STAC catalog")
    items = list(catalog.get_items(recursive=True))
    # a reference set's catalogue holds its label items beside its scenes: no scene to classify
    hrefs = [str(item.get_self_href()) for item in items if not _is_label_item(item)]
    if len(hrefs) < len(items):
        log.info("%s: %d label item(s) left out", path, len(items) - len(hrefs))
    if not hrefs:
        raise typer.BadParameter(f"the STAC catalog {path} holds no scene items")
    return hrefs


def _is_label_item(item: Any) -> bool:
    """A STAC label item (the label extension), not a scene."""
    return any("/label/" in url for url in item.stac_extensions) or any(
        key.startswith("label:") for key in item.properties
    )


def _stac_type(path: Path) -> object:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None  # not JSON: the pipeline says what is wrong with it
    return document.get("type") if isinstance(document, dict) else None


def write_stac_catalog(records: list[dict[str, Any]], out_dir: Path) -> Path:
    """A self-contained STAC catalog in ``out_dir``: ``catalog.json`` + one folder per item.

    Each item's assets (local files of the scratch store) are copied beside its JSON and named
    relative to it, so the folder can be moved or uploaded as it is.
    """
    import pystac

    from eostream.inference.fetch import local_path

    catalog = pystac.Catalog(
        id="eostream-classifications",
        description="Land-cover maps of Sentinel-2 scenes (EuroSAT classes) made by eostream",
        title="eostream classification results",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    for record in records:
        item = pystac.Item.from_dict(record, preserve_dict=False)
        item.clear_links("self")
        item.collection_id = None  # the catalog holds the items; no collection is written
        folder = out_dir / item.id
        folder.mkdir(parents=True, exist_ok=True)
        for asset in item.assets.values():
            source = local_path(asset.href)
            if source is None or not source.is_file():
                raise RuntimeError(f"asset {asset.href} of {item.id} is not a local file")
            target = folder / source.name
            shutil.copyfile(source, target)
            asset.href = str(target.resolve())
        catalog.add_item(item)
    catalog.normalize_hrefs(str(out_dir.resolve()))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return out_dir / CATALOG_FILE


@app.command()
def classify(
    item_href: str = typer.Argument(
        help="STAC item (a path, s3:// or https:// URL), or a STAC catalog: its catalog.json "
        "or the folder holding it (every item is classified)"
    ),
    model: str = typer.Option(..., help="ONNX model file or URI (its model card is inside)"),
    replace: bool = typer.Option(False, help="recompute an existing result"),
    stac_out: Annotated[
        Path | None,
        typer.Option(
            "--stac-out",
            help="write the results as a STAC catalog to this folder (catalog.json, items, "
            "GeoTIFFs) instead of the configured store and results index",
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Classify scenes with one model, without the bus (writes to the configured store)."""
    from eostream.inference.model import ModelInfo
    from eostream.inference.wiring import build_service

    # no bus: nothing is consumed, and a one-off result is announced to nobody (it asked for
    # INFERENCE_KAFKA__BOOTSTRAP_SERVERS all the same)
    overrides: dict[str, Any] = {"bus": "memory"}
    if "INFERENCE_API_KEY" not in os.environ:
        overrides["api_key"] = SecretStr("")  # only the REST API needs a key; classify serves none
    hrefs = item_hrefs(item_href)

    async def main(settings: InferenceSettings) -> list[dict[str, Any]]:
        service = await asyncio.to_thread(build_service, settings, consume=False)
        await service.start()
        items = []
        try:
            # not recorded: the index's deployments are the service's, whose restart reloads
            # its last live model (never this one-off)
            service.deployment.deploy_uri(ModelInfo.of_file(model), model, None, record=False)
            for href in hrefs:
                outcome = await asyncio.to_thread(
                    service.pipeline.classify_href, href, replace=replace
                )
                typer.echo(json.dumps(outcome.record.stats, indent=2))
                items.append(outcome.record.item)
        finally:
            await service.stop()
        return items

    if stac_out is None:
        settings = load_settings(InferenceSettings, **overrides)
        configure_logging(settings.log_level)
        asyncio.run(main(settings))
        return
    # before the work (a folder it cannot write threw every finished map away), creating
    # nothing: the nearest folder that exists must take a new entry
    nearest = next(p for p in (stac_out.absolute(), *stac_out.absolute().parents) if p.exists())
    if not nearest.is_dir() or not os.access(nearest, os.W_OK | os.X_OK):
        raise typer.BadParameter(
            f"cannot write to {stac_out}: {nearest} is not a folder this user may write",
            param_hint="--stac-out",
        )
    with tempfile.TemporaryDirectory(prefix="eostream-classify-") as tmp:
        # a scratch store and index: the catalog in --stac-out is the only result
        settings = scratch_settings(Path(tmp), **overrides)
        configure_logging(settings.log_level)
        items = asyncio.run(main(settings))
        catalog = write_stac_catalog(items, stac_out)
    typer.echo(f"STAC catalog: {catalog}")
