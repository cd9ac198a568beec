"""``eostream labels ...``: bring your own labels as STAC label items, and find them again.

``eostream labels import --scene ITEM --geojson FILE`` turns polygons or points over a scene into
a label item (``--mask FILE.tif --value-class 1=water`` for a class mask), stores the labels as
its ``labels`` asset and adds it to a label collection: on the stack in the STAC API
(``--stac-api`` or EOSTREAM_STAC_API_URL; the asset in the trainer's object store, TRAINER_STORE
and TRAINER_S3__*), in the embedded mode in a static catalogue under the home folder
(``--home``; the asset under ``<home>/objects``). ``eostream labels search`` finds items by
collection, bbox, datetime, class and task; ``eostream labels list`` shows the label collections.

Bad input ends the command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from eostream.shared.errors import EostreamError
from eostream.shared.label_catalog import (
    LabelCatalog,
    LabelQuery,
    StacApiLabelCatalog,
    StaticLabelCatalog,
)
from eostream.shared.labels import (
    CLASSES_FIELD,
    COMPLETE,
    COVERAGE_FIELD,
    DEFAULT_CLASS_PROPERTY,
    DEFAULT_COLLECTION,
    GEOJSON_TYPE,
    PARTIAL,
    LabelError,
    LabelItem,
    Mask,
    Scene,
    build_raster_label_item,
    build_vector_label_item,
    default_item_id,
    parse_class_list,
)
from eostream.shared.objects import local_path, read_bytes
from eostream.shared.settings import S3Settings
from eostream.shared.storage.base import ObjectStore

MAX_LABEL_BYTES = 256 * 1024 * 1024

app = typer.Typer(
    name="labels",
    help="Bring your own labels: import them as STAC label items, search them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

CollectionOpt = Annotated[
    str, typer.Option(envvar="EOSTREAM_LABELS_COLLECTION", help="the label collection")
]
StacApiOpt = Annotated[
    str | None,
    typer.Option(
        "--stac-api", envvar="EOSTREAM_STAC_API_URL", help="the stack's STAC API (root URL)"
    ),
]
HomeOpt = Annotated[
    Path | None,
    typer.Option(help="embedded mode: the home folder (static catalogue in <home>/labels)"),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"eostream labels: {message}", err=True)
    return typer.Exit(code)


def _catalog(stac_api: str | None, home: Path | None, *, writing: bool = False) -> LabelCatalog:
    """The catalogue the options name; ``--home`` must be a folder (made when ``writing``): a
    file, or a folder that is not there (a typo), read as an empty catalogue."""
    if home is not None:
        if home.exists() and not home.is_dir():
            raise _fail(f"--home {home}: not a folder")
        if not writing and not home.is_dir():
            raise _fail(f"--home {home}: no such folder")
        return StaticLabelCatalog(home / "labels")
    if stac_api:
        return StacApiLabelCatalog(stac_api)
    raise _fail("name a catalogue: --stac-api URL (or EOSTREAM_STAC_API_URL) or --home DIR")


def _store(home: Path | None) -> tuple[ObjectStore, S3Settings | None]:
    """Where the labels go, and the S3 settings to read an ``s3://`` scene with."""
    if home is not None:
        from eostream.shared.storage.local import LocalObjectStore

        return LocalObjectStore(home / "objects", "eostream"), None
    from eostream.shared.settings import load_settings
    from eostream.shared.storage.factory import build_object_store
    from eostream.trainer.settings import TrainerSettings

    settings = load_settings(TrainerSettings, bus="memory")
    return build_object_store(settings), settings.s3


def _read_json(uri: str, what: str, s3: S3Settings | None = None) -> Any:
    try:
        return json.loads(read_bytes(uri, s3=s3, max_bytes=MAX_LABEL_BYTES))
    except json.JSONDecodeError as exc:
        raise LabelError(f"{what} {uri}: not JSON ({exc.msg}, line {exc.lineno})") from None


def _read_mask(path: Path, value_classes: dict[int, str]) -> Mask:
    import numpy as np
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.warp import transform_bounds

    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise LabelError(f"mask {path}: it has no CRS")
            data = src.read(1, masked=True)
            bounds = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
            crs = src.crs.to_string()
    except RasterioIOError as exc:
        raise LabelError(f"mask {path}: not a readable raster ({exc})") from None
    values, counts = np.unique(data.compressed(), return_counts=True)
    return Mask(
        (bounds[0], bounds[1], bounds[2], bounds[3]),
        crs,
        {int(v): int(n) for v, n in zip(values, counts, strict=True)},
    )


def _value_classes(pairs: list[str]) -> dict[int, str]:
    out: dict[int, str] = {}
    for pair in pairs:
        value, sep, name = pair.partition("=")
        try:
            out[int(value)] = name.strip() if sep and name.strip() else ""
        except ValueError:
            raise LabelError(
                f"--value-class {pair!r}: expected VALUE=CLASS, e.g. 1=water"
            ) from None
        if not out[int(value)]:
            raise LabelError(f"--value-class {pair!r}: expected VALUE=CLASS, e.g. 1=water")
    return out


@app.command("import")
def import_(
    scene: Annotated[str, typer.Option(help="the scene's STAC item: a path or URL")],
    geojson: Annotated[
        Path | None, typer.Option(help="labels: a GeoJSON FeatureCollection (polygons, points)")
    ] = None,
    mask: Annotated[Path | None, typer.Option(help="labels: a class mask GeoTIFF")] = None,
    value_class: Annotated[
        list[str] | None, typer.Option(help="mask value -> class, VALUE=CLASS (repeatable)")
    ] = None,
    class_property: Annotated[
        str, typer.Option(help="the feature property holding the class(es)")
    ] = DEFAULT_CLASS_PROPERTY,
    classes: Annotated[
        Path | None, typer.Option(help='class list, labels.json: {"labels": [{"name": ...}]}')
    ] = None,
    task: Annotated[str, typer.Option(help="segmentation or classification")] = "segmentation",
    item_id: Annotated[str | None, typer.Option("--id", help="the label item's id")] = None,
    partial: Annotated[
        bool,
        typer.Option(
            "--partial",
            help="only some objects are drawn: pixels outside the shapes are unknown, not "
            "background (eostream:label_coverage partial)",
        ),
    ] = False,
    collection: CollectionOpt = DEFAULT_COLLECTION,
    stac_api: StacApiOpt = None,
    home: HomeOpt = None,
) -> None:
    """Import labels over a scene as a STAC label item."""
    if (geojson is None) == (mask is None):
        raise _fail("give exactly one of --geojson FILE and --mask FILE.tif")
    catalog = _catalog(stac_api, home, writing=True)
    try:
        step = 1

        def progress(text: str) -> None:
            nonlocal step
            typer.echo(f"[{step}/4] {text}", err=True)
            step += 1

        path = local_path(scene)
        scene_href = str(path.resolve()) if path is not None else scene
        store, s3 = _store(home)
        progress(f"reading scene {scene_href}")
        the_scene = Scene.from_item(_read_json(scene_href, "scene", s3), scene_href)
        class_list = parse_class_list(_read_json(str(classes), "class list")) if classes else None
        raster = mask is not None
        the_id = item_id or default_item_id(the_scene.id, task, raster=raster)
        key = f"labels/{collection}/{the_id}/{'mask.tif' if raster else 'labels.geojson'}"
        built: LabelItem
        if mask is not None:
            progress(f"reading mask {mask}")
            if not mask.is_file():
                raise LabelError(f"mask {mask}: no such file")
            mapping = _value_classes(value_class or [])
            built = build_raster_label_item(
                the_scene,
                _read_mask(mask, mapping),
                mapping,
                asset_href=store.uri(key),
                class_list=class_list,
                task=task,
                item_id=the_id,
            )
        elif geojson is not None:
            document = _read_json(str(geojson), "labels")
            n = len(document.get("features") or []) if isinstance(document, dict) else 0
            progress(f"checking {n} feature(s) of {geojson}")
            built = build_vector_label_item(
                the_scene,
                document,
                asset_href=store.uri(key),
                class_property=class_property,
                class_list=class_list,
                task=task,
                item_id=the_id,
            )
        built.item["properties"][COVERAGE_FIELD] = PARTIAL if partial else COMPLETE
        for note in built.notes:
            typer.echo(f"      note: {note}", err=True)
        progress(f"storing the labels as {store.uri(key)}")
        if home is None and store.uri(key).startswith("file:"):
            typer.echo(
                "      note: a local file; set TRAINER_STORE=s3 and TRAINER_S3__* so that the "
                "stack's services can read it",
                err=True,
            )
        store.check()
        if mask is not None:
            store.put_file(key, mask, "image/tiff; application=geotiff")
        else:
            data = json.dumps(built.features).encode()
            store.put_bytes(key, data, GEOJSON_TYPE)
        progress(f"adding {the_id} to collection {collection} at {catalog.where}")
        try:
            catalog.add(collection, [built.item])
        except (EostreamError, OSError) as exc:
            raise _fail(f"{catalog.where}: {exc}".splitlines()[0], 1) from None
    except (EostreamError, ValueError, OSError) as exc:
        raise _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    finally:
        catalog.close()
    typer.echo(f"{the_id}: {', '.join(built.classes)} ({task}) over {the_scene.id} in {collection}")


def _interval(text: str | None) -> tuple[datetime | None, datetime | None] | None:
    if not text:
        return None
    start, _, end = text.partition("/")
    try:
        lo = None if start in ("", "..") else datetime.fromisoformat(start.replace("Z", "+00:00"))
        hi = None if end in ("", "..") else datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        raise LabelError(f"--datetime {text!r}: expected START/END (ISO 8601, '..' open)") from None
    if not end and "/" not in text:
        hi = lo
    from datetime import UTC

    return (
        lo.replace(tzinfo=lo.tzinfo or UTC) if lo else None,
        hi.replace(tzinfo=hi.tzinfo or UTC) if hi else None,
    )


def _bbox(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4 or not all(map(math.isfinite, box)) or box[0] > box[2] or box[1] > box[3]:
        raise LabelError(f"--bbox {text!r}: expected WEST,SOUTH,EAST,NORTH (finite numbers)")
    return box


@app.command()
def search(
    collection: CollectionOpt = DEFAULT_COLLECTION,
    bbox: Annotated[str | None, typer.Option(help="WEST,SOUTH,EAST,NORTH (lon/lat)")] = None,
    class_: Annotated[
        list[str] | None, typer.Option("--class", help="items having this class (repeatable)")
    ] = None,
    task: Annotated[list[str] | None, typer.Option(help="items for this task")] = None,
    datetime_: Annotated[
        str | None, typer.Option("--datetime", help="START/END or one instant")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the items as JSON")] = False,
    stac_api: StacApiOpt = None,
    home: HomeOpt = None,
) -> None:
    """Find label items by bbox, class, task and time."""
    catalog = _catalog(stac_api, home)
    try:
        query = LabelQuery(
            collection,
            bbox=_bbox(bbox),
            classes=class_ or (),
            tasks=task or (),
            interval=_interval(datetime_),
        )
        if collection not in {c["id"] for c in catalog.collections()}:
            raise LabelError(f"no label collection {collection!r} at {catalog.where}")
        items = catalog.search(query)
    except (EostreamError, ValueError, OSError) as exc:
        raise _fail(str(exc).splitlines()[0]) from None
    except Exception as exc:  # pystac-client's APIError and network errors
        raise _fail(f"{catalog.where}: {type(exc).__name__}: {exc}".splitlines()[0], 1) from None
    finally:
        catalog.close()
    if as_json:
        typer.echo(json.dumps({"type": "FeatureCollection", "features": items}, indent=1))
        return
    for item in items:
        p = item["properties"]
        source = next((x["href"] for x in item.get("links", []) if x["rel"] == "source"), "")
        typer.echo(
            f"{item['id']}\t{p.get('datetime') or p.get('start_datetime')}\t"
            f"{','.join(p.get(CLASSES_FIELD, []))}\t{','.join(p.get('label:tasks', []))}\t{source}"
        )
    typer.echo(f"{len(items)} label item(s) in {collection}", err=True)


@app.command("list")
def list_(stac_api: StacApiOpt = None, home: HomeOpt = None) -> None:
    """The label collections, with their classes and tasks."""
    catalog = _catalog(stac_api, home)
    try:
        found = catalog.collections()
    except Exception as exc:
        raise _fail(f"{catalog.where}: {type(exc).__name__}: {exc}".splitlines()[0], 1) from None
    finally:
        catalog.close()
    for c in found:
        s = c.get("summaries") or {}
        typer.echo(
            f"{c['id']}\tclasses: {','.join(s.get(CLASSES_FIELD, []))}\t"
            f"tasks: {','.join(s.get('label:tasks', []))}"
        )


@app.command("chips")
def chips(
    labels: Annotated[
        str, typer.Option(help="label items: a STAC labels collection or catalog (path or URL)")
    ],
    out: Annotated[Path, typer.Option(help="the dataset folder to write", file_okay=False)],
    size: Annotated[int, typer.Option(help="chip edge in pixels (10 m)")] = 64,
    stride: Annotated[int | None, typer.Option(help="pixels between chips (default: size)")] = None,
    classes: Annotated[
        str | None, typer.Option(help="comma-separated dataset classes, in output order")
    ] = None,
    background: Annotated[
        str | None, typer.Option(help="the class of labelled pixels outside every shape")
    ] = None,
    class_list: Annotated[
        Path | None,
        typer.Option(help="a labelling tool's labels.json: more class names --classes may use"),
    ] = None,
    bands: Annotated[
        str, typer.Option(help="band set: rgb, ms13 (L1C scenes) or l2a (L2A's 12 bands)")
    ] = "rgb",
    min_share: Annotated[float, typer.Option(help="share a chip's class must cover")] = 0.75,
    max_invalid: Annotated[float, typer.Option(help="most nodata/cloud share kept")] = 0.05,
    block: Annotated[int, typer.Option(help="chips per edge of a spatial split block")] = 4,
    split_by: Annotated[str, typer.Option(help="space (blocks with a gap) or date")] = "space",
    seed: int = 0,
) -> None:
    """Cut image chips and per-pixel masks from the labelled scenes, read as inference reads
    them, into a stac-geoparquet dataset that ``eostream trainer fit --dataset`` trains on."""
    from eostream.inference import chips as cutter  # inference's scene reader: one code path
    from eostream.inference.errors import InferenceError
    from eostream.trainer import chipset

    if split_by not in ("space", "date"):
        raise _fail(f"--split-by {split_by!r}: use space or date")
    try:
        names: list[str] = []
        if class_list is not None:
            doc = _read_json(str(class_list), "class list")
            names = [str(e["name"]) for e in doc.get("labels", [])] if isinstance(doc, dict) else []
        rules = cutter.ChipRules(
            size=size,
            stride=stride,
            min_share=min_share,
            max_invalid=max_invalid,
            block=block,
            split_by="date" if split_by == "date" else "space",
            seed=seed,
        )
        wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
        cut = cutter.cut(
            labels,
            classes=wanted,
            background=background,
            class_list=names,
            band_set=bands,
            rules=rules,
        )
        table = chipset.write(cut, out, rules)
    except (InferenceError, EostreamError, OSError, KeyError, TypeError) as exc:
        raise _fail(str(exc)) from None
    counts = cut.counts()
    typer.echo(f"{len(cut.chips)} chips ({', '.join(cut.classes)}) -> {table}")
    for split, per_class in counts.items():
        typer.echo(f"  {split}: " + ", ".join(f"{c} {n}" for c, n in per_class.items()))
    typer.echo(
        "  dropped: " + (", ".join(f"{r} {n}" for r, n in sorted(cut.dropped.items())) or "none")
    )
