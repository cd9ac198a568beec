"""Whole-scene inference throughput: the pipeline against (a) bare onnxruntime on the same
windows and (b) classifying one window at a time; peak memory of each.

Scenes: the real 29RKH tile (downsampled, from EOSTREAM_DATA_DIR) and a full-size synthetic
10980x10980 tile (three 10 m COGs + a 20 m SCL, generated once into a cache folder).
Each measurement runs in its own process (clean peak RSS, no thread fights).

    EOSTREAM_DATA_DIR=/work/shared/data uv run python benchmarks/inference/bench_pipeline.py
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench")
CACHE = Path(
    os.environ.get("EOSTREAM_BENCH_CACHE", Path(tempfile.gettempdir()) / "eostream-bench-inference")
)
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
BATCH = 256


def peak_rss_mib() -> float:
    """This process's ``VmHWM``, read by bench_full_tile's ``memory_mib``: ``ru_maxrss`` would
    carry the parent's peak (it builds the synthetic tile) into each child across ``execve``."""
    spec = importlib.util.spec_from_file_location(
        "bench_full_tile", Path(__file__).with_name("bench_full_tile.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    peak: float = module.memory_mib("VmHWM")
    return peak


# -- scenes ---------------------------------------------------------------------------------
def real_item(out: Path) -> Path:
    from eostream.inference import testing

    folder = (
        Path(os.environ["EOSTREAM_DATA_DIR"])
        / "sentinel2_scenes/S2A_29RKH_20200219_0_L2A_cog_downsampled"
    )
    target = out / "rkh.json"
    testing.localise_item(folder / "S2A_29RKH_20200219_0_L2A.json", target)
    return target


def synthetic_item(size: int = 10980) -> Path:
    """A full-size tile: B02/B03/B04 at 10 m, SCL at 20 m, uint16 COGs with nodata 0."""
    import rasterio
    from rasterio.shutil import copy as rio_copy
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    folder = CACHE / f"synthetic-{size}"
    item_path = folder / "item.json"
    if item_path.exists():
        return item_path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    crs = "EPSG:32629"
    for name, res, n, dtype in (
        ("B02", 10, size, "uint16"),
        ("B03", 10, size, "uint16"),
        ("B04", 10, size, "uint16"),
        ("SCL", 20, size // 2, "uint8"),
    ):
        tmp, cog = folder / f"{name}.tmp.tif", folder / f"{name}.tif"
        profile = {
            "driver": "GTiff",
            "width": n,
            "height": n,
            "count": 1,
            "dtype": dtype,
            "crs": crs,
            "transform": from_origin(199980, 2800020, res, res),
            "nodata": 0,
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
            "compress": "DEFLATE",
        }
        with rasterio.open(tmp, "w", **profile) as dst:
            x = np.arange(n, dtype=np.float32)
            for row in range(0, n, 1024):
                h = min(1024, n - row)
                y = np.arange(row, row + h, dtype=np.float32)[:, None]
                if name == "SCL":
                    block = np.where((np.sin(y / 300) * np.cos(x / 400)) > 0.9, 9, 4).astype(
                        np.uint8
                    )
                else:
                    base = 1500 + 900 * np.sin(y / 700 + len(name)) * np.cos(x / 500)
                    block = (base + rng.normal(0, 120, (h, n))).clip(1, 10000).astype(np.uint16)
                dst.write(block, 1, window=Window(0, row, n, h))
        rio_copy(tmp, cog, driver="COG", compress="DEFLATE", blocksize=512)
        tmp.unlink()
        log.info("wrote %s", cog)
    assets = {
        k: {
            "href": str(folder / f"{b}.tif"),
            "type": "image/tiff; application=geotiff",
            "raster:bands": [{"scale": 0.0001, "offset": -0.1}],
        }
        for k, b in (("blue", "B02"), ("green", "B03"), ("red", "B04"))
    }
    assets["scl"] = {"href": str(folder / "SCL.tif"), "type": "image/tiff"}
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"synthetic-{size}",
        "bbox": [-12, 24, -11, 25],
        "geometry": None,
        "links": [],
        "assets": assets,
        "properties": {
            "datetime": "2024-06-01T11:00:00Z",
            "s2:processing_baseline": "05.10",
            "s2:product_type": "S2MSI2A",
        },
    }
    item_path.write_text(json.dumps(item))
    return item_path


def model_file() -> tuple[Path, str]:
    from eostream.inference import testing

    path = CACHE / "small_cnn_rgb.onnx"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        path.write_bytes(testing.build_small_cnn(testing.model_card("rgb", name="bench-cnn")))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


# -- measurements (each in a child process) -----------------------------------------------
def _settings(tmp: Path, stride: int) -> Any:
    from pydantic import SecretStr

    from eostream.inference.settings import InferenceSettings

    return InferenceSettings(
        api_key=SecretStr("bench"),
        bus="memory",
        local_store_root=tmp / "o",
        results_db=f"sqlite:///{tmp}/r.db",
        intra_op_threads=THREADS,
        stride=stride,
        batch_size=BATCH,
        rows_per_strip=0,
        max_scene_pixels=200_000_000,
        allow_coarse_scenes=True,
        _env_file=None,
    )


def _model(stride: int) -> Any:
    from eostream.inference.model import ModelInfo, load_model

    path, sha = model_file()
    return load_model(
        path.read_bytes(),
        ModelInfo(name="bench-cnn", version="1"),
        expected_sha256=sha,
        providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        intra_op_threads=THREADS,
    )


def measure_pipeline(item: Path, stride: int) -> dict[str, Any]:
    """The service's own path: item -> windows -> COG + quicklook + STAC item + index."""
    from eostream.inference.model import ModelInfo
    from eostream.inference.wiring import build_service
    from eostream.shared.storage.local import LocalObjectStore

    with tempfile.TemporaryDirectory() as tmp:
        s = _settings(Path(tmp), stride)
        store = LocalObjectStore(s.local_store_root, s.bucket)
        service = build_service(s, store=store, consume=False)
        pipeline = service.pipeline
        path, sha = model_file()
        service.deployment.deploy_uri(ModelInfo(name="bench-cnn", version="1"), str(path), sha)
        started = time.perf_counter()
        outcome = pipeline.classify_href(str(item), replace=True)
        total = time.perf_counter() - started
        props = outcome.record.item["properties"]
    return {
        "pixels": props["eostream:pixels"],
        "engine_seconds": props["eostream:duration_seconds"],
        "total_seconds": total,
        "provider": props["eostream:execution_provider"],
        "peak_rss_mib": peak_rss_mib(),
    }


def _reader(item: Path, model: Any) -> Any:
    from eostream.inference.fetch import gdal_env
    from eostream.inference.scene import SceneReader, prepare_scene

    plan = prepare_scene(
        json.loads(item.read_text()), str(item), model.card, policy="adapt", b10_fill=0.0015
    )
    # the real 29RKH tile is 100 m; allowed here as _settings allows it (allow_coarse_scenes)
    return SceneReader(plan, model.card, gdal_env(None), max_pixels=200_000_000, allow_coarse=True)


def measure_bare(item: Path, stride: int, sample: int) -> dict[str, Any]:
    """onnxruntime alone on windows already in memory, cut from the scene exactly as the
    pipeline cuts them (same batch size), no reading and no writing."""
    from eostream.inference.engine import batches, gather, window_view
    from eostream.inference.tiling import Plan, pad_block

    model = _model(stride)
    with _reader(item, model) as reader:
        plan = Plan(reader.height, reader.width, model.card.patch_size, stride)
        rows_needed = min(plan.rows, max(1, -(-sample // plan.cols)))
        top, bottom = plan.strip_pixels(0, rows_needed)
        data, _ = reader.read(0, min(bottom, reader.height))
    pad_bottom = bottom - min(bottom, reader.height)
    strip = np.ascontiguousarray(
        pad_block(
            data, -top, pad_bottom, plan.margin, plan.padded_width() - plan.margin - reader.width
        )
    )
    view = window_view(strip, plan, rows_needed)
    chunks = [gather(view, a, b) for a, b in batches(view, BATCH)]
    model.run(chunks[0])
    started = time.perf_counter()
    windows = 0
    for chunk in chunks:
        model.run(chunk)
        windows += len(chunk)
    seconds = time.perf_counter() - started
    return {
        "windows": windows,
        "seconds": seconds,
        "windows_per_second": windows / seconds,
        "pixels_per_second": windows / seconds * stride * stride,
        "peak_rss_mib": peak_rss_mib(),
    }


def measure_single(item: Path, stride: int, sample: int) -> dict[str, Any]:
    """The naive way: for each window, read its 64x64 pixels from every COG, run batch 1."""
    import rasterio
    from rasterio.windows import Window

    from eostream.inference import radiometry
    from eostream.inference.tiling import Plan

    model = _model(stride)
    with _reader(item, model) as reader:
        plan = Plan(reader.height, reader.width, model.card.patch_size, stride)
        sources = reader._plan.sources
        rads = reader._plan.radiometry
    scaling = {s.band: s for s in model.card.scaling}
    datasets = {b: rasterio.open(sources[b].href) for b in model.card.bands}
    rng = np.random.default_rng(1)
    picks = rng.integers(0, plan.windows, sample)
    started = time.perf_counter()
    for k in picks:
        r, c = divmod(int(k), plan.cols)
        window = Window(c * stride - plan.margin, r * stride - plan.margin, plan.patch, plan.patch)
        x = np.empty((1, len(model.card.bands), plan.patch, plan.patch), np.float32)
        for i, band in enumerate(model.card.bands):
            dn = datasets[band].read(
                sources[band].index, window=window, boundless=True, fill_value=0
            )
            x[0, i] = radiometry.to_units(dn, rads[band], scaling[band])
        model.run(x)
    seconds = time.perf_counter() - started
    for ds in datasets.values():
        ds.close()
    return {
        "windows": sample,
        "seconds": seconds,
        "windows_per_second": sample / seconds,
        "pixels_per_second": sample / seconds * stride * stride,
        "peak_rss_mib": peak_rss_mib(),
    }


def child(args: argparse.Namespace) -> None:
    item = Path(args.item)
    if args.mode == "pipeline":
        out = measure_pipeline(item, args.stride)
    elif args.mode == "bare":
        out = measure_bare(item, args.stride, args.sample)
    else:
        out = measure_single(item, args.stride, args.sample)
    sys.stdout.write(json.dumps(out) + "\n")


def run_child(mode: str, item: Path, stride: int, sample: int = 0) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "child",
        mode,
        str(item),
        "--stride",
        str(stride),
        "--sample",
        str(sample),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def report(
    name: str, stride: int, pipe: dict[str, Any], bare: dict[str, Any], single: dict[str, Any]
) -> None:
    engine_pps = pipe["pixels"] / pipe["engine_seconds"]
    total_pps = pipe["pixels"] / pipe["total_seconds"]
    bare_pps, single_pps = bare["pixels_per_second"], single["pixels_per_second"]
    lines = [
        f"== {name}, stride {stride} ({pipe['provider']}, load avg {os.getloadavg()[0]:.1f})",
        f"  pipeline, read + classify    {engine_pps / 1e6:6.2f} Mpx/s "
        f"({pipe['engine_seconds']:.1f} s)  peak RSS {pipe['peak_rss_mib']:.0f} MiB",
        f"  pipeline, + COG/PNG/STAC     {total_pps / 1e6:6.2f} Mpx/s "
        f"({pipe['total_seconds']:.1f} s)",
        f"  bare onnxruntime, same wins  {bare_pps / 1e6:6.2f} Mpx/s "
        f"({bare['windows_per_second']:.0f} windows/s)  "
        f"peak RSS {bare['peak_rss_mib']:.0f} MiB",
        f"  one window at a time         {single_pps / 1e6:6.2f} Mpx/s "
        f"({single['windows_per_second']:.0f} windows/s)  "
        f"peak RSS {single['peak_rss_mib']:.0f} MiB",
        f"  pipeline / bare ORT          {engine_pps / bare_pps:6.2f}"
        f"  (with writing {total_pps / bare_pps:.2f}; goal >= 0.80)",
        f"  pipeline / one at a time     {engine_pps / single_pps:6.1f}x",
        "",
    ]
    print("\n".join(lines))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("--full-size", type=int, default=10980)
    parser.add_argument("--skip-full", action="store_true")
    opts = parser.parse_args()
    if not os.environ.get("EOSTREAM_DATA_DIR"):
        parser.error("EOSTREAM_DATA_DIR is not set: point it at the data folder")
    with tempfile.TemporaryDirectory() as tmp:
        scenes = [("real 29RKH (1098x1098, 100 m)", real_item(Path(tmp)), 32)]
        if not opts.skip_full:
            scenes.append(
                (f"synthetic {opts.full_size}x{opts.full_size}", synthetic_item(opts.full_size), 64)
            )
        print(
            f"onnxruntime threads: {THREADS}, batch {BATCH}, "
            "model: small CNN (3 conv blocks), rgb\n"
        )
        for name, item, stride in scenes:
            log.info("measuring %s", name)
            # bare ORT before and after the pipeline: the machine is shared, loads drift
            bare1 = run_child("bare", item, stride, 4096)
            pipe = run_child("pipeline", item, stride)
            bare2 = run_child("bare", item, stride, 4096)
            bare = {k: (bare1[k] + bare2[k]) / 2 for k in bare1}
            single = run_child("single", item, stride, 800)
            report(name, stride, pipe, bare, single)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        p = argparse.ArgumentParser()
        p.add_argument("child")
        p.add_argument("mode", choices=["pipeline", "bare", "single"])
        p.add_argument("item")
        p.add_argument("--stride", type=int, default=64)
        p.add_argument("--sample", type=int, default=0)
        child(p.parse_args())
    else:
        main()
