"""What each free-at-inference step of the recipe buys on EuroSAT RGB (outside CI).

One network, one split (random, seed 42), one schedule; the steps are added one at a time, each
run from the same initial weights, and each is scored on the same test patches:

1. baseline: the trainer's augmentation (flips, 90-degree turns), AdamW, cosine schedule
2. + label smoothing 0.1
3. + mixup/cutmix of patch pairs (one of the two per batch)
4. + an exponential moving average of the weights (decay 0.999), which is what is kept

Nothing here changes the exported network: same size, same speed at inference. It prints test
accuracy per step, its gain over the baseline of the same run, and the wall time of each fit.
``--steps`` picks some of them (``baseline smoothing mix ema``); the steps are cumulative.

    EOSTREAM_DATA_DIR=/path/to/data uv run python benchmarks/train/eurosat_rgb_recipe.py \
        --architecture small_cnn --epochs 12

``--minutes M`` lowers the epochs so that each fit ends within about M minutes, from one epoch
of the costliest step asked (the last: the steps add up) timed on a sample first; every step
then gets that many epochs, one schedule, printed (for a lent GPU's fixed time).
``--split-file F`` keeps the split in a JSON file: written after the catalogue's selection when F
is missing, read when F exists, so a host without the catalogue's stac-geoparquet and DuckDB
trains on the same patches.
The full-resolution ResNet-18 on a GPU (benchmarks/gpu/README.md):

    ... eurosat_rgb_recipe.py --architecture resnet18 --batch-size 128 --steps ema \
        --epochs 40 --minutes 4 --split-file split.json

Settings come from the environment as for the worker (TRAINER_CACHE_DIR, TRAINER_DEVICE,
TRAINER_NUM_THREADS; EOSTREAM_DATA_DIR). Nothing is logged to MLflow: these are fits, not runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eostream.shared.modelcard import BAND_SETS
from eostream.shared.settings import load_settings
from eostream.trainer.datasets import PatchTensors, band_statistics, load_patches
from eostream.trainer.models import build_model
from eostream.trainer.scoring import evaluate
from eostream.trainer.selection import Patch
from eostream.trainer.settings import TrainerSettings
from eostream.trainer.task import TrainConfig, fit, resolve_device

#: the ladder: each step adds its settings to those of the steps before it
STEPS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "smoothing": {"label_smoothing": 0.1},
    "mix": {"mix": "both"},
    "ema": {"ema_decay": 0.999},
}


def split_patches(settings: TrainerSettings, args: argparse.Namespace) -> dict[str, list[Patch]]:
    """The train/val/test patches: from ``--split-file`` when it exists, else selected from the
    catalogue (and written to ``--split-file`` when one is named)."""
    splits = ("train", "val", "test")
    path: Path | None = args.split_file
    if path is not None and path.exists():
        stored = json.loads(path.read_text())
        if stored.get("samples_per_class") != args.samples_per_class:
            raise SystemExit(
                f"{path} holds a split of {stored.get('samples_per_class')} patches a class, "
                f"not {args.samples_per_class}: delete it or name another file"
            )
        print(f"split read from {path}")
        return {split: [Patch(**p) for p in stored[split]] for split in splits}
    from eostream.trainer.catalog import build_catalog  # stac-geoparquet, DuckDB
    from eostream.trainer.selection import SelectionSpec, select

    table = build_catalog(settings.data_dir, settings.cache_dir, "rgb")
    selection = select(table, SelectionSpec("rgb", samples_per_class=args.samples_per_class))
    patches = {split: selection.of(split) for split in splits}
    if path is not None:
        stored = {k: [asdict(p) for p in v] for k, v in patches.items()}
        path.write_text(json.dumps({"samples_per_class": args.samples_per_class} | stored))
    return patches


def sample(data: PatchTensors, n: int) -> PatchTensors:
    return PatchTensors(data.x[:n], data.y[:n], data.ids[:n])


def epochs_within(
    minutes: float,
    data: dict[str, PatchTensors],
    make_model: Callable[[], nn.Module],
    config: TrainConfig,
    device: torch.device,
) -> tuple[int, float]:
    """Epochs of ``config``'s fit that end within ``minutes``, and the seconds one epoch should
    take: one epoch on a sample (the same share of validation patches) after a warm-up one."""
    n = min(4096, len(data["train"]))
    share = n / len(data["train"])
    train = sample(data["train"], n)
    val = sample(data["val"], max(2, round(len(data["val"]) * share)))
    one = replace(config, epochs=1)
    fit(make_model(), train, val, one, device)  # warm-up: cuDNN's algorithms, allocator
    started = time.perf_counter()
    fit(make_model(), train, val, one, device)
    epoch = (time.perf_counter() - started) / share
    return max(1, min(config.epochs, math.floor(minutes * 60 / epoch))), epoch


def extras_of(step: str) -> dict[str, Any]:
    """The settings of ``step`` and of the steps before it in the ladder."""
    extras: dict[str, Any] = {}
    for name in STEPS:
        extras |= STEPS[name]
        if name == step:
            break
    return extras


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="small_cnn")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--samples-per-class", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    parser.add_argument(
        "--minutes", type=float, default=None, help="fewer epochs so each fit ends within this"
    )
    parser.add_argument("--split-file", type=Path, default=None, help="read or write the split")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    settings = load_settings(TrainerSettings, bus="memory")
    torch.set_num_threads(settings.num_threads)
    device = resolve_device(settings.device)
    started = time.perf_counter()
    data = {
        split: load_patches(settings.data_dir, "rgb", patches, settings.num_threads)
        for split, patches in split_patches(settings, args).items()
    }
    print(f"patches loaded in {time.perf_counter() - started:.0f} s", flush=True)
    mean, std = band_statistics(data["train"].x)
    print(
        f"EuroSAT RGB: {len(data['train'])} train / {len(data['val'])} val / "
        f"{len(data['test'])} test patches; {args.architecture}, {args.epochs} epochs, "
        f"batch {args.batch_size}, lr {args.learning_rate}, {device}, "
        f"{settings.num_threads} threads"
    )

    def make_model() -> nn.Module:
        torch.manual_seed(args.seed)
        return build_model(args.architecture, BAND_SETS["rgb"], mean, std)

    def config_of(step: str, epochs: int) -> TrainConfig:
        """``step``'s settings and those of the steps before it, ``epochs`` with no early stop."""
        return TrainConfig(
            epochs=epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            patience=epochs,  # no early stop: every step gets the whole schedule
            seed=args.seed,
            **extras_of(step),
        )

    steps = [name for name in STEPS if name in args.steps]
    epochs = args.epochs
    if args.minutes:  # one schedule for every step, timed on the costliest (the last asked)
        epochs, seconds = epochs_within(
            args.minutes, data, make_model, config_of(steps[-1], args.epochs), device
        )
        print(
            f"{steps[-1]}: one epoch ~{seconds:.1f} s, so {epochs} epochs for every step, each "
            f"within {args.minutes:.1f} min",
            flush=True,
        )
    rows: list[tuple[str, float, float, float]] = []
    for name in steps:
        model = make_model()
        started = time.perf_counter()
        history = fit(model, data["train"], data["val"], config_of(name, epochs), device)
        minutes = (time.perf_counter() - started) / 60
        accuracy = float(evaluate(model, data["test"], device)["accuracy"])
        rows.append((name, accuracy, history.best_val_accuracy, minutes))
        print(
            f"{name:<10} {extras_of(name)}: test {accuracy:.4f}, "
            f"val {history.best_val_accuracy:.4f} (epoch {history.best_epoch + 1}), "
            f"{epochs} epochs, {minutes:.1f} min",
            flush=True,
        )

    base = rows[0][1]
    print(f"\n| step (cumulative) | test accuracy | vs {rows[0][0]} | best val | minutes |")
    print("|---|---|---|---|---|")
    for name, accuracy, val, minutes in rows:
        print(f"| {name} | {accuracy:.4f} | {accuracy - base:+.4f} | {val:.4f} | {minutes:.1f} |")


if __name__ == "__main__":
    main()
