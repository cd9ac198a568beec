"""Products of one classified scene: the class COG, the probability COG, a quicklook PNG and
per-class area statistics."""

from __future__ import annotations

import colorsys
import io
import itertools
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from eostream.inference.engine import NODATA, UNCERTAIN
from eostream.shared.modelcard import EUROSAT_CLASSES
from eostream.shared.storage import ObjectStore

log = logging.getLogger(__name__)

#: Every object a classified scene writes under its result prefix (``<prefix>/<name>``).
PRODUCT_FILES = (
    "classification.tif",
    "probabilities.tif",
    "quicklook.png",
    "statistics.json",
    "item.json",
)


def remove_products(store: ObjectStore, prefix: str) -> None:
    """Roll back a scene whose classification failed after it wrote products: delete every
    product under ``prefix`` (missing ones are fine), so no orphan files stay behind. A delete
    that fails is logged, never raised: the error that caused the rollback is the one to tell."""
    for name in PRODUCT_FILES:
        try:
            store.delete(f"{prefix}/{name}")
        except Exception as exc:  # best effort: the original error wins
            log.warning("could not remove %s/%s after a failed scene: %s", prefix, name, exc)


#: One colour per EuroSAT class, in class order (RGB).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 180, 60),  # AnnualCrop
    (20, 110, 40),  # Forest
    (140, 200, 90),  # HerbaceousVegetation
    (120, 120, 120),  # Highway
    (200, 40, 160),  # Industrial
    (180, 230, 140),  # Pasture
    (160, 110, 40),  # PermanentCrop
    (230, 60, 50),  # Residential
    (60, 140, 230),  # River
    (20, 40, 140),  # SeaLake
)
#: The colour of "uncertain" pixels (light grey, unlike any class colour).
UNCERTAIN_COLOUR = (215, 215, 215)
UNCERTAIN_NAME = "uncertain"


#: colours of classes named otherwise than EuroSAT's, by a word in their name (first match);
#: a user's "open water" is blue and "bare soil" tan, not the colour of EuroSAT's class of that
#: index (AnnualCrop's yellow for water)
NAMED_COLOURS: tuple[tuple[tuple[str, ...], tuple[int, int, int]], ...] = (
    (("water", "sea", "lake", "river", "ocean", "reservoir", "pond"), (60, 140, 230)),
    (("snow", "ice", "glacier"), (150, 220, 245)),
    (("mangrove", "wetland", "marsh", "swamp", "bog"), (0, 150, 130)),
    (("forest", "tree", "wood"), (20, 110, 40)),
    (("moss", "lichen"), (150, 170, 110)),
    (("shrub", "scrub", "bush"), (110, 150, 60)),
    (("grass", "pasture", "meadow", "herb", "rangeland"), (140, 200, 90)),
    (("crop", "agri", "farm", "field", "orchard", "vineyard"), (230, 180, 60)),
    (("industr",), (200, 40, 160)),
    (("urban", "built", "residential", "building", "settlement", "city"), (230, 60, 50)),
    (("road", "highway", "street", "rail"), (120, 120, 120)),
    (("bare", "soil", "sand", "desert", "rock", "dune"), (210, 180, 140)),
    (("cloud",), (250, 250, 250)),
    (("other", "background"), (90, 90, 90)),
)
#: more distinct colours (Glasbey-like) for classes no word names, or whose colour is taken
EXTRA_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 127, 14), (148, 103, 189), (23, 190, 207), (188, 189, 34), (140, 86, 75),
    (227, 119, 194), (0, 90, 110), (255, 220, 0), (110, 0, 60), (0, 200, 90),
    (255, 160, 160), (80, 60, 0), (170, 255, 195), (0, 0, 90), (255, 215, 180),
)  # fmt: skip
_EUROSAT_INDEX = {name: i for i, name in enumerate(EUROSAT_CLASSES)}
#: a name the classification extension takes (v2.0.0: letters, digits, ``-`` and ``_``)
_UNSAFE = re.compile(r"[^0-9A-Za-z_-]+")


def class_colours(classes: tuple[str, ...]) -> list[tuple[int, int, int]]:
    """One colour per class, all different and none uncertain's: EuroSAT's classes keep their
    palette colour, others get the colour their name suggests (:data:`NAMED_COLOURS`; the first
    class to ask for one has it), the rest the free distinct colours in turn."""
    used = {UNCERTAIN_COLOUR}
    chosen: list[tuple[int, int, int] | None] = []
    for name in classes:
        colour = _suggested(name)
        chosen.append(colour if colour not in used else None)
        used.add(colour or UNCERTAIN_COLOUR)
    spare = (
        c for c in itertools.chain(PALETTE, EXTRA_COLOURS, _generated()) if c not in used
    )  # lazily: `used` grows as the rest take theirs
    filled = []
    for colour in chosen:
        if colour is None:
            colour = next(spare)
            used.add(colour)
        filled.append(colour)
    return filled


def _suggested(name: str) -> tuple[int, int, int] | None:
    """The colour a word of ``name`` suggests: a word that is one of :data:`NAMED_COLOURS`'
    or, for those of 4 letters or more, begins with it ("grassland", "woodland"; not "street"
    for tree, "seasonal" for sea or "rice" for ice)."""
    if name in _EUROSAT_INDEX:
        return PALETTE[_EUROSAT_INDEX[name]]
    tokens = re.findall(r"[a-z]+", name.lower())
    for words, colour in NAMED_COLOURS:
        for word in words:
            if any(t == word or (len(word) >= 4 and t.startswith(word)) for t in tokens):
                return colour
    return None


def _generated() -> Iterator[tuple[int, int, int]]:
    """Endless colours spread over the hue circle (golden ratio), for very long class lists."""
    hue = 0.0
    while True:
        hue = (hue + 0.618033988749895) % 1.0
        for value in (0.85, 0.6):
            r, g, b = colorsys.hsv_to_rgb(hue, 0.75, value)
            yield round(r * 255), round(g * 255), round(b * 255)


def safe_class_name(name: str) -> str:
    """``name`` as the classification extension's ``name`` (``open water`` -> ``open_water``)."""
    return _UNSAFE.sub("_", name).strip("_") or "class"


def legend(classes: tuple[str, ...]) -> list[dict[str, Any]]:
    """Value, name and colour of every label the map can hold (classes, then uncertain); a
    class name the classification extension does not take is made safe and kept as ``title``."""
    entries: list[dict[str, Any]] = []
    taken = {UNCERTAIN_NAME}
    for i, (name, colour) in enumerate(zip(classes, class_colours(classes), strict=True)):
        safe = safe_class_name(name)
        if safe in taken:  # "snow/ice" and "snow ice"; names of no ASCII letter ("class")
            safe = f"{safe}_{i}"
        taken.add(safe)
        entry: dict[str, Any] = {"value": i, "name": safe}
        if safe != name:
            entry["title"] = name
        entry["color_hint"] = "{:02X}{:02X}{:02X}".format(*colour)
        entries.append(entry)
    entries.append(
        {
            "value": UNCERTAIN,
            "name": UNCERTAIN_NAME,
            "description": "the model does not know: low confidence or outside its training data",
            "color_hint": "{:02X}{:02X}{:02X}".format(*UNCERTAIN_COLOUR),
        }
    )
    return entries


def colormap(classes: tuple[str, ...] | int) -> dict[int, tuple[int, int, int, int]]:
    """Pixel value -> RGBA of a class map (:func:`class_colours`; a count: unnamed classes)."""
    names = classes if isinstance(classes, tuple) else tuple(f"class_{i}" for i in range(classes))
    cmap = {i: (*colour, 255) for i, colour in enumerate(class_colours(names))}
    cmap[UNCERTAIN] = (*UNCERTAIN_COLOUR, 255)
    cmap[NODATA] = (0, 0, 0, 0)
    return cmap


def pam_xml(entries: list[dict[str, Any]]) -> bytes:
    """The GDAL PAM sidecar (``<cog>.aux.xml``) of a class COG: the category name of every
    pixel value (:func:`legend` entries; unnamed values in between are empty) and a thematic
    raster attribute table (value, class, colour), which GDAL and QGIS read beside the COG.
    GeoTIFF has no place for category names: GDAL's GTiff driver keeps them in this sidecar
    even for a file it writes itself."""
    from xml.sax.saxutils import escape

    by_value = {int(e["value"]): e for e in entries}
    top = max(by_value, default=-1)
    names = "".join(
        f"<Category>{escape(str(by_value[v].get('title', by_value[v]['name'])))}</Category>"
        if v in by_value
        else "<Category></Category>"
        for v in range(top + 1)
    )
    columns = (
        '<FieldDefn index="0"><Name>value</Name><Type>0</Type><Usage>5</Usage></FieldDefn>'
        '<FieldDefn index="1"><Name>class</Name><Type>2</Type><Usage>2</Usage></FieldDefn>'
        '<FieldDefn index="2"><Name>red</Name><Type>0</Type><Usage>6</Usage></FieldDefn>'
        '<FieldDefn index="3"><Name>green</Name><Type>0</Type><Usage>7</Usage></FieldDefn>'
        '<FieldDefn index="4"><Name>blue</Name><Type>0</Type><Usage>8</Usage></FieldDefn>'
    )
    rows = []
    for i, (value, e) in enumerate(sorted(by_value.items())):
        hint = str(e.get("color_hint", "000000"))
        r, g, b = (int(hint[k : k + 2], 16) for k in (0, 2, 4))
        shown = escape(str(e.get("title", e["name"])))  # the class as its user named it
        cells = f"<F>{value}</F><F>{shown}</F><F>{r}</F><F>{g}</F><F>{b}</F>"
        rows.append(f'<Row index="{i}">{cells}</Row>')
    table = (
        f'<GDALRasterAttributeTable tableType="thematic">{columns}{"".join(rows)}'
        "</GDALRasterAttributeTable>"
    )
    return (
        '<PAMDataset><PAMRasterBand band="1">'
        f"<CategoryNames>{names}</CategoryNames>{table}"
        "</PAMRasterBand></PAMDataset>\n"
    ).encode()


def write_classification(
    path: Path, labels: npt.NDArray[np.uint8], transform: Any, crs: Any, classes: tuple[str, ...]
) -> None:
    """uint8 COG with a colour map, internal overviews (nearest), uncertain 254, nodata 255."""
    from eostream.inference.mapwriter import MapWriter

    with MapWriter(labels.shape, transform, crs, classes, classification=path) as maps:
        maps.write(0, labels, None)
        maps.finish()


def write_probabilities(
    path: Path, probs: npt.NDArray[np.uint8], transform: Any, crs: Any, classes: tuple[str, ...]
) -> None:
    """One uint8 band per class: probability * 254 (255 = nodata)."""
    from eostream.inference.mapwriter import MapWriter

    with MapWriter(probs.shape[1:], transform, crs, classes, probabilities=path) as maps:
        maps.write(0, None, probs)
        maps.finish()


#: Palette entries of the legend panel (never a class value: classes are 0..n-1, n <= 250).
LEGEND_BACKGROUND, LEGEND_INK = 252, 253
_LEGEND_PAD, _LEGEND_SWATCH, _LEGEND_FONT_SIZE = 8, 14, 13


def quicklook_png(
    labels: npt.NDArray[np.uint8],
    classes: tuple[str, ...] | int,
    max_size: int = 1024,
    caption: str = "",
) -> bytes:
    """A palette PNG: the map (at most ``max_size`` pixels on its long side, nodata transparent)
    with its legend drawn on the right (a colour swatch and the name of every class, and
    "uncertain") and ``caption`` (the scene id and model) written below. The map keeps its class
    values; the legend (:func:`legend`, JSON) is also the PNG text chunk ``legend``, the caption
    the chunk ``caption`` and the map's box in the image the chunk ``map_box`` (left, top, right,
    bottom)."""
    names = classes if isinstance(classes, tuple) else tuple(f"class_{i}" for i in range(classes))
    step = max(1, int(np.ceil(max(labels.shape) / max_size)))
    small = np.ascontiguousarray(labels[::step, ::step])
    image = with_caption(with_legend(Image.fromarray(small, mode="P"), names), caption)
    cmap = colormap(names)
    palette = [0] * 768
    for index, (r, g, b, _a) in cmap.items():
        palette[index * 3 : index * 3 + 3] = [r, g, b]
    palette[LEGEND_BACKGROUND * 3 : LEGEND_BACKGROUND * 3 + 3] = [255, 255, 255]
    palette[LEGEND_INK * 3 : LEGEND_INK * 3 + 3] = [0, 0, 0]
    image.putpalette(palette)
    image.info["transparency"] = NODATA
    buffer = io.BytesIO()
    text = PngImagePlugin.PngInfo()
    text.add_text("legend", json.dumps(legend(names)))
    text.add_text("map_box", ",".join(map(str, (0, 0, small.shape[1], small.shape[0]))))
    if caption:
        text.add_text("caption", caption)
    image.save(buffer, format="PNG", transparency=NODATA, optimize=False, pnginfo=text)
    return buffer.getvalue()


def with_legend(
    map_image: Image.Image,
    names: tuple[str, ...],
    extra: tuple[tuple[int, str], ...] = (),
) -> Image.Image:
    """``map_image`` (mode P, class values) with a legend panel to its right: one row per class
    and one for "uncertain" (then ``extra``: (palette entry, name)), each a swatch of its palette
    entry and its name."""
    if len(names) >= LEGEND_BACKGROUND:  # no free palette entry left for the panel
        return map_image
    font = ImageFont.load_default(size=_LEGEND_FONT_SIZE)
    entries = [*enumerate(names), (UNCERTAIN, UNCERTAIN_NAME), *extra]
    row = _LEGEND_SWATCH + 4
    text_width = max(int(np.ceil(font.getlength(name))) for _, name in entries)
    panel_w = _LEGEND_PAD * 4 + _LEGEND_SWATCH + text_width
    panel_h = _LEGEND_PAD * 2 + row * len(entries)
    width, height = map_image.width + panel_w, max(map_image.height, panel_h)
    image = Image.new("P", (width, height), NODATA)
    image.paste(map_image, (0, 0))
    draw = ImageDraw.Draw(image)
    left = map_image.width
    draw.rectangle((left, 0, width - 1, panel_h - 1), fill=LEGEND_BACKGROUND)
    for n, (value, name) in enumerate(entries):
        top = _LEGEND_PAD + n * row
        x = left + _LEGEND_PAD
        draw.rectangle((x, top, x + _LEGEND_SWATCH - 1, top + _LEGEND_SWATCH - 1), fill=value)
        draw.rectangle(
            (x, top, x + _LEGEND_SWATCH - 1, top + _LEGEND_SWATCH - 1), outline=LEGEND_INK
        )
        draw.text(
            (x + _LEGEND_SWATCH + _LEGEND_PAD, top + _LEGEND_SWATCH // 2),
            name, fill=LEGEND_INK, font=font, anchor="lm",
        )  # fmt: skip
    return image


def with_caption(image: Image.Image, caption: str) -> Image.Image:
    """``image`` (mode P) with a strip below it holding ``caption`` (widened if the text needs)."""
    if not caption:
        return image
    font = ImageFont.load_default(size=_LEGEND_FONT_SIZE)
    strip = _LEGEND_FONT_SIZE + 2 * _LEGEND_PAD
    width = max(image.width, int(np.ceil(font.getlength(caption))) + 2 * _LEGEND_PAD)
    out = Image.new("P", (width, image.height + strip), NODATA)
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, image.height, width - 1, image.height + strip - 1), fill=LEGEND_BACKGROUND)
    draw.text(
        (_LEGEND_PAD, image.height + strip // 2), caption, fill=LEGEND_INK, font=font, anchor="lm"
    )
    return out


def statistics(
    labels: npt.NDArray[np.uint8], classes: tuple[str, ...], pixel_km2: float
) -> dict[str, Any]:
    """Per-class pixel counts, areas (km2) and shares of the valid (unmasked) pixels; the
    uncertain pixels are valid, counted apart (``uncertain``), so shares and it sum to 1."""
    counts = np.zeros(256, np.int64)
    for row in range(0, labels.shape[0], 1024):  # bincount widens to int64: count in blocks
        counts += label_counts(labels[row : row + 1024])
    return statistics_of_counts(counts, int(labels.size), classes, pixel_km2)


def label_counts(labels: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """How many pixels hold each value 0..255 (add the counts of strips for a whole map)."""
    return np.bincount(labels.ravel(), minlength=256).astype(np.int64)


def statistics_of_counts(
    counts: npt.NDArray[np.int64], pixels: int, classes: tuple[str, ...], pixel_km2: float
) -> dict[str, Any]:
    """:func:`statistics` from the value counts of a whole map (:func:`label_counts`)."""
    valid = int(counts[: len(classes)].sum()) + int(counts[UNCERTAIN])
    per_class = {
        name: {
            "pixels": int(counts[i]),
            "area_km2": round(float(counts[i]) * pixel_km2, 4),
            "share": round(float(counts[i]) / valid, 6) if valid else 0.0,
        }
        for i, name in enumerate(classes)
    }
    return {
        "pixels": pixels,
        "valid_pixels": valid,
        "masked_pixels": int(counts[NODATA]),
        "pixel_area_km2": pixel_km2,
        "classes": per_class,
        "uncertain": {
            "value": UNCERTAIN,
            "pixels": int(counts[UNCERTAIN]),
            "area_km2": round(float(counts[UNCERTAIN]) * pixel_km2, 4),
            "share": round(float(counts[UNCERTAIN]) / valid, 6) if valid else 0.0,
        },
    }
