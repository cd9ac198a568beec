"""``eostream inference ...``: run the service, or classify one item from the command line."""

from __future__ import annotations

import asyncio
import json
import logging

import typer

from eostream.inference.settings import InferenceSettings
from eostream.shared.settings import configure_logging, load_settings

app = typer.Typer(
    name="inference", help="Whole-scene classification and its REST API.", no_args_is_help=True
)
log = logging.getLogger(__name__)


@app.command()
def serve() -> None:
    """Run the REST API and the SceneDiscovered / ModelPromoted consumers until SIGTERM."""
    from eostream.inference.api.app import create_app
    from eostream.shared.ops import OpsServer
    from eostream.shared.runtime import install_stop_signals, preflight, run_service

    settings = load_settings(InferenceSettings)
    configure_logging(settings.log_level)

    async def main() -> None:
        await preflight(settings)
        stop = asyncio.Event()
        install_stop_signals(stop.set)
        server = OpsServer(create_app(settings), settings.http_host, settings.http_port)
        await server.start()
        log.info("inference API on %s (docs at /docs)", server.url)
        await stop.wait()
        await server.stop()

    run_service(main)


@app.command()
def classify(
    item_href: str = typer.Argument(help="STAC item: a path, s3:// or https:// URL"),
    model: str = typer.Option(..., help="ONNX model file or URI"),
    replace: bool = typer.Option(False, help="recompute an existing result"),
) -> None:
    """Classify one scene with one model, without the bus (writes to the configured store)."""
    from eostream.inference.model import ModelInfo
    from eostream.inference.service import InferenceService

    settings = load_settings(InferenceSettings)
    configure_logging(settings.log_level)

    async def main() -> None:
        service = InferenceService(settings, consume=False)
        await service.start()
        try:
            service.pipeline.deploy_uri(
                ModelInfo(name="cli", version="0", artifact_uri=model), model, None
            )
            outcome = await asyncio.to_thread(
                service.pipeline.classify_href, item_href, replace=replace
            )
            typer.echo(json.dumps(outcome.record.stats, indent=2))
        finally:
            await service.stop()

    asyncio.run(main())
