"""``eostream results ...``: change over time in an area, from a running inference service.

The commands talk to the service's REST API through ``eostream.client`` (``--url`` or
``EOSTREAM_INFERENCE_URL``; reads need no key): ``/results/aggregate`` picks the results (each
scene's latest, or ``--model-name``/``--model-version``'s) and gives the areas; ``cube`` then
fetches each result's COG and stacks them into a zarr data cube (``eostream.inference.cube``).
"""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from eostream.client import ApiError, InferenceClient
from eostream.inference.cube import MAX_CELLS, replaceable
from eostream.inference.errors import InferenceError

app = typer.Typer(
    name="results",
    help="Change over time in an area: class areas, data cubes, plots.",
    no_args_is_help=True,
)

Url = Annotated[
    str,
    typer.Option(
        envvar="EOSTREAM_INFERENCE_URL", help="the inference service, e.g. http://127.0.0.1:8000"
    ),
]
Bbox = Annotated[str | None, typer.Option(help="minx,miny,maxx,maxy (WGS84)")]
Intersects = Annotated[
    str | None,
    typer.Option(help="a GeoJSON file (or text): a Polygon, or a Feature(Collection) of one"),
]
Datetime = Annotated[str | None, typer.Option(help="RFC 3339 interval, e.g. 2020-01-01/2022-12-31")]
Version = Annotated[
    str | None, typer.Option(help="this model version's results (default: each scene's latest)")
]
ModelName = Annotated[
    str | None,
    typer.Option(
        help="this model's results only (version numbers are each model's own: with "
        "--model-version, name the model too)"
    ),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _geometry(text: str) -> Any:
    """The GeoJSON geometry of ``text`` (a file path or JSON)."""
    path = Path(text)
    try:
        raw = path.read_text() if path.is_file() else text
        value: Any = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise _fail(f"--intersects: not a GeoJSON file or text ({exc})") from None
    if isinstance(value, dict) and value.get("type") == "FeatureCollection":
        features = value.get("features") or []
        if len(features) != 1:
            raise _fail("--intersects: a FeatureCollection must hold exactly one feature")
        value = features[0]
    if isinstance(value, dict) and value.get("type") == "Feature":
        value = value.get("geometry")
    return value


def _area(bbox: str | None, intersects: str | None) -> dict[str, Any]:
    if (bbox is None) == (intersects is None):
        raise _fail("give the area: --bbox minx,miny,maxx,maxy or --intersects FILE")
    return {"bbox": bbox} if bbox is not None else {"intersects": _geometry(str(intersects))}


def _aggregate(
    url: str,
    area: dict[str, Any],
    datetime: str | None,
    version: str | None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """The areas: GET with a bbox, POST with a geometry (it may be too large for a URL)."""
    with InferenceClient(url, timeout=120) as client:
        try:
            body = client.aggregate(
                bbox=area.get("bbox"), intersects=area.get("intersects"), datetime=datetime,
                model_version=version, model_name=model_name,
            )  # fmt: skip
        except ApiError as exc:
            raise _fail(_said(exc)) from None
    if not isinstance(body.get("dates"), list) or not isinstance(body.get("legend"), list):
        raise _fail(
            f"the answer of {url} is not what an eostream API sends (no dates and legend): is "
            "the URL right?"
        )
    if not body["dates"]:
        raise _fail("no result map meets the area in that time")
    return body


def _said(exc: ApiError) -> str:
    """An ApiError as one line: what failed and what the server said."""
    if not exc.status:
        return f"cannot reach {exc.url}: {exc.description}"
    return f"{exc.status} from {httpx.URL(exc.url).path}: {exc.description}"


def _plot(body: dict[str, Any], area: dict[str, Any], out: Path) -> None:
    from eostream.inference.areas_plot import plot_areas

    names = [e["name"] for e in body["legend"]]
    colours = ["#" + e["color_hint"] for e in body["legend"]]
    table = [[d["classes"][n]["km2"] for n in names] for d in body["dates"]]
    try:
        title = _title(area, _models(body))
        plot_areas([d["date"] for d in body["dates"]], names, colours, table, out, title)
    except ImportError as exc:
        raise _fail(f"{exc.name} is missing: install eostream-inference[maps]") from None
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}") from None
    except ValueError as exc:  # e.g. a result dated 9999-12-31: past matplotlib's calendar
        raise _fail(f"cannot plot these dates ({', '.join(_span(body))}): {exc}") from None
    typer.echo(f"plot: {out}")


def _span(body: dict[str, Any]) -> list[str]:
    dates = sorted(d["date"] for d in body["dates"])
    return [dates[0], dates[-1]] if dates else []


def _title(area: dict[str, Any], models: list[str] | None = None) -> str:
    where = f"bbox {area['bbox']}" if "bbox" in area else "the given area"
    by = f"\nmaps of {', '.join(models)}" if models else ""
    return f"Class areas over time, {where}{by}"


@app.command()
def aggregate(
    url: Url,
    bbox: Bbox = None,
    intersects: Intersects = None,
    datetime: Datetime = None,
    model_version: Version = None,
    model_name: ModelName = None,
) -> None:
    """Print km2 per class per acquisition date (CSV: date,class,km2,pixels, and the date's
    mapped area and unlabelled pixels: a cloudy date is not a loss of every class)."""
    body = _aggregate(url, _area(bbox, intersects), datetime, model_version, model_name)
    _warn_mixed(body)
    typer.echo("date,class,km2,pixels,area_km2,area_pixels,nodata_pixels,results")
    for entry in body["dates"]:
        whole = f"{entry['area_km2']},{entry['area_pixels']},{entry['nodata_pixels']}"
        ids = " ".join(entry["results"])
        for name, value in entry["classes"].items():
            typer.echo(f"{entry['date']},{name},{value['km2']},{value['pixels']},{whole},{ids}")


def _models(body: dict[str, Any]) -> list[str]:
    """The models of the maps (NAME vVERSION); a server before had no such field: none."""
    return list(body.get("models") or [])


def _warn_mixed(body: dict[str, Any]) -> None:
    """One line on stderr when the dates were mapped by more than one model version."""
    models = _models(body)
    if len(models) > 1:
        typer.echo(
            f"note: the dates were mapped by {len(models)} models ({', '.join(models)}): a change "
            "may be the models', not the land's; --model-name and --model-version pick one",
            err=True,
        )


@app.command()
def plot(
    url: Url,
    out: Annotated[Path, typer.Option(help="the PNG to write", dir_okay=False)],
    bbox: Bbox = None,
    intersects: Intersects = None,
    datetime: Datetime = None,
    model_version: Version = None,
    model_name: ModelName = None,
) -> None:
    """Plot the class areas of an area over time (PNG, the maps' class colours)."""
    area = _area(bbox, intersects)
    body = _aggregate(url, area, datetime, model_version, model_name)
    _warn_mixed(body)
    _plot(body, area, out)


@app.command()
def cube(
    url: Url,
    out: Annotated[Path, typer.Option(help="the zarr store to write (a folder)", file_okay=False)],
    bbox: Bbox = None,
    intersects: Intersects = None,
    datetime: Datetime = None,
    model_version: Version = None,
    model_name: ModelName = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="also plot the areas over time (PNG)")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
    max_cells: Annotated[
        int, typer.Option(min=1, help="refuse a cube of more cells (time x y x; 1 byte each)")
    ] = MAX_CELLS,
) -> None:
    """Stack the maps of an area into a zarr data cube (time, y, x) that plain xarray opens."""
    from eostream.inference import cube as cubes

    if out.exists() and not overwrite:
        raise _fail(f"{out} exists (pass --overwrite to replace it)")
    if out.exists() and not replaceable(out):
        raise _fail(
            f"{out} is not a zarr store: --overwrite replaces only one (or an empty folder)"
        )
    area = _area(bbox, intersects)
    body = _aggregate(url, area, datetime, model_version, model_name)
    _warn_mixed(body)
    names = tuple(e["name"] for e in body["legend"] if e["name"] != "uncertain")
    todo = [
        (d, r, m, tuple(c) if c else names)  # each map's own classes (a server before: the legend)
        for d in body["dates"]
        for r, m, c in zip(
            d["results"], d["maps"], d.get("map_classes") or [None] * len(d["maps"]), strict=True
        )
    ]
    maps = []
    with InferenceClient(url, timeout=300) as client:
        for n, (entry, result, href, classes) in enumerate(todo, start=1):
            typer.echo(f"map {n}/{len(todo)}: {result}", err=True)
            try:
                cog = client.download(href)
            except ApiError as exc:
                raise _fail(_said(exc)) from None
            maps.append(cubes.Map(date.fromisoformat(entry["date"]), result, classes, cog))
    try:
        dataset = cubes.build(maps, body["area"], max_cells)
    except InferenceError as exc:
        raise _fail(str(exc)) from None
    except MemoryError:
        raise _fail(f"not enough memory for the cube: lower --max-cells ({max_cells:,})") from None
    if out.exists():
        shutil.rmtree(out)
    # zarr v2 with consolidated metadata: every zarr reader opens it without a warning (v3 has
    # no consolidated metadata in its specification yet)
    try:
        dataset.to_zarr(out, mode="w", consolidated=True, zarr_format=2)
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}") from None
    sizes = dict(dataset["classification"].sizes)
    typer.echo(f"cube: {out} (time {sizes['time']}, y {sizes['y']}, x {sizes['x']})")
    if plot is not None:
        _plot(body, area, plot)
