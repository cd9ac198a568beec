"""Full EuroSAT RGB training (outside CI): the trainer's own pipeline against a plain torch loop.

Selects all 27,000 RGB patches (random split, seed 42), measures a plain torch training loop over
the same train tensors with the same network (no augmentation, no checkpoints, no tracking; one
warm-up batch first, as ``--precision-table``) as the baseline, then runs the trainer's pipeline
(augmentation, validation, checkpoints, MLflow, ONNX, registration) and prints its throughput as
a ratio of the baseline and its held-out accuracy.

Target: >= 0.97 test accuracy. ``--architecture resnet18 --epochs 30`` (the full-resolution
ResNet-18) is meant for a GPU: 12 to 16 h on two CPU cores. ``--architecture resnet18_imagenet
--epochs 45 --patience 45`` reached 0.971 in 86 min on two CPU cores (0.968 in 30 epochs),
``resnet18_stride2`` 0.963 in 16 epochs (103 min), and 0.982 with ``--epochs 50 --patience 50
--label-smoothing 0.1`` in bf16 (``TRAINER_CPU_BF16=true``, 102 min on an AMX CPU; README).
A short proof run:

    EOSTREAM_DATA_DIR=/path/to/data uv run python benchmarks/train/eurosat_rgb_full.py \
        --epochs 1 --samples-per-class 100 --baseline-images 1000

``--precision-table small_cnn,resnet18_imagenet,resnet18_stride2,resnet18`` only times the plain
loop, per network, in fp32 and then in the mode ``TRAINER_CPU_BF16=true`` gives this machine
(bf16-mixed on a CPU with AMX or AVX512-BF16, fp16-mixed on CUDA, fp32 where neither), from the
same initial weights on the same patches (``--baseline-images`` a side, one warm-up batch
first), and prints the ratios.

Settings come from the environment as for the worker (TRAINER_MLFLOW_TRACKING_URI,
TRAINER_CACHE_DIR, TRAINER_DEVICE, TRAINER_NUM_THREADS, TRAINER_CPU_BF16; EOSTREAM_DATA_DIR).
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
import uuid

import torch
from torch import nn

from eostream.shared.settings import load_settings
from eostream.trainer.catalog import build_catalog
from eostream.trainer.datasets import band_statistics, load_patches
from eostream.trainer.models import build_model
from eostream.trainer.pipeline import tracker_for, train_and_register
from eostream.trainer.plan import TrainingPlan
from eostream.trainer.selection import SelectionSpec, select
from eostream.trainer.settings import TrainerSettings
from eostream.trainer.task import TrainConfig, autocast, resolve_device, training_precision


def plain_loop(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    batch_size: int,
    images: int,
    lr: float,
    mode: str,
) -> float:
    """images/s of the textbook loop: shuffle, forward, loss, backward, step (in the pipeline's
    precision ``mode``, channels-last as it trains)."""
    model.to(device).to(memory_format=torch.channels_last).train()  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=mode == "fp16-mixed")  # as the trainer's
    order = torch.randperm(len(y))[:images]
    done, started = 0, time.perf_counter()
    for i in range(0, len(order), batch_size):
        index = order[i : i + batch_size]
        if len(index) < 2:
            continue
        xb, yb = x[index].to(device), y[index].to(device)
        xb = xb.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad()
        with autocast(mode, device):
            loss = nn.functional.cross_entropy(model(xb), yb)
        scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        scaler.step(optimizer)
        scaler.update()
        done += len(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - started)


def precision_table(
    architectures: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    mean: list[float],
    std: list[float],
    device: torch.device,
    args: argparse.Namespace,
) -> None:
    """The plain loop's images/s per network in fp32 and in mixed precision, and their ratio."""
    mixed = training_precision(TrainConfig(cpu_bf16=True), device)
    images, batch = min(args.baseline_images, len(y)), args.batch_size
    print(f"{device}, {torch.get_num_threads()} threads, {images} images a side")
    print(f"{'network':<20} {'fp32 img/s':>11} {mixed + ' img/s':>17} {'ratio':>7}")
    for architecture in architectures:
        torch.manual_seed(0)
        initial = build_model(architecture, ("B04", "B03", "B02"), mean, std)
        rates = {}
        for mode in ("fp32", mixed):
            model = copy.deepcopy(initial)
            plain_loop(model, x[:batch], y[:batch], device, batch, batch, args.learning_rate, mode)
            rates[mode] = plain_loop(model, x, y, device, batch, images, args.learning_rate, mode)
        ratio = rates[mixed] / rates["fp32"]
        print(f"{architecture:<20} {rates['fp32']:>11,.1f} {rates[mixed]:>17,.1f} {ratio:>6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="resnet18")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--samples-per-class", type=int, default=None)
    parser.add_argument("--baseline-images", type=int, default=5000)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--mix", choices=["none", "mixup", "cutmix", "both"], default="none")
    parser.add_argument("--ema-decay", type=float, default=0.0)
    parser.add_argument(
        "--precision-table",
        default=None,
        metavar="ARCHITECTURES",
        help="comma-separated networks: time the plain loop in fp32 and in mixed precision, no run",
    )
    parser.add_argument(
        "--base-model",
        default=None,
        help="models:/NAME/VERSION to continue from (a second, low-learning-rate stage)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("stac_geoparquet", "onnxscript", "onnx_ir", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    settings = load_settings(TrainerSettings, bus="memory")
    torch.set_num_threads(settings.num_threads)
    device = resolve_device(settings.device)
    table = build_catalog(settings.data_dir, settings.cache_dir, "rgb")
    selection = select(table, SelectionSpec("rgb", samples_per_class=args.samples_per_class))
    train = load_patches(settings.data_dir, "rgb", selection.of("train"), settings.num_threads)
    mean, std = band_statistics(train.x)
    if args.precision_table:
        precision_table(args.precision_table.split(","), train.x, train.y, mean, std, device, args)
        return
    mode = training_precision(TrainConfig(cpu_bf16=settings.cpu_bf16), device)
    torch.manual_seed(0)
    model = build_model(args.architecture, ("B04", "B03", "B02"), mean, std)
    batch = args.batch_size
    plain_loop(
        model, train.x[:batch], train.y[:batch], device, batch, batch, args.learning_rate, mode
    )
    baseline = plain_loop(
        model,
        train.x,
        train.y,
        device,
        args.batch_size,
        min(args.baseline_images, len(train)),
        args.learning_rate,
        mode,
    )
    print(
        f"plain torch loop: {baseline:,.0f} images/s "
        f"({device}, {settings.num_threads} threads, {mode})"
    )

    plan = TrainingPlan(
        request_id=f"bench-{uuid.uuid4().hex[:8]}",
        model_name="eurosat-rgb-benchmark",
        band_set="rgb",
        architecture=args.architecture,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        samples_per_class=args.samples_per_class,
        patience=args.patience,
        base_model=args.base_model,
        requested_by="benchmarks/train",
        label_smoothing=args.label_smoothing,
        mix=args.mix,
        ema_decay=args.ema_decay,
    )
    outcome = train_and_register(plan, settings, tracker=tracker_for(settings))
    ours = outcome.metrics["train_images_per_second"]
    print(
        f"trainer pipeline: {ours:,.0f} images/s in its training epochs "
        f"(augmentation included): {ours / baseline:.2f}x the plain loop"
    )
    print(
        f"test accuracy {outcome.metrics['test_accuracy']:.4f} "
        f"(target 0.97), val {outcome.metrics['best_val_accuracy']:.4f}, "
        f"{outcome.metrics['epochs_run']:.0f} epochs, registered "
        f"{outcome.version.name} v{outcome.version.version}: {outcome.run_url}"
    )


if __name__ == "__main__":
    main()
