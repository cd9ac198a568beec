"""The quicklook a person looks at: the map with its legend (every class's colour and name, and
"uncertain") drawn beside it and the scene id and model written below, the map's pixels
untouched."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, PngImagePlugin

from eostream.inference import writer
from eostream.inference.engine import NODATA, UNCERTAIN
from eostream.inference.service import InferenceService
from eostream.inference.writer import LEGEND_INK, colormap, quicklook_png
from eostream.shared.events import ModelPromoted
from eostream.shared.modelcard import EUROSAT_CLASSES


def test_the_quicklook_shows_the_map_and_a_legend_of_every_class_and_uncertain() -> None:
    classes = tuple(EUROSAT_CLASSES)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(classes), (300, 200)).astype(np.uint8)
    labels[:20] = UNCERTAIN
    labels[-20:] = NODATA

    with Image.open(io.BytesIO(quicklook_png(labels, classes))) as image:
        assert isinstance(image, PngImagePlugin.PngImageFile) and image.mode == "P"
        left, top, right, bottom = map(int, image.text["map_box"].split(","))
        assert (left, top, right, bottom) == (0, 0, 200, 300)
        pixels = np.asarray(image)
        palette = image.getpalette() or []
        legend = json.loads(image.text["legend"])

    assert (pixels[:bottom, :right] == labels).all(), "the map keeps its class values"
    assert image.width > right, "the legend is drawn to the right of the map"
    panel = pixels[:, right:]
    cmap = colormap(classes)
    for value in [*range(len(classes)), UNCERTAIN]:
        assert (panel == value).sum() >= 100, f"a swatch of {value}"  # 12x12 inside the outline
        assert palette[value * 3 : value * 3 + 3] == list(cmap[value][:3])
    assert (panel == LEGEND_INK).sum() > 500, "the names are written"
    assert [e["name"] for e in legend] == [*classes, "uncertain"]


def test_a_map_larger_than_the_limit_is_shrunk_and_a_tiny_one_gets_the_whole_legend() -> None:
    big = np.zeros((3000, 1500), np.uint8)
    with Image.open(io.BytesIO(quicklook_png(big, tuple(EUROSAT_CLASSES)))) as image:
        assert isinstance(image, PngImagePlugin.PngImageFile)
        assert image.text["map_box"] == "0,0,500,1000"
    tiny = np.full((4, 4), 9, np.uint8)
    with Image.open(io.BytesIO(quicklook_png(tiny, tuple(EUROSAT_CLASSES)))) as image:
        pixels = np.asarray(image)
        assert image.height > 100 and (pixels[:, 4:] == UNCERTAIN).sum() >= 100


def test_the_caption_is_written_below_the_map_and_kept_as_a_text_chunk() -> None:
    labels = np.full((40, 30), 1, np.uint8)
    caption = "S2A_29RKH_20200219_0_L2A  |  eurosat v7"
    with Image.open(io.BytesIO(quicklook_png(labels, tuple(EUROSAT_CLASSES)))) as plain:
        assert isinstance(plain, PngImagePlugin.PngImageFile)
        plain_size = plain.size
        assert "caption" not in plain.text
    png = quicklook_png(labels, tuple(EUROSAT_CLASSES), caption=caption)
    with Image.open(io.BytesIO(png)) as image:
        assert isinstance(image, PngImagePlugin.PngImageFile)
        assert image.text["caption"] == caption
        assert image.text["map_box"] == "0,0,30,40"
        pixels = np.asarray(image)
    assert image.height > plain_size[1] and image.width >= plain_size[0]
    assert (pixels[:40, :30] == labels).all(), "the map keeps its class values"
    strip = pixels[plain_size[1] :]
    assert (strip == LEGEND_INK).sum() > 200, "the caption is written in the strip below"
    assert image.width > 200, "the strip is as wide as the caption needs"


async def test_a_classified_scene_s_quicklook_names_the_scene_and_the_model(
    client: httpx.AsyncClient,
    service: InferenceService,
    make_model: Callable[..., ModelPromoted],
    rkh_item: Path,
) -> None:
    await asyncio.to_thread(service.deployment.deploy, make_model("3", seed=0))
    await asyncio.to_thread(service.pipeline.classify_href, str(rkh_item))
    r = await client.get("/results/S2A_29RKH_20200219_0_L2A/quicklook")
    assert r.status_code == 200
    with Image.open(io.BytesIO(r.content)) as image:
        assert isinstance(image, PngImagePlugin.PngImageFile)
        assert image.text["caption"] == "S2A_29RKH_20200219_0_L2A  |  eurosat v3 (run run3, fp32)"


def test_a_class_list_of_its_own_gets_distinct_colours_by_name_and_safe_names() -> None:
    """Colours went by index: a user's 12 classes repeated EuroSAT's 10 colours (open water and
    mangrove alike, bare soil drawn forest green), and "open water" was not a name the
    classification extension takes. EuroSAT's colours are unchanged."""
    assert [writer.class_colours(EUROSAT_CLASSES)[i] for i in range(10)] == list(writer.PALETTE)
    own = (
        "open water", "mangrove", "forest", "bare soil", "snow/ice", "cropland", "built-up",
        "grassland", "moss & lichen", "shrubland", "wetland (herbaceous)", "road",
    )  # fmt: skip
    colours = writer.class_colours(own)
    assert len(set(colours)) == len(own), "every class a colour of its own"
    assert writer.UNCERTAIN_COLOUR not in colours
    named = dict(zip(own, colours, strict=True))
    assert named["open water"] == writer.PALETTE[EUROSAT_CLASSES.index("River")]
    assert named["forest"] == writer.PALETTE[EUROSAT_CLASSES.index("Forest")]
    assert named["bare soil"] == (210, 180, 140)
    assert named["mangrove"] == (0, 150, 130) != named["wetland (herbaceous)"]  # taken: next
    water, other = writer.class_colours(("water", "other"))  # the Boadella labels' classes
    assert water == named["open water"] and other == (90, 90, 90)
    assert len(set(writer.class_colours(tuple(f"c{i}" for i in range(250))))) == 250
    street, seasonal, rice, woodland = writer.class_colours(
        ("street", "seasonal crop", "rice paddy", "woodland")
    )  # whole words or their beginnings: not tree, sea, ice
    assert street == (120, 120, 120) and seasonal == (230, 180, 60)
    assert rice not in (writer.PALETTE[8], (150, 220, 245)) and woodland == (20, 110, 40)

    entries = writer.legend(own)
    assert [(e["name"], e.get("title")) for e in entries[:4]] == [
        ("open_water", "open water"), ("mangrove", None), ("forest", None),
        ("bare_soil", "bare soil"),
    ]  # fmt: skip
    assert entries[4]["name"] == "snow_ice" and entries[8]["name"] == "moss_lichen"
    assert all(re.fullmatch(r"[0-9A-Za-z_-]+", e["name"]) for e in entries)
    same = writer.legend(("snow/ice", "snow ice", "水", "森林"))
    assert [e["name"] for e in same] == ["snow_ice", "snow_ice_1", "class", "class_3", "uncertain"]
    assert b"<Category>open water</Category>" in writer.pam_xml(entries)  # GDAL shows the title
    cmap = colormap(own)
    assert [cmap[i][:3] for i in range(len(own))] == colours
