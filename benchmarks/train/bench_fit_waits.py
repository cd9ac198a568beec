"""How often the trainer's loop makes the host wait for the accelerator, and what a wait per
batch costs (outside CI; meant for a GPU).

``fit`` queues each batch's work and reads the epoch's loss and hits back once an epoch. Every
read of a device value on the host (``float(t)``, ``bool(t.any())``, a boolean-mask index, a
blocking copy) makes the host wait until the device has finished what was queued, so the next
batch cannot be prepared while the device computes. For each architecture and recipe this prints

* **host waits per batch**: one epoch under ``torch.cuda.set_sync_debug_mode("warn")``, which
  warns at every synchronising call; the warnings are counted (CUDA only);
* **images/s**: ``fit`` as it is, against the same ``fit`` with one wait per batch added through
  its ``on_batch`` hook (``torch.cuda.synchronize()``: what reading the loss at every batch cost
  before 2026-12-05), the two interleaved, each from the same initial weights and draws, the
  first epoch of each fit left out (cuDNN's algorithm search, the allocator), the median of the
  rest; and the ratio.

The patches are real EuroSAT RGB JPEGs (the first ``--per-class`` of each class, sorted by
name), tiled to ``--images`` per epoch. On a CPU every wait is free, so the ratio is ~1 there.

    EOSTREAM_DATA_DIR=/path/to/data uv run python benchmarks/train/bench_fit_waits.py \
        --architectures small_cnn resnet18 --epochs 4 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eostream.shared.modelcard import BAND_SETS, EUROSAT_CLASSES
from eostream.trainer.datasets import PatchTensors, band_statistics, read_rgb
from eostream.trainer.models import build_model
from eostream.trainer.task import TrainConfig, fit, resolve_device

#: the recipes timed: the trainer's default loop, and the full recipe of eurosat_rgb_recipe.py
RECIPES: dict[str, dict[str, Any]] = {
    "plain": {},
    "full": {"label_smoothing": 0.1, "mix": "both", "ema_decay": 0.999},
}


def eurosat_rgb(data_dir: Path, per_class: int) -> PatchTensors:
    """The first ``per_class`` JPEGs of each EuroSAT class (sorted by name), in model units."""
    arrays, labels, ids = [], [], []
    for label, name in enumerate(EUROSAT_CLASSES):
        files = sorted((data_dir / "eurosat_rgb" / name).glob("*.jpg"))[:per_class]
        if not files:
            raise SystemExit(f"no EuroSAT RGB patches of {name} under {data_dir}/eurosat_rgb")
        arrays += [read_rgb(f) for f in files]
        labels += [label] * len(files)
        ids += [f.stem for f in files]
    x = torch.from_numpy(np.stack(arrays).astype(np.float32))
    return PatchTensors(x, torch.tensor(labels, dtype=torch.int64), tuple(ids))


def tiled(data: PatchTensors, count: int, seed: int) -> PatchTensors:
    """``count`` patches: ``data`` repeated, shuffled once."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)) % len(data)
    return PatchTensors(data.x[order], data.y[order], tuple(data.ids[i] for i in order.tolist()))


def host_waits_per_batch(
    make: Any, train: PatchTensors, val: PatchTensors, config: TrainConfig, device: torch.device
) -> tuple[float, list[tuple[str, int]]] | None:
    """Synchronising calls per batch in one epoch of ``fit`` (CUDA's sync debug mode) and the
    lines that make the most, or None off CUDA. The epoch's once-an-epoch reads, validation and
    batch-norm refresh count too, spread over its batches."""
    if device.type != "cuda":
        return None
    one = replace(config, epochs=1)
    fit(make(), train, val, one, device)  # warm-up: the first epoch's one-off waits
    batches = len(train) // config.batch_size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fit(make(), train, val, one, device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    lines = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs).most_common(3)
    return len(syncs) / max(batches, 1), lines


def images_per_second(
    make: Any,
    train: PatchTensors,
    val: PatchTensors,
    config: TrainConfig,
    device: torch.device,
    wait: bool,
) -> float:
    """Median images/s over the epochs of one fit after its first."""

    def waited(_: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    history = fit(make(), train, val, config, device, on_batch=waited if wait else None)
    rates = [e["images_per_second"] for e in history.epochs[1:]] or [
        history.epochs[0]["images_per_second"]
    ]
    return float(statistics.median(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", nargs="+", default=["small_cnn", "resnet18"])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--per-class", type=int, default=400, help="JPEGs read per class")
    parser.add_argument("--images", type=int, default=16_384, help="patches per epoch")
    parser.add_argument("--epochs", type=int, default=4, help="per fit; the first is not timed")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved fits of each kind")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default=os.environ.get("TRAINER_DEVICE", "auto"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not os.environ.get("EOSTREAM_DATA_DIR"):
        parser.error("EOSTREAM_DATA_DIR is not set: point it at the data folder")
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.machine()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"device: {device} ({name}); torch {torch.__version__}")
    data = eurosat_rgb(Path(os.environ["EOSTREAM_DATA_DIR"]), args.per_class)
    train = tiled(data, args.images, seed=0)
    val = tiled(data, 512, seed=1)
    mean, std = band_statistics(data.x)
    print(f"{len(data)} EuroSAT RGB patches, {len(train)} an epoch; batch {args.batch_size}")
    figures: dict[str, Any] = {}
    for architecture in args.architectures:
        for recipe in args.recipes:
            config = TrainConfig(
                epochs=args.epochs,
                batch_size=args.batch_size,
                learning_rate=2e-3,
                patience=args.epochs,
                **RECIPES[recipe],
            )

            def make(architecture: str = architecture) -> torch.nn.Module:
                torch.manual_seed(0)  # the same initial weights for every fit
                return build_model(architecture, BAND_SETS["rgb"], mean, std)

            waits = host_waits_per_batch(make, train, val, config, device)
            rates: dict[str, list[float]] = {"as is": [], "waited": []}
            for _ in range(args.rounds):
                rates["as is"].append(images_per_second(make, train, val, config, device, False))
                rates["waited"].append(images_per_second(make, train, val, config, device, True))
            free, waited = (statistics.median(v) for v in rates.values())
            key = f"{architecture}/{recipe}"
            per_batch, lines = waits if waits is not None else (None, [])
            figures[key] = {
                "host_waits_per_batch": per_batch,
                "most_waits_at": lines,
                "images_per_second": rates,
            }
            shown = "n/a (not CUDA)" if per_batch is None else f"{per_batch:.2f}"
            print(
                f"{key:<22} host waits per batch {shown:>6}; images/s as is {free:,.0f}, "
                f"with a wait per batch {waited:,.0f}: {free / waited:.2f}x",
                flush=True,
            )
            if lines:
                print("    most waits at: " + ", ".join(f"{at} x{n}" for at, n in lines))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
