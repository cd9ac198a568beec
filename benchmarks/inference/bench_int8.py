"""Static int8 (QDQ) against fp32 on this CPU: throughput, file size and accuracy, in one run.

For each model (``--models``; or ``--onnx PATH`` for an existing fp32 export) the benchmark

* trains a small real model the way bench_map_accuracy does (``rgb``: ``small_cnn`` on a few
  thousand EuroSAT RGB JPEGs; ``ms13``: the ``centre_cnn`` of docs/maps-accuracy.md, the demo's
  map model, on the 375 real 13-band patches; ``ms13-stride2``: the same as
  ``centre_cnn_stride2``) and exports it with the trainer's ``export_onnx``;
* quantises it with the registry-bridge's own ``eostream.registry_bridge.quantize.quantise`` (what
  the bridge ships as the MLM item's int8 asset; ``onnxruntime.quantization.quantize_static``: QDQ
  format, per-channel int8 weights, uint8 activations, every convolution int8, the input ones
  fed by one per-band quantisation that does the model's normalisation: ``stem="fused"``),
  calibrated on real training patches in the model's input units (what ``load_patches``
  returns: JPEG 0..255 for ``rgb``, reflectance for ``ms13``);
* measures both with onnxruntime's CPU provider and the project's session options
  (``eostream.shared.ort_session.configure``) on the same hold-out windows: windows/s at batch
  1, 64 and 256 (warm-up, then the median of interleaved repeats: ``--repeats`` all run, else
  7 cut after 20 s per batch size; the count is printed), file size, top-1 accuracy of each
  on the EuroSAT test split and the top-1 agreement of the two, and prints int8/fp32 ratios;
  the int8 model twice, its convolutions on onnxruntime's int8 GEMM (``conv_kernel="gemm"``,
  weight zero point -1) and on its direct kernels (``"direct"``, zero point 0), the values the
  same (the largest logit difference is printed), and says which the bridge's timing
  (``fastest_kernel``, ``BRIDGE_INT8__CONV_KERNEL=auto``) ships on this host: that kernel's
  column is measured on the shipped file itself, the one ``--maps`` maps; beside them, in the
  same run, the same quantisation with the stem fp32 (``stem="fp32"``: the input convolutions
  and the normalisation unquantised, what the bridge shipped from 2026-12-04 to 12-06), to show
  what quantising the stem with the normalisation folded in (``stem="fused"``) buys;
* with ``--maps``, classifies one labelled Boadella L2A date with both through inference's
  evaluation (``eostream.inference.evaluation``) and prints water IoU of each and the pixel
  agreement of the two maps (13-band models only: the RGB model maps no water on L2A scenes,
  see FIELD-NOTES.md).

Everything onnxruntime does runs in a child process that never imports torch (torch and
onnxruntime in one process fight over threads).

    EOSTREAM_DATA_DIR=/work/shared/data uv run python benchmarks/inference/bench_int8.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.cpu
from benchmarks.cpu import cpu_mask

if TYPE_CHECKING:
    from eostream.registry_bridge.quantize import Stem

# name: (band set, architecture, augmentations, samples per class, epochs, batch size)
MODELS: dict[str, tuple[str, str, tuple[str, ...], int | None, int, int]] = {
    "rgb": ("rgb", "small_cnn", (), 400, 3, 64),
    "ms13": ("ms13", "centre_cnn", ("radiometry", "centre"), None, 10, 32),
    # the same with a strided first layer: faster in int8, its maps a little less right
    "ms13-stride2": ("ms13", "centre_cnn_stride2", ("radiometry", "centre"), None, 10, 32),
}
CALIBRATION = 256  # training patches the int8 activation ranges are calibrated on
#: batch sizes timed: one window (a REST request), 64 (the bridge's kernel timing and what
#: inference runs a scene at on the CPU) and 256 (its batch on a GPU, and on the CPU until
#: 2026-12-04)
BATCHES = (1, 64, 256)
REPEATS = 7  # interleaved repeats per batch size without --repeats (cut after 20 s, 3 at least)


def cpu_line() -> str:
    """``lscpu``'s model name and which of avx2 / avx512f / VNNI / AMX the CPU flags show."""
    lscpu, out = shutil.which("lscpu"), ""
    if lscpu:
        done = subprocess.run([lscpu], capture_output=True, text=True, check=False)  # noqa: S603
        out = done.stdout
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in out.splitlines())
    )
    flags = set(fields.get("Flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    shown = " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted)
    return f"{fields.get('Model name', platform.processor())}, {os.cpu_count()} CPUs; {shown}"


def int8_goal() -> tuple[float, str] | None:
    """Issue #22's goal for int8 / fp32 on the CPU the libraries see (numpy's CPUID probe, so an
    ``--cpu avx2`` mask counts): 2x where VNNI is present, 1.5x on AVX2 without it."""
    import importlib

    seen = importlib.import_module("numpy._core._multiarray_umath").__cpu_features__
    if seen.get("AVX512VNNI") or seen.get("AVXVNNI"):
        return 2.0, "VNNI present"
    if seen.get("AVX2"):
        return 1.5, "AVX2 without VNNI"
    return None


def band_set_of(path: Path) -> str:
    """The band set of the ModelCard in an ONNX file's metadata (without importing torch)."""
    import onnx

    from eostream.shared.modelcard import METADATA_KEY, ModelCard

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return ModelCard.from_json(props[METADATA_KEY]).band_set


# -- parent: training, export, data (torch) --------------------------------------------------
def train_and_export(name: str, data_dir: Path, work: Path, seed: int, epochs: int | None) -> Path:
    """Train model ``name``, export it to ONNX and save its calibration and test windows."""
    import torch

    from eostream.shared.modelcard import ModelCard
    from eostream.trainer.cards import map_fields
    from eostream.trainer.export import export_onnx
    from eostream.trainer.recipe import fit_recipe, load_training_data
    from eostream.trainer.scoring import evaluate

    band_set, architecture, augmentation, per_class, default_epochs, batch = MODELS[name]
    data = load_training_data(
        data_dir,
        work / "cache",
        band_set,
        samples_per_class=per_class,
        seed=seed,
        splits=("train", "val", "test"),
    )
    bands, scaling = data.bands, data.scaling
    n = epochs or default_epochs
    started = time.perf_counter()
    model = fit_recipe(
        data, architecture, augmentations=augmentation, epochs=n, batch_size=batch, seed=seed
    )
    torch_accuracy = float(evaluate(model, data.splits["test"], torch.device("cpu"))["accuracy"])
    card = ModelCard(
        name=f"bench-int8-{name}",
        band_set=band_set,
        bands=bands,
        scaling=scaling,
        architecture=architecture,
        description=f"bench_int8 {name}, {n} epochs",
        **map_fields(architecture, data.train.x.shape[-1]),  # as the trainer's card has it
    )
    path = work / f"{name}.onnx"
    export_onnx(model, card, path)
    print(
        f"{name}: {architecture} on {len(data.train)} train / {len(data.splits['test'])} test "
        f"patches, {n} epochs in {time.perf_counter() - started:.0f} s; torch test accuracy "
        f"{torch_accuracy:.3f}",
        flush=True,
    )
    test = data.splits["test"]
    save_windows(work / name, data.train.x.numpy(), test.x.numpy(), test.y)
    return path


def windows_for(onnx_path: Path, data_dir: Path, work: Path, name: str, seed: int) -> None:
    """Calibration and test windows for an existing export (``--onnx``), by its card's band set."""
    from eostream.shared.holdout import HoldoutSettings
    from eostream.trainer.catalog import build_catalog
    from eostream.trainer.datasets import load_patches
    from eostream.trainer.selection import SelectionSpec, select_for_training

    band_set = band_set_of(onnx_path)
    per_class = MODELS["rgb"][3] if band_set == "rgb" else None
    table = build_catalog(data_dir, work / "cache", band_set)
    spec = SelectionSpec(band_set=band_set, samples_per_class=per_class, seed=seed)
    selection = select_for_training(table, spec, data_dir, HoldoutSettings())
    train = load_patches(data_dir, band_set, selection.of("train"))
    test = load_patches(data_dir, band_set, selection.of("test"))
    save_windows(work / name, train.x.numpy(), test.x.numpy(), test.y)


def save_windows(folder: Path, train_x: np.ndarray, test_x: np.ndarray, test_y: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(train_x), size=min(CALIBRATION, len(train_x)), replace=False)
    np.save(folder / "calibration.npy", train_x[np.sort(pick)].astype(np.float32))
    np.save(folder / "test_x.npy", test_x.astype(np.float32))
    np.save(folder / "test_y.npy", np.asarray(test_y, dtype=np.int64))


# -- child: quantisation and measurements (onnxruntime, no torch) ----------------------------
def quantise(
    fp32: Path,
    int8: Path,
    calibration: np.ndarray,
    *,
    stem: Stem = "fused",
    conv_kernel: str = "auto",
    threads: int = 2,
) -> str:
    """The product's quantisation (the registry-bridge's, what it ships), file to file; returns
    the int8 convolutions' kernel. ``conv_kernel="auto"``: both kernels timed on this host and
    the faster kept, as the bridge does by default (``fastest_kernel``); ``"gemm"`` or
    ``"direct"``: that one. ``stem``: how the input convolutions are quantised (``"fused"``, the
    bridge's: int8, the normalisation folded into the input's quantisation; ``"fp32"``: kept
    fp32, what it shipped from 2026-12-04 to 12-06, for comparison)."""
    from eostream.registry_bridge.int8_kernels import fastest_kernel
    from eostream.registry_bridge.quantize import quantise as product_quantise

    kernel = "direct" if conv_kernel == "auto" else conv_kernel
    data = product_quantise(
        fp32.read_bytes(),
        calibration,
        stem=stem,
        conv_kernel="gemm" if kernel == "gemm" else "direct",
    )
    if conv_kernel == "auto":
        data, kernel, _ = fastest_kernel(data, calibration, threads)
    int8.write_bytes(data)
    return kernel


def session(path: Path, threads: int) -> Any:
    """A session as inference opens one."""
    import onnxruntime as ort

    from eostream.shared import ort_session

    options = ort_session.configure(ort.SessionOptions(), threads=threads)
    extra = ort_session.session_arguments()
    return ort.InferenceSession(str(path), options, providers=[ort_session.CPU], **extra)


def logits(sess: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    from eostream.shared.modelcard import INPUT_NAME, OUTPUT_NAME

    outs = [
        sess.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch]})[0] for i in range(0, len(x), batch)
    ]
    return np.concatenate(outs)


def throughput(
    sessions: dict[str, Any], x: np.ndarray, batch: int, repeats: int, budget: float | None
) -> tuple[dict[str, float], int]:
    """Median windows/s of each session on the same windows, repeats interleaved, and how many
    repeats ran: all ``repeats``, or with a ``budget`` (s) at least 3, stopping once it is spent."""
    from eostream.shared.modelcard import INPUT_NAME

    # what inference asks for when it maps at a stride the block holds: the per-pixel map
    # output where the graph has one (last); onnxruntime runs the whole graph either way
    served = {k: [sess.get_outputs()[-1].name] for k, sess in sessions.items()}
    count = 1024 if batch > 1 else 256  # test windows repeated when there are fewer
    count = max(batch, count // batch * batch)
    windows = np.resize(x, (count, *x.shape[1:])).astype(np.float32)
    chunks = [windows[i : i + batch] for i in range(0, count, batch)]
    for key, sess in sessions.items():  # warm-up
        for chunk in chunks[:3]:
            sess.run(served[key], {INPUT_NAME: chunk})
    rates: dict[str, list[float]] = {k: [] for k in sessions}
    deadline = None if budget is None else time.perf_counter() + budget
    for r in range(repeats):
        for key, sess in sessions.items():
            started = time.perf_counter()
            for chunk in chunks:
                sess.run(served[key], {INPUT_NAME: chunk})
            rates[key].append(count / (time.perf_counter() - started))
        if deadline is not None and r >= 2 and time.perf_counter() > deadline:
            break
    return {k: statistics.median(v) for k, v in rates.items()}, len(rates["fp32"])


def measure(folder: Path, fp32: Path, threads: int, repeats: int | None) -> dict[str, Any]:
    """Every figure of each file; ``"int8"`` is the shipped file's (``int8_path``, the bridge's
    kernel choice), which also stands in its kernel's column (``int8_direct`` or ``int8_gemm``).
    ``repeats`` None: up to ``REPEATS``, cut after 20 s per batch size (3 at least)."""
    import onnxruntime as ort

    int8 = fp32.with_name(fp32.stem + ".int8.onnx")  # what the bridge ships (auto)
    twins = {k: fp32.with_name(f"{fp32.stem}.int8-{k}.onnx") for k in ("direct", "gemm")}
    int8_stem = fp32.with_name(fp32.stem + ".int8-stem-fp32.onnx")
    calibration = np.load(folder / "calibration.npy")
    started = time.perf_counter()
    quantise(fp32, twins["direct"], calibration, conv_kernel="direct")
    quantised_s = time.perf_counter() - started
    quantise(fp32, twins["gemm"], calibration, conv_kernel="gemm")
    chosen = quantise(fp32, int8, calibration, threads=threads)
    twins[chosen] = int8  # the shipped file itself, not a twin quantised apart
    quantise(fp32, int8_stem, calibration, stem="fp32", conv_kernel="direct")
    files = {
        "fp32": fp32,
        "int8_gemm": twins["gemm"],
        "int8_direct": twins["direct"],
        "int8_stem_fp32": int8_stem,
    }
    x, y = np.load(folder / "test_x.npy"), np.load(folder / "test_y.npy")
    sessions = {k: session(p, threads) for k, p in files.items()}
    scores = {k: logits(s, x) for k, s in sessions.items()}
    pred = {k: v.argmax(1) for k, v in scores.items()}
    shipped = f"int8_{chosen}"
    accuracy = {k: float((p == y).mean()) for k, p in pred.items()}
    agreement = {k: float((pred["fp32"] == p).mean()) for k, p in pred.items() if k != "fp32"}
    out: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "band_set": band_set_of(fp32),
        "threads": threads,
        "quantise_s": quantised_s,
        "int8_path": str(int8),
        "conv_kernel": chosen,
        "gemm_vs_direct_max_abs": float(np.abs(scores["int8_gemm"] - scores["int8_direct"]).max()),
        "test_windows": len(x),
        "size_bytes": {k: p.stat().st_size for k, p in {**files, "int8": int8}.items()},
        "accuracy": {**accuracy, "int8": accuracy[shipped]},
        "agreement": {**agreement, "int8": agreement[shipped]},
        "windows_per_s": {},
        "repeats": {},
    }
    budget = 20.0 if repeats is None else None
    for batch in BATCHES:
        rates, done = throughput(
            sessions, x, batch, REPEATS if repeats is None else repeats, budget
        )
        out["windows_per_s"][str(batch)] = {**rates, "int8": rates[shipped]}
        out["repeats"][str(batch)] = done
    return out


# -- maps (optional) ----------------------------------------------------------------------
def map_settings(root: Path, stride: int, **overrides: Any) -> Any:
    """Inference settings for mapping in-process under ``root`` at ``stride`` (a coarse scene
    allowed); ``overrides`` set any other field."""
    from eostream.inference.settings import scratch_settings

    return scratch_settings(root, stride=stride, allow_coarse_scenes=True, **overrides)


def maps(data_dir: Path, work: Path, fp32: Path, int8: Path, date: str, stride: int) -> None:
    import rasterio

    from eostream.inference import evaluation, reference
    from eostream.shared.modelcard import EUROSAT_CLASSES

    labels = reference.build_boadella(data_dir, work / f"ref-{fp32.stem}", dates=[date])
    water: dict[str, float | None] = {}
    rasters: dict[str, np.ndarray] = {}
    for key, model in (("fp32", fp32), ("int8", int8)):
        root = work / f"maps-{fp32.stem}-{key}"
        settings = map_settings(
            root, stride, uncertain_below=0.0, out_of_domain_limit=1000.0, intra_op_threads=2
        )
        started = time.perf_counter()
        report = evaluation.evaluate(str(labels), str(model), settings=settings)
        for line in report.errors:
            print(f"  error ({key}): {line}")
        for item in report.items:
            water[key] = evaluation.scores_for(item.model_cm, report.classes, item.partial)[
                "water"
            ]["iou"]
            if item.ndwi_cm is not None:
                ndwi = evaluation.scores_for(item.ndwi_cm, report.classes, item.partial)["water"]
                water["ndwi"] = ndwi["iou"]
        cogs = sorted((root / "objects").rglob("*.tif"))
        if cogs:
            with rasterio.open(cogs[0]) as ds:
                rasters[key] = ds.read(1)
        print(f"  {key}: map of {date} in {time.perf_counter() - started:.1f} s", flush=True)
    agreement = water_agreement = None
    if len(rasters) == 2 and rasters["fp32"].shape == rasters["int8"].shape:
        agreement = float((rasters["fp32"] == rasters["int8"]).mean())
        water_classes = reference.BOADELLA_MAPPING["water"]
        wet = [i for i, c in enumerate(EUROSAT_CLASSES) if c in water_classes]
        water_agreement = float(
            (np.isin(rasters["fp32"], wet) == np.isin(rasters["int8"], wet)).mean()
        )
    print(
        f"  Boadella {date}, stride {stride}: water IoU fp32 {_f(water.get('fp32'))}, int8 "
        f"{_f(water.get('int8'))}, NDWI {_f(water.get('ndwi'))}; map pixel agreement "
        f"{_f(agreement)} (all classes), {_f(water_agreement)} (water or not)"
    )


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report(name: str, m: dict[str, Any]) -> None:
    size, acc, agree, wps = m["size_bytes"], m["accuracy"], m["agreement"], m["windows_per_s"]
    print(
        f"\n== {name} (onnxruntime {m['onnxruntime']}, {m['threads']} intra-op threads, "
        f"quantised in {m['quantise_s']:.1f} s on {CALIBRATION} calibration patches)"
    )
    print(
        "int8 gemm / direct: every convolution int8, the input ones fed by one per-band "
        "quantisation that does the model's normalisation; the others on onnxruntime's int8 GEMM "
        "(weight zero point -1) / its direct kernels (zero point 0), the values the same; the "
        f"bridge ships the faster on its host (here: {m['conv_kernel']}; that column is the "
        "shipped file itself, the one --maps maps); int8 stem fp32: the input convolutions and "
        "the normalisation fp32, direct kernels (shipped 2026-12-04 to 12-06)"
    )
    print(
        "                       fp32   int8 gemm   /fp32   int8 direct   /fp32"
        "   int8 stem fp32   /fp32"
    )
    kinds = (("int8_gemm", 9), ("int8_direct", 11), ("int8_stem_fp32", 14))
    for batch in map(str, BATCHES):
        f32 = wps[batch]["fp32"]
        cells = "".join(
            f"   {wps[batch][k]:{w}.0f}   {wps[batch][k] / f32:4.2f}x" for k, w in kinds
        )
        print(f"windows/s batch {batch:>3} {f32:9.0f}{cells}")
    cells = "".join(
        f"   {size[k] / 1024:{w}.1f}   {size[k] / size['fp32']:4.2f}x" for k, w in kinds
    )
    print(f"file size (KiB)     {size['fp32'] / 1024:9.1f}{cells}")
    cells = "".join(f"   {acc[k]:{w}.4f} {acc[k] - acc['fp32']:+.4f}" for k, w in kinds)
    print(f"test accuracy       {acc['fp32']:9.4f}{cells}")
    cells = "".join(f"   {agree[k]:{w}.4f}        " for k, w in kinds)
    print(f"top-1 agreement     {'':9}{cells}".rstrip())
    goal = int8_goal()
    if goal is not None:
        at = wps["64"]["int8"] / wps["64"]["fp32"]
        print(
            f"goal (issue #22) where {goal[1]}: int8 >= {goal[0]:.1f}x fp32; the shipped int8 "
            f"file at batch 64 (inference's CPU batch): {at:.2f}x, "
            f"{'met' if at >= goal[0] else 'NOT met'}"
        )
    repeats = ", ".join(f"batch {b} {n}" for b, n in m["repeats"].items())
    print(
        f"on {m['test_windows']} test windows; repeats per batch size: {repeats}; largest "
        f"|logit| difference of int8 gemm and int8 direct: {m['gemm_vs_direct_max_abs']:.3g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["rgb", "ms13"], choices=list(MODELS))
    parser.add_argument("--onnx", type=Path, help="an existing fp32 export instead of training")
    parser.add_argument("--epochs", type=int, default=None, help="override every model's")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    parser.add_argument(
        "--repeats",
        type=int,
        help=f"interleaved repeats per batch size, all run (default: {REPEATS}, cut after 20 s)",
    )
    parser.add_argument("--maps", action="store_true", help="water IoU on one Boadella date")
    parser.add_argument("--date", default="2020-09-14", help="the Boadella date of --maps")
    parser.add_argument("--stride", type=int, default=32, help="window step (px) of --maps")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    cpu_mask.add_option(parser)
    parser.add_argument("--measure", nargs=2, metavar=("FOLDER", "ONNX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the child: onnxruntime only
        folder, fp32 = Path(args.measure[0]), Path(args.measure[1])
        result = measure(folder, fp32, args.threads, args.repeats)
        (folder / "result.json").write_text(json.dumps(result))
        return
    if not os.environ.get("EOSTREAM_DATA_DIR"):
        parser.error("EOSTREAM_DATA_DIR is not set: point it at the data folder")
    seen = cpu_mask.enter(parser, args.cpu)  # re-runs this script masked if asked
    data_dir = Path(os.environ["EOSTREAM_DATA_DIR"]).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    load = os.getloadavg()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"cpu: {cpu_line()}; the libraries see: {seen}")
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    if args.onnx:
        exports = {args.onnx.stem: args.onnx.resolve()}
        windows_for(exports[args.onnx.stem], data_dir, work, args.onnx.stem, args.seed)
    else:
        import torch

        torch.set_num_threads(int(os.environ.get("TRAINER_NUM_THREADS", "2")))
        exports = {
            name: train_and_export(name, data_dir, work, args.seed, args.epochs)
            for name in args.models
        }
    figures: dict[str, Any] = {}
    for name, fp32 in exports.items():
        child = [sys.executable, __file__, "--threads", str(args.threads)]
        child += [] if args.repeats is None else ["--repeats", str(args.repeats)]
        child += ["--measure", str(work / name), str(fp32)]
        subprocess.run(child, check=True)  # noqa: S603
        figures[name] = json.loads((work / name / "result.json").read_text())
        report(name, figures[name])
        if args.maps and figures[name]["band_set"] == "ms13":
            maps(data_dir, work, fp32, Path(figures[name]["int8_path"]), args.date, args.stride)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
