"""onnxruntime on the GPU against the CPU of the same machine: windows/s of one model on the same
windows, in one run, through inference's own ``load_model`` (outside CI; needs a CUDA device).

* Model: an fp32 ONNX file with its model card (``--onnx``; default bench_full_tile's cached
  ``rgb`` model, the trainer's ``small_cnn`` export), and the windows saved beside it by
  bench_int8 (``test_x.npy``/``test_y.npy``: EuroSAT test patches in the model's input units).
* Each provider loads the model the way the service does (``ort_session`` options, the warm-up
  batch); the CUDA run is **asserted**: if onnxruntime does not run the session on
  ``CUDAExecutionProvider`` the benchmark fails instead of timing the CPU twice.
* Per batch size: windows/s, the median of ``--repeats`` passes over the same windows (tiled to
  at least one full batch), after one warm-up pass per shape (cuDNN picks its convolution
  algorithms per shape). ``session.run`` copies each batch to the GPU and the scores back, as
  the pipeline's calls do.
* Then top-1 accuracy of each provider on the labelled windows and their agreement.

    EOSTREAM_DATA_DIR=/path/to/data python benchmarks/inference/bench_gpu.py \
        [--onnx rgb.onnx] [--batches 64 256 1024 4096] [--cpu-threads 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def default_model() -> Path:
    """bench_full_tile's cached rgb export (its default epochs and seed)."""
    spec = importlib.util.spec_from_file_location(
        "bench_full_tile", Path(__file__).with_name("bench_full_tile.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder: Path = module.model_folder()
    return folder / "rgb.onnx"


def load(path: Path, provider: str, threads: int) -> Any:
    from eostream.inference.model import ModelInfo, load_model

    model = load_model(
        path.read_bytes(),
        ModelInfo(name=path.stem, version="bench"),
        expected_sha256=None,
        providers=(provider,),
        intra_op_threads=threads,
    )
    if model.provider != provider:
        raise SystemExit(f"asked onnxruntime for {provider}, it runs on {model.provider}")
    return model


def windows_per_second(model: Any, x: np.ndarray, batch: int, repeats: int) -> float:
    """Median windows/s of passes over ``x`` in batches of ``batch`` (one warm-up pass)."""
    chunks = [np.ascontiguousarray(x[i : i + batch]) for i in range(0, len(x), batch)]
    for chunk in chunks:
        model.run(chunk)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for chunk in chunks:
            model.run(chunk)
        rates.append(len(x) / (time.perf_counter() - started))
    return statistics.median(rates)


def predict(model: Any, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    return np.concatenate([model.run(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=None, help="fp32 export (default: cached)")
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cpu-threads", type=int, default=0, help="CPU intra-op threads (0: every core)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    path = args.onnx or default_model()
    folder = path.with_suffix("")  # bench_int8's windows folder beside the export
    x = np.load(folder / "test_x.npy").astype(np.float32)
    y = np.load(folder / "test_y.npy")
    threads = args.cpu_threads or os.cpu_count() or 1

    import onnxruntime as ort

    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"onnxruntime {ort.__version__}, providers available: {ort.get_available_providers()}")
    if CUDA not in ort.get_available_providers():
        raise SystemExit("no CUDAExecutionProvider in this onnxruntime: not a GPU build or no GPU")
    print(f"model {path} ({path.stat().st_size / 1024:.0f} KiB); {len(x)} labelled windows")
    models = {CUDA: load(path, CUDA, 0), CPU: load(path, CPU, threads)}
    print(f"CPU: {threads} intra-op threads; CUDA: session on {models[CUDA].provider}\n")

    figures: dict[str, Any] = {"model": str(path), "cpu_threads": threads, "batches": {}}
    print(f"{'batch':>6} {'CUDA windows/s':>15} {'CPU windows/s':>14} {'CUDA/CPU':>9}")
    for batch in args.batches:
        tiled = np.concatenate([x] * max(1, -(-2 * batch // len(x))))  # >= two full batches
        rates = {p: windows_per_second(m, tiled, batch, args.repeats) for p, m in models.items()}
        figures["batches"][batch] = rates
        ratio = rates[CUDA] / rates[CPU]
        print(f"{batch:>6} {rates[CUDA]:>15,.0f} {rates[CPU]:>14,.0f} {ratio:>8.1f}x", flush=True)

    labels = {p: predict(m, x) for p, m in models.items()}
    accuracy = {p: float((labels[p] == y).mean()) for p in models}
    agreement = float((labels[CUDA] == labels[CPU]).mean())
    figures |= {"accuracy": accuracy, "agreement": agreement}
    print(
        f"\ntest accuracy: CUDA {accuracy[CUDA]:.4f}, CPU {accuracy[CPU]:.4f}; "
        f"top-1 agreement {agreement:.4f}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
