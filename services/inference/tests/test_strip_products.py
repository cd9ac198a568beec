"""A scene classified strip by strip (the pipeline's MapWriter: windowed writes, COG copy,
statistics and quicklook per strip) gives the products of the whole in-memory map, pixel for
pixel; its progress reaches the caller (and a classify job's status) strip by strip."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import rasterio
from rasterio.transform import from_origin

from eostream.inference import fetch, writer
from eostream.inference.domain import DomainCheck
from eostream.inference.engine import NODATA, UNCERTAIN, batch_for, classify, plan_for
from eostream.inference.jobs import JobStore, Progress
from eostream.inference.mapwriter import MapWriter
from eostream.inference.scene import SceneReader, prepare_scene
from eostream.inference.settings import InferenceSettings
from eostream.inference.wiring import build_service
from eostream.shared.events import ModelPromoted


def local(uri: str) -> Path:
    return Path(urlparse(uri).path)


def test_a_real_tile_written_in_strips_equals_the_whole_map(
    settings: InferenceSettings,
    rkh_item: Path,
    make_model: Callable[..., ModelPromoted],
) -> None:
    # 29RKH (1098 x 1098 px, real, SCL-masked) in strips of 5 window rows (160 px: 7 strips, the
    # last one partial), with probabilities and the default uncertainty threshold
    s = settings.model_copy(update={"rows_per_strip": 5, "write_probabilities": True})
    service = build_service(s, consume=False)
    model = service.deployment.deploy(make_model("1"))
    jobs = JobStore(service.results.engine)  # what a classify job's statusInfo shows
    job = jobs.create("classify", {}, None)
    job_progress = Progress(jobs, job.id)
    reports: list[tuple[int, str]] = []
    stored: list[int] = []

    def progress(percent: int, message: str) -> None:
        reports.append((percent, message))
        job_progress(percent, message)
        stored.append(jobs.must(job.id).progress)

    outcome = service.pipeline.classify_href(str(rkh_item), replace=True, progress=progress)

    # the in-memory path on the same scene: one label map, one probability cube
    item = json.loads(rkh_item.read_text())
    card = model.card
    plan = prepare_scene(
        item, str(rkh_item), card, policy=s.level_mismatch, b10_fill=s.b10_fill_reflectance
    )
    env = fetch.gdal_env(s.s3, s.gdal_cache_mb)
    with SceneReader(plan, card, env, max_pixels=s.max_scene_pixels, allow_coarse=True) as reader:
        whole = classify(
            reader,
            model,
            plan_for(card, reader.height, reader.width, s.stride),
            batch_size=batch_for(card, s.batch_size, s.pixel_batch_size),
            probabilities=True,
            uncertain_below=s.uncertain_below,
            domain=DomainCheck(card.input_reference, s.out_of_domain_limit)
            if card.input_reference is not None
            else None,
        )
        pixel_km2 = reader.bounds_area_km2()
    # the scene has classes, uncertain and masked pixels to compare
    assert (whole.labels < len(card.classes)).any()
    assert (whole.labels == UNCERTAIN).any() and (whole.labels == NODATA).any()

    assets = outcome.record.item["assets"]
    with rasterio.open(local(assets["classification"]["href"])) as cog:
        np.testing.assert_array_equal(cog.read(1), whole.labels)
        assert cog.overviews(1) and cog.colormap(1)[1][:3] == (20, 110, 40)
    with rasterio.open(local(assets["probabilities"]["href"])) as cog:
        assert whole.probabilities is not None
        np.testing.assert_array_equal(cog.read(), whole.probabilities)
        assert cog.scales == (1 / 254,) * cog.count  # GDAL's band scale, kept by the COG
    stats = json.loads(local(assets["statistics"]["href"]).read_bytes())
    expected = writer.statistics(whole.labels, card.classes, pixel_km2)
    assert whole.confidence is not None
    confidence = whole.confidence.properties()
    expected["mean_confidence"] = confidence["eostream:mean_confidence"]
    expected["uncertain"]["below"] = confidence["eostream:uncertain_below"]
    expected["out_of_domain"] = confidence["eostream:out_of_domain"]
    assert stats == expected
    properties = outcome.record.item["properties"]
    assert {k: properties[k] for k in confidence} == confidence
    assert outcome.record.stats == stats
    caption = f"{item['id']}  |  eurosat v1 (run run1, fp32)"
    assert local(assets["quicklook"]["href"]).read_bytes() == writer.quicklook_png(
        whole.labels, card.classes, caption=caption
    )

    # progress: one report a strip (rows done, 10..90 %), then the map writing
    strips = [r for r in reports if "rows" in r[1]]
    assert len(strips) == 7
    assert strips[-1] == (90, strips[-1][1]) and strips[-1][1].startswith("classified 1098/1098")
    assert [p for p, _ in strips] == sorted(p for p, _ in strips)
    assert reports[-1][0] == 95
    assert stored == [p for p, _ in reports]
    assert jobs.must(job.id).message.startswith("writing the map")


def test_odd_strips_off_the_quicklook_grid(tmp_path: Path) -> None:
    """Strips whose tops fall between quicklook rows (step 6, strips of 163 rows) and a
    probability cube: the COGs equal whole-array writes, counts and quicklook the whole map's."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (1300, 1100)).astype(np.uint8)
    labels[:40], labels[600:650] = 255, 254
    probs = rng.integers(0, 255, (4, 1300, 1100)).astype(np.uint8)
    where = from_origin(500000, 4000000, 10, 10)
    classes = ("a", "b", "c", "d")
    writer.write_classification(tmp_path / "whole.tif", labels, where, "EPSG:32631", classes)
    writer.write_probabilities(tmp_path / "whole-p.tif", probs, where, "EPSG:32631", classes)
    with MapWriter(
        labels.shape,
        where,
        "EPSG:32631",
        classes,
        classification=tmp_path / "strips.tif",
        probabilities=tmp_path / "strips-p.tif",
        quicklook_size=256,
    ) as maps:
        for top in range(0, 1300, 163):
            maps.write(top, labels[top : top + 163], probs[:, top : top + 163])
        maps.finish()
    assert maps.step == 6
    np.testing.assert_array_equal(maps.quicklook, labels[::6, ::6])
    assert writer.statistics_of_counts(maps.counts, labels.size, classes, 1e-4) == (
        writer.statistics(labels, classes, 1e-4)
    )
    for whole, strips in (("whole.tif", "strips.tif"), ("whole-p.tif", "strips-p.tif")):
        with rasterio.open(tmp_path / whole) as a, rasterio.open(tmp_path / strips) as b:
            assert a.profile == b.profile and a.tags() == b.tags()
            assert a.descriptions == b.descriptions
            np.testing.assert_array_equal(a.read(), b.read())
            assert a.overviews(1) == b.overviews(1)
            small = (a.count, a.height // 4, a.width // 4)
            np.testing.assert_array_equal(a.read(out_shape=small), b.read(out_shape=small))
            if a.count == 1:
                assert a.colormap(1) == b.colormap(1) and a.tags(1) == b.tags(1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["whole.tif", "whole-p.tif", "strips.tif", "strips-p.tif"]
    ), "the strip files are gone"
