"""``eostream maps ...``: how right are the maps? Reference sets of labelled real scenes, and an
evaluation of a model's maps against them beside an NDWI baseline."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from eostream.inference.cube import replaceable
from eostream.inference.errors import InferenceError
from eostream.shared.deployment import mlflow_client_defaults
from eostream.shared.errors import EostreamError

app = typer.Typer(
    name="maps", help="Map accuracy: reference sets and evaluations.", no_args_is_help=True
)
reference_app = typer.Typer(help="Build reference sets (labelled scenes).", no_args_is_help=True)
app.add_typer(reference_app, name="reference")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@reference_app.command("build")
def build(
    source: Annotated[str, typer.Option("--from", help="which reference set: boadella")],
    out: Annotated[Path, typer.Option(help="folder for the STAC catalog", file_okay=False)],
    data_dir: Annotated[
        Path | None,
        typer.Option(help="the shared data folder (default: $EOSTREAM_DATA_DIR)", file_okay=False),
    ] = None,
    dates: Annotated[
        list[str] | None, typer.Option("--date", help="keep only this date (repeatable)")
    ] = None,
) -> None:
    """Write a reference set as a STAC catalog: scene items, label items, the class mapping."""
    from eostream.inference import reference

    if source not in reference.SOURCES:
        raise _fail(f"unknown reference set {source!r}; known: {', '.join(reference.SOURCES)}")
    folder = data_dir or (
        Path(os.environ["EOSTREAM_DATA_DIR"]) if os.environ.get("EOSTREAM_DATA_DIR") else None
    )
    if folder is None or not folder.is_dir():
        raise _fail("no data folder: pass --data-dir or set EOSTREAM_DATA_DIR")
    try:
        labels = reference.build_boadella(folder, out, dates or ())
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot build the {source} reference set: {exc}") from None
    typer.echo(f"reference set: {out / 'catalog.json'}")
    typer.echo(f"labels collection (pass to `eostream maps evaluate --reference`): {labels}")


@app.command()
def evaluate(
    model: Annotated[
        str,
        typer.Option(
            help="ONNX model file or URI (its model card is inside), or a version's MLM item "
            "(a .json file, or a STAC API's item URL): then the file inference runs for it (int8 "
            "on the CPU where it passed its check)"
        ),
    ],
    reference_href: Annotated[
        str,
        typer.Option(
            "--reference", help="the reference set's labels collection (collection.json or folder)"
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="keep summary.json and the confusion PNGs here", file_okay=False),
    ] = None,
    mlflow_uri: Annotated[
        str | None, typer.Option("--mlflow-uri", help="log a run to this MLflow tracking URI")
    ] = None,
    experiment: Annotated[
        str, typer.Option(help="MLflow experiment name")
    ] = "eostream-map-accuracy",
) -> None:
    """Classify the reference scenes with MODEL and score the maps (per class and overall)
    beside NDWI > 0 on the same pixels. Exit status 1 when an item could not be evaluated.

    The maps are made as inference makes them here (``INFERENCE_STRIDE``,
    ``INFERENCE_UNCERTAIN_BELOW``...: printed, and logged with the figures); uncertain pixels
    count as the background class. ``INFERENCE_UNCERTAIN_BELOW=0`` gives every pixel its top
    class, as the registry-bridge's map check and the benchmarks score (a card with its training
    input's statistics also marks out-of-domain windows: ``INFERENCE_OUT_OF_DOMAIN_LIMIT``)."""
    from eostream.inference import evaluation, maps_report
    from eostream.shared.settings import configure_logging

    configure_logging(os.environ.get("INFERENCE_LOG_LEVEL", "WARNING"))
    logging.getLogger("rasterio").setLevel(logging.ERROR)  # TIFF tag chatter of the crops
    try:
        report = evaluation.evaluate(
            reference_href, model, on_error=lambda line: typer.echo(f"error: {line}", err=True)
        )
    except (InferenceError, EostreamError) as exc:  # a source down, a setting: one line
        raise _fail(str(exc)) from None
    for line in maps_report.table(report):
        typer.echo(line)
    with tempfile.TemporaryDirectory(prefix="eostream-maps-out-") as tmp:
        folder = out or Path(tmp)
        try:
            artifacts = maps_report.write_outputs(report, folder)
        except ImportError as exc:
            raise _fail(f"{exc.name} is missing: install eostream-inference[maps]") from None
        if out is not None:
            typer.echo(f"summary and confusion matrices: {out}")
        if mlflow_uri:
            mlflow_client_defaults()  # one line when it does not answer, not minutes of retries
            try:
                run_id = maps_report.log_to_mlflow(report, mlflow_uri, experiment, artifacts)
            except ImportError as exc:
                raise _fail(f"{exc.name} is missing: install eostream-inference[maps]") from None
            except Exception as exc:
                raise _fail(f"cannot log to MLflow at {mlflow_uri}: {exc}") from None
            typer.echo(f"MLflow run {run_id} (experiment {experiment!r})")
    if report.errors:
        typer.echo(f"{len(report.errors)} item(s) could not be evaluated (see above)", err=True)
        raise typer.Exit(1)


@app.command()
def cube(
    catalog: Annotated[
        str, typer.Argument(help="STAC catalog/collection of the scenes (e.g. a reference set)")
    ],
    out: Annotated[Path, typer.Option(help="the zarr store to write (a folder)", file_okay=False)],
    bands: Annotated[
        list[str] | None, typer.Option("--band", help="keep only this band (repeatable)")
    ] = None,
    dates: Annotated[
        list[str] | None, typer.Option("--date", help="keep only this date (repeatable)")
    ] = None,
    mask_clouds: Annotated[
        bool, typer.Option(help="NaN where the scene's SCL says cloud or shadow")
    ] = True,
    overwrite: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
) -> None:
    """Stack the scenes of CATALOG (one grid) into a zarr cube (time, band, y, x) of surface
    reflectance, read the way inference reads a scene for a model; plain xarray opens it."""
    import shutil

    from eostream.inference import scenecube
    from eostream.shared import sentinel2

    if out.exists() and not overwrite:
        raise _fail(f"{out} exists (pass --overwrite to replace it)")
    if out.exists() and not replaceable(out):
        raise _fail(
            f"{out} is not a zarr store: --overwrite replaces only one (or an empty folder)"
        )
    logging.getLogger("rasterio").setLevel(logging.ERROR)
    try:
        scenes = scenecube.scenes_in(catalog)
        if dates:
            scenes = [s for s in scenes if str(s.datetime)[:10] in dates]
            if not scenes:
                raise _fail(f"no scene of {catalog} on {', '.join(dates)}")
        wanted = [b.upper() for b in bands] if bands else None
        if wanted is None:  # every band the first scene has, in spectral order
            wanted = list(
                sentinel2.ordered(sentinel2.bands_of(scenes[0].item), sentinel2.SPECTRAL_ORDER)
            )
        dataset = scenecube.build(scenes, wanted, mask_clouds=mask_clouds)
        if out.exists():
            shutil.rmtree(out)
        scenecube.write_zarr(dataset, out)
    except InferenceError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}") from None
    sizes = dict(dataset[scenecube.VARIABLE].sizes)
    typer.echo(
        f"cube: {out} (time {sizes['time']}, band {sizes['band']}, y {sizes['y']}, x {sizes['x']})"
    )
