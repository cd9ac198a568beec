"""A full 10980 x 10980 Sentinel-2 tile through inference's own pipeline: time and peak RSS,
fp32 against int8 of the same network, in one run.

* Tile: **upsampled real data**. The data folder has 29RKH (2020-02-19, L2A) only downsampled
  10x (10 m bands at 100 m, 20 m ones and SCL at 200 m, 60 m ones at 600 m; see its
  PROVENANCE.md). The benchmark resamples the bands its model reads back onto the tile's native
  grids (bilinear through GDAL's warper to 10, 20 or 60 m, nearest for SCL at 20 m) into tiled,
  deflate-compressed GeoTIFFs, with a STAC item that is the real one with its hrefs pointed at
  them, so inference resamples the 20 and 60 m bands to 10 m as it does on a real tile. The
  pixels are real reflectances but smooth (no 10 m detail): the speed and memory of the path
  are real, the maps are not meaningful.
  ``--size N`` crops the top-left N x N pixels of the same 10 m grid (for development).
  Built once into a cache folder (``EOSTREAM_BENCH_CACHE``, default ``$TMPDIR``).
* Model (``--model``): bench_int8's ``rgb`` model (``small_cnn`` trained on EuroSAT RGB, 3
  epochs) or its ``ms13`` one (``centre_cnn`` on the 13 EuroSAT bands, 10 epochs, the demo's
  map architecture: its per-pixel map output labels the central 32 x 32 px of each window at
  stride 32; B10, absent from L2A, filled as inference fills it), exported with the trainer's
  ``export_onnx``; or an existing export (``--onnx``: the demo's model, a registered version's
  file) with the int8 file the bridge shipped for it (``--int8``). Quantised with the
  registry-bridge's own ``quantise`` on 256 training patches (what the bridge ships as the MLM
  item's int8 asset). fp32 runs the export; int8 runs through the deployment's own int8 choice
  (an MLM item naming the int8 file with its checksum and a passed check, as the bridge writes
  it).
* Each precision classifies in a child process of its own, through the service's
  ``Pipeline.classify_href`` (what a SceneDiscovered event or ``eostream inference classify``
  runs) with the service's settings (stride 32 by default, batch 64 on the CPU and 256 on a GPU,
  strips of ~512 rows, uncertain below 0.5, no probabilities unless ``--probabilities``): wall
  time, windows/s, pixels/s and the child's peak RSS (``VmHWM``). Then the pixel agreement of
  each map with the first.
* ``--providers cuda cpu`` runs each precision on each execution provider (int8 on the CPU only:
  CUDA runs the fp32 file, as the service does). A CUDA run is **asserted**: the child fails if
  the result item names any other provider.

    EOSTREAM_DATA_DIR=/work/shared/data uv run python benchmarks/inference/bench_full_tile.py \
        [--model rgb|ms13 | --onnx FP32 [--int8 INT8]] [--size 10980] [--stride 32] \
        [--threads 2] [--epochs N] [--precisions fp32 int8] [--providers cpu cuda]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.util
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.cpu
from benchmarks.cpu import cpu_mask

RKH = "sentinel2_scenes/S2A_29RKH_20200219_0_L2A_cog_downsampled"
FULL = 10980
PRECISIONS = ("fp32", "int8")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
CACHE = Path(
    os.environ.get("EOSTREAM_BENCH_CACHE", Path(tempfile.gettempdir()) / "eostream-bench-full-tile")
)
#: asset key -> (file of the downsampled tile, metres per pixel of the rebuilt band, resampling)
BANDS = {
    "coastal": ("B01.tif", 60, "bilinear"),
    "blue": ("B02.tif", 10, "bilinear"),
    "green": ("B03.tif", 10, "bilinear"),
    "red": ("B04.tif", 10, "bilinear"),
    "rededge1": ("B05.tif", 20, "bilinear"),
    "rededge2": ("B06.tif", 20, "bilinear"),
    "rededge3": ("B07.tif", 20, "bilinear"),
    "nir": ("B08.tif", 10, "bilinear"),
    "nir08": ("B8A.tif", 20, "bilinear"),
    "nir09": ("B09.tif", 60, "bilinear"),
    "swir16": ("B11.tif", 20, "bilinear"),
    "swir22": ("B12.tif", 20, "bilinear"),
    "scl": ("SCL.tif", 20, "nearest"),
}
#: the assets a model of each band set reads (and SCL for the masks); any other band set: all
ASSETS = {"rgb": ("blue", "green", "red", "scl")}


def memory_mib(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process in MiB. Not ``ru_maxrss``: Linux
    keeps that across ``execve``, so a child started by the training parent would report the
    parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_int8() -> ModuleType:
    """The sibling benchmark whose model recipe and quantisation this one reuses."""
    spec = importlib.util.spec_from_file_location(
        "bench_int8", Path(__file__).with_name("bench_int8.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the tile ---------------------------------------------------------------------------------
def build_tile(data_dir: Path, size: int, band_set: str = "rgb") -> Path:
    """The 29RKH bands a ``band_set`` model reads resampled to their native grids (top-left
    ``size`` px of the 10 m grid), and its item. A band already built for another is reused."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    folder = CACHE / f"rkh-10m-{size}"
    item_path = folder / ("item.json" if band_set == "rgb" else "item-all.json")
    if item_path.exists() and all(  # built before coarse grids were rounded up: build again
        asset["proj:shape"][0] == -(-size * 10 // BANDS[key][1])
        for key, asset in json.loads(item_path.read_text())["assets"].items()
    ):
        return item_path
    folder.mkdir(parents=True, exist_ok=True)
    source = data_dir / RKH
    item = json.loads((source / "S2A_29RKH_20200219_0_L2A.json").read_text())

    def build(key: str) -> dict[str, Any]:
        name, metres, how = BANDS[key]
        n = -(-size * 10 // metres)  # covers the 10 m grid: read as a tile's coarser bands are
        transform = from_origin(199980, 2800020, metres, metres)
        target = folder / name
        started = time.perf_counter()
        with rasterio.open(source / name) as src:
            if target.exists():
                with rasterio.open(target) as built:
                    if built.width == n:  # built for another band set
                        return asset_for(key, target, n, transform)
            vrt = WarpedVRT(
                src,
                crs=src.crs,
                transform=transform,
                width=n,
                height=n,
                resampling=Resampling[how],
                nodata=src.nodata,
            )
            profile = {
                "driver": "GTiff",
                "width": n,
                "height": n,
                "count": 1,
                "dtype": src.dtypes[0],
                "crs": src.crs,
                "transform": transform,
                "nodata": src.nodata,
                "tiled": True,
                "blockxsize": 512,
                "blockysize": 512,
                "compress": "DEFLATE",
            }
            with vrt, rasterio.open(f"{target}.part", "w", **profile) as dst:
                for row in range(0, n, 1024):
                    window = Window(0, row, n, min(1024, n - row))
                    dst.write(vrt.read(1, window=window), 1, window=window)
        Path(f"{target}.part").rename(target)
        seconds = time.perf_counter() - started
        print(f"  built {name}: {n}x{n} px at {metres} m ({how}) in {seconds:.0f} s", flush=True)
        return asset_for(key, target, n, transform)

    def asset_for(key: str, target: Path, n: int, transform: Any) -> dict[str, Any]:
        asset = dict(item["assets"][key])
        asset["href"] = str(target)
        asset["proj:shape"] = [n, n]
        asset["proj:transform"] = list(transform)[:6]
        return asset

    # one band a thread: GDAL's warping and compression let go of the GIL
    keys = ASSETS.get(band_set, tuple(BANDS))
    with concurrent.futures.ThreadPoolExecutor(min(len(keys), os.cpu_count() or 1)) as pool:
        assets = dict(zip(keys, pool.map(build, keys), strict=True))
    item["id"] = f"{item['id']}_10m_upsampled_{size}"
    item["assets"] = assets
    item["links"] = []
    item_path.write_text(json.dumps(item))
    return item_path


# -- the model --------------------------------------------------------------------------------
#: the rgb model's training epochs and seed unless told (``--epochs``, ``--seed``); the ms13
#: model trains bench_int8's 10 epochs
EPOCHS, SEED = 3, 42
MODEL_EPOCHS = {"rgb": EPOCHS, "ms13": 10}


def model_folder(epochs: int = EPOCHS, seed: int = SEED, model: str = "rgb") -> Path:
    """Where :func:`model_files` caches the model (``bench_gpu.py`` reads its export there)."""
    return CACHE / f"model-{model}-e{epochs}-s{seed}"


def model_files(data_dir: Path, epochs: int, seed: int, model: str = "rgb") -> tuple[Path, Path]:
    """bench_int8's ``model`` (fp32 export) and its registry-bridge int8 file, cached."""
    work = model_folder(epochs, seed, model)
    # the int8 file keeps the kernels the bridge chose where it was made: one per CPU mode
    mode = os.environ.get(cpu_mask.MARKER, "host")
    fp32 = work / f"{model}.onnx"
    int8 = work / (f"{model}.int8.onnx" if mode == "host" else f"{model}.int8-{mode}.onnx")
    if not fp32.exists():
        import torch

        torch.set_num_threads(int(os.environ.get("TRAINER_NUM_THREADS", "2")))
        bench_int8().train_and_export(model, data_dir, work, seed, epochs)
    if not int8.exists():
        quantise_in_child(work / model, fp32, int8)
    return fp32, int8


def export_files(
    data_dir: Path, export: Path, int8_file: Path | None, seed: int
) -> tuple[Path, Path]:
    """An existing fp32 export (``--onnx``: the demo's model, a registered version's file) and
    its int8 file: the one given (``--int8``: what the bridge shipped), else quantised here with
    the bridge's ``quantise`` on 256 patches of its band set's training split."""
    import shutil

    digest = hashlib.sha256(export.read_bytes()).hexdigest()[:12]
    work = CACHE / (f"model-onnx-{digest}" if int8_file else f"model-onnx-{digest}-s{seed}")
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "model.onnx"
    shutil.copyfile(export, fp32)
    if int8_file is not None:
        int8 = work / "model.int8-given.onnx"
        shutil.copyfile(int8_file, int8)
        return fp32, int8
    mode = os.environ.get(cpu_mask.MARKER, "host")
    int8 = work / ("model.int8.onnx" if mode == "host" else f"model.int8-{mode}.onnx")
    if not int8.exists():
        if not (work / "model" / "calibration.npy").exists():
            bench_int8().windows_for(fp32, data_dir, work, "model", seed)
        quantise_in_child(work / "model", fp32, int8)
    return fp32, int8


def quantise_in_child(folder: Path, fp32: Path, int8: Path) -> None:
    """onnxruntime in a child that never imports torch."""
    child = [sys.executable, __file__, "--quantise", str(folder), str(fp32), str(int8)]
    subprocess.run(child, check=True)  # noqa: S603


def mlm_item_for(fp32: Path, int8: Path) -> Path:
    """What the bridge publishes for a model whose int8 file passed its check (the parts the
    deployment reads: the int8 asset, its precision, checksum and check)."""
    from eostream.shared import mlm

    sha = hashlib.sha256(int8.read_bytes()).hexdigest()
    item = {
        "type": "Feature",
        "id": fp32.stem,
        "assets": {
            "model": {"href": fp32.name, mlm.PRECISION: "fp32"},
            mlm.INT8_ASSET: {
                "href": int8.name,
                mlm.PRECISION: "int8",
                "file:checksum": f"1220{sha}",
                "eostream:int8_check": "passed",
            },
        },
    }
    path = fp32.with_name("mlm.json")
    path.write_text(json.dumps(item))
    return path


# -- child: one classification ----------------------------------------------------------------
def classify_child(args: argparse.Namespace) -> None:
    from pydantic import SecretStr

    from eostream.inference.engine import batch_for
    from eostream.inference.model import ModelInfo
    from eostream.inference.settings import InferenceSettings
    from eostream.inference.wiring import build_service
    from eostream.shared.storage.local import LocalObjectStore

    logging.basicConfig(level=logging.INFO, format="    %(asctime)s %(name)s %(message)s")
    item, fp32, out = Path(args.item), Path(args.fp32), Path(args.out)
    with tempfile.TemporaryDirectory(prefix="bench-full-tile-") as tmp:
        s = InferenceSettings(
            api_key=SecretStr("bench"),
            bus="memory",
            local_store_root=Path(tmp) / "o",
            results_db=f"sqlite:///{tmp}/r.db",
            intra_op_threads=args.threads,
            stride=args.stride,
            int8_on_cpu=args.precision == "int8",
            write_probabilities=args.probabilities,
            providers=(PROVIDERS[args.provider],),
            batch_size=args.batch_size,
            _env_file=None,
        )
        service = build_service(
            s, store=LocalObjectStore(s.local_store_root, s.bucket), consume=False
        )
        mlm_href = str(fp32.with_name("mlm.json")) if args.precision == "int8" else None
        info = ModelInfo(name="bench-full-tile", version="1", mlm_item_href=mlm_href)
        sha = hashlib.sha256(fp32.read_bytes()).hexdigest()
        model = service.deployment.deploy_uri(info, str(fp32), sha)
        rss_loaded = memory_mib("VmRSS")
        started = time.perf_counter()
        outcome = service.pipeline.classify_href(str(item), replace=True)
        total = time.perf_counter() - started
        props = outcome.record.item["properties"]
        if props["eostream:execution_provider"] != PROVIDERS[args.provider]:
            raise SystemExit(
                f"asked for {PROVIDERS[args.provider]}, the map was made on "
                f"{props['eostream:execution_provider']}"
            )
        cog = Path(tmp) / "o" / s.bucket / outcome.record.prefix / "classification.tif"
        if not cog.exists():
            cog = next((Path(tmp) / "o").rglob("classification.tif"))
        cog.rename(out.with_suffix(".tif"))
        window = props["eostream:window"]
        result = {
            "precision": model.precision,
            "batch": batch_for(model.card, s.batch_size, s.pixel_batch_size, model.provider),
            "provider": props["eostream:execution_provider"],
            "pixels": props["eostream:pixels"],
            "patch": window["patch"],
            "stride": window["stride"],
            "labels": window.get("labels", ""),
            "engine_seconds": props["eostream:duration_seconds"],
            "total_seconds": total,
            "peak_rss_mib": memory_mib("VmHWM"),
            "rss_after_model_load_mib": rss_loaded,
            "shares": {k: v["share"] for k, v in outcome.record.stats["classes"].items()},
        }
    out.write_text(json.dumps(result))


def agreement(a: Path, b: Path) -> float:
    """Share of pixels where two class maps agree (read in strips)."""
    import rasterio
    from rasterio.windows import Window

    same = total = 0
    with rasterio.open(a) as x, rasterio.open(b) as y:
        for row in range(0, x.height, 1024):
            window = Window(0, row, x.width, min(1024, x.height - row))
            p, q = x.read(1, window=window), y.read(1, window=window)
            same += int(np.count_nonzero(p == q))
            total += p.size
    return same / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=FULL, help="tile side in 10 m pixels")
    parser.add_argument(
        "--stride", type=int, default=32, help="window step (the service's default)"
    )
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    parser.add_argument(
        "--model",
        default=None,
        choices=list(MODEL_EPOCHS),
        help="bench_int8's rgb small_cnn (default) or ms13 centre_cnn (the demo's map model)",
    )
    parser.add_argument(
        "--onnx", type=Path, help="an existing fp32 export instead (e.g. the demo's model)"
    )
    parser.add_argument(
        "--int8", type=Path, help="with --onnx: its int8 file as shipped (else quantised here)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs (rgb: 3, ms13: 10)"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"]
    )
    parser.add_argument(
        "--providers", nargs="+", default=["cpu"], choices=list(PROVIDERS), help="cpu and/or cuda"
    )
    parser.add_argument(
        "--batch-size", type=int, default=0, help="windows a call (0: the provider's default)"
    )
    parser.add_argument("--probabilities", action="store_true", help="also write probabilities")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    cpu_mask.add_option(parser)
    parser.add_argument("--quantise", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--classify", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--item", "--fp32", "--out", "--precision", "--provider"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quantise:  # child: onnxruntime only
        folder, fp32, int8 = (Path(p) for p in args.quantise)
        bench_int8().quantise(fp32, int8, np.load(folder / "calibration.npy"))
        return
    if args.classify:  # child: one classification
        classify_child(args)
        return
    if args.size > FULL or args.size < 64:
        parser.error(f"--size must be between 64 and {FULL}")
    if not os.environ.get("EOSTREAM_DATA_DIR"):
        parser.error("EOSTREAM_DATA_DIR is not set: point it at the data folder")
    if args.int8 and not args.onnx:
        parser.error("--int8 goes with --onnx")
    if args.onnx and (args.model is not None or args.epochs is not None):
        parser.error("--model and --epochs train a model: not with --onnx")
    seen = cpu_mask.enter(parser, args.cpu)  # re-runs this script masked if asked
    data_dir = Path(os.environ["EOSTREAM_DATA_DIR"]).resolve()
    load = os.getloadavg()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"cpu: {bench_int8().cpu_line()}; the libraries see: {seen}")
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    model = args.model or "rgb"
    band_set = bench_int8().band_set_of(args.onnx) if args.onnx else model
    print(
        f"tile: 29RKH 2020-02-19 L2A, real bands UPSAMPLED from 100/200/600 m to 10/20/60 m, "
        f"{args.size}x{args.size} px at 10 m, for a {band_set} model",
        flush=True,
    )
    item = build_tile(data_dir, args.size, band_set)
    if args.onnx:
        fp32, int8 = export_files(data_dir, args.onnx.resolve(), args.int8, args.seed)
    else:
        epochs = args.epochs or MODEL_EPOCHS[model]
        fp32, int8 = model_files(data_dir, epochs, args.seed, model)
    mlm_item_for(fp32, int8)
    from eostream.registry_bridge.int8_kernels import kernel_of

    # read from the file: a cached one keeps the kernels chosen when it was made
    print(f"int8 convolutions on onnxruntime's {kernel_of(int8.read_bytes())} kernels", flush=True)
    runs = [
        (provider, precision)
        for provider in args.providers
        for precision in args.precisions
        if provider == "cpu" or precision == "fp32"  # CUDA runs the fp32 file
    ]
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-full-tile-") as tmp:
        for provider, precision in runs:
            name = run_name(provider, precision, args.providers)
            out = Path(tmp) / f"{provider}-{precision}.json"
            child = [sys.executable, __file__, "--classify", "--item", str(item)]
            child += ["--fp32", str(fp32), "--out", str(out), "--precision", precision]
            child += ["--stride", str(args.stride), "--threads", str(args.threads)]
            child += ["--provider", provider, "--batch-size", str(args.batch_size)]
            child += ["--probabilities"] if args.probabilities else []
            print(f"\n== {name}", flush=True)
            subprocess.run(child, check=True)  # noqa: S603
            figures[name] = json.loads(out.read_text())
            figures[name]["map"] = str(out.with_suffix(".tif"))
        # every map against the CPU's fp32 map (else the first run's)
        ref = figures.get(run_name("cpu", "fp32", args.providers)) or next(iter(figures.values()))
        figures["agreement"] = {
            k: agreement(Path(ref["map"]), Path(v["map"])) for k, v in figures.items()
        }
    report(figures, args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def run_name(provider: str, precision: str, providers: list[str]) -> str:
    """``fp32``/``int8`` as before when only the CPU runs; else ``fp32 cuda`` and so on."""
    return precision if providers == ["cpu"] else f"{precision} {provider}"


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    runs = {k: v for k, v in figures.items() if k != "agreement"}
    first = next(iter(runs.values()))
    side = args.size
    rows = -(-side // first["stride"])
    windows = rows * rows
    print(
        f"\ntile {side}x{side} px ({side * side / 1e6:.0f} Mpx), patch {first['patch']}, stride "
        f"{first['stride']}: {windows} windows; {args.threads} intra-op threads"
    )
    print(f"pixels labelled by: {first['labels']}")
    print(
        "run           batch   total s   engine s   windows/s    Mpx/s   peak RSS MiB (after load)"
        "   agreement"
    )
    for name, r in runs.items():
        print(
            f"{name:<13} {r.get('batch') or '-':>5} {r['total_seconds']:9.1f} "
            f"{r['engine_seconds']:10.1f} {windows / r['engine_seconds']:11.0f} "
            f"{r['pixels'] / r['total_seconds'] / 1e6:8.2f} {r['peak_rss_mib']:14.0f} "
            f"({r['rss_after_model_load_mib']:.0f}) {figures['agreement'][name]:11.4f}"
        )
    cpu = run_name("cpu", "fp32", args.providers)
    for other in (
        run_name("cpu", "int8", args.providers),
        run_name("cuda", "fp32", args.providers),
    ):
        if cpu in runs and other in runs and other != cpu:
            ratio = runs[cpu]["total_seconds"] / runs[other]["total_seconds"]
            share = figures["agreement"][other]
            print(
                f"{other} against {cpu} (total time): {ratio:.2f}x; the maps agree on "
                f"{share:.4f} of pixels"
            )


if __name__ == "__main__":
    main()
