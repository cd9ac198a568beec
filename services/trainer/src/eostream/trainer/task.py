"""Training one model: loss, optimiser, one epoch, evaluation, early stopping, checkpoints.

Seeded end to end: the shuffle and augmentation of epoch ``e`` come from generators seeded with
``seed + e``, so a run resumed from its checkpoint after a crash continues exactly as it would
have. The checkpoint is written atomically after every epoch and holds the model, optimiser,
scheduler, the best weights so far and the history.

Training runs in channels-last memory format (NHWC): on two CPU cores it is 1.1x (ResNet-18) to
1.5x (small CNN) faster, and on a GPU it is what tensor cores want. The model is handed back in
the default format, so what is saved and exported does not depend on it.

What costs nothing at inference (the exported network is the same size and shape): label
smoothing, mixup/cutmix of patch pairs, and an exponential moving average (EMA) of the weights,
which is then the model that is validated, kept and exported. ``benchmarks/train/
eurosat_rgb_recipe.py`` measures what each buys.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from eostream.shared.events import MixMode
from eostream.trainer.datasets import UNKNOWN, PatchTensors, augment_pair
from eostream.trainer.scoring import evaluate

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
BatchCallback = Callable[[int], None]

#: Beta(alpha, alpha) of the mixing weight: mixup blends mildly (timm's and the paper's small
#: alpha for small images); cutmix draws the box's area uniformly
MIXUP_ALPHA = 0.2
CUTMIX_ALPHA = 1.0
#: training patches the EMA's batch-norm statistics are measured on before each validation
BN_REFRESH_PATCHES = 4096


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 5
    seed: int = 42
    augment: bool = True
    amp: bool = True  # used on CUDA only
    #: bf16 autocast on a CPU with native bf16 (see :func:`training_precision`)
    cpu_bf16: bool = False
    #: the backbone's learning rate relative to the head's (a pretrained start: below 1)
    backbone_lr_scale: float = 1.0
    #: per-class weights of the loss (None: all 1); see :func:`balanced_class_weights`
    class_weights: tuple[float, ...] | None = None
    #: the target puts ``1 - s`` on the label and ``s`` spread over every class
    label_smoothing: float = 0.0
    #: mix pairs of training patches (patch classification only): ``mixup`` blends two images,
    #: ``cutmix`` pastes a box of one into the other, ``both`` picks one of the two per batch
    mix: MixMode = "none"
    #: above 0: an exponential moving average of the weights with this decay per step, its
    #: batch-norm statistics measured again on training patches, is what is validated, kept and
    #: handed back
    ema_decay: float = 0.0


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_accuracy: float = -1.0
    stopped_early: bool = False
    images_per_second: float = 0.0


def training_precision(config: TrainConfig, device: torch.device) -> str:
    """What the forward and backward passes compute in: ``fp16-mixed`` (CUDA autocast with loss
    scaling), ``bf16-mixed`` (CPU autocast, asked for and native to the CPU: AMX or AVX512-BF16;
    emulated bf16 would be slower than fp32) or ``fp32``. Weights and optimiser state stay fp32."""
    if device.type == "cuda" and config.amp:
        return "fp16-mixed"
    if device.type == "cpu" and config.cpu_bf16:
        if native_bf16():
            return "bf16-mixed"
        log.warning("cpu_bf16 asked for but this CPU has no native bf16: training in fp32")
    return "fp32"


def autocast(mode: str, device: torch.device) -> torch.autocast:
    """The autocast context of a training step in precision ``mode`` (off for ``fp32``)."""
    dtype = torch.bfloat16 if mode == "bf16-mixed" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=mode != "fp32")


def resumable(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a checkpoint's settings must share with a run's for it to resume: everything but
    ``cpu_bf16`` (the weights and optimiser state are fp32 whatever the precision), so a
    checkpoint of an older version without that field resumes too."""
    return None if config is None else {k: v for k, v in config.items() if k != "cpu_bf16"}


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: AMX or AVX512-BF16 on x86 (oneDNN's own check
    also says yes on any AVX-512 CPU, where it emulates bf16 slower than fp32), oneDNN's bf16
    support elsewhere (Arm)."""
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    available = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    return bool(available and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    tmp.replace(path)


#: the classification head's parameters, by name (the ResNets' ``fc``)
HEAD_PREFIX = "backbone.fc."


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The optimiser's groups: the trainable parameters at ``learning_rate``, or with a
    ``backbone_lr_scale`` other than 1 the head (``fc``) at ``learning_rate`` and the rest at
    ``learning_rate * backbone_lr_scale``. Frozen parameters are left out."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if config.backbone_lr_scale == 1.0:
        return [{"params": [p for _, p in named]}]
    head = [p for n, p in named if n.startswith(HEAD_PREFIX)]
    if not head:
        raise ValueError(f"backbone_lr_scale needs a head ({HEAD_PREFIX}*) to tell apart")
    rest = [p for n, p in named if not n.startswith(HEAD_PREFIX)]
    lr = config.learning_rate
    return [{"params": rest, "lr": lr * config.backbone_lr_scale}, {"params": head, "lr": lr}]


def balanced_class_weights(labels: torch.Tensor, classes: int) -> tuple[float, ...]:
    """Loss weights inversely proportional to each class's share of ``labels`` (mean 1 over the
    classes present; an absent class weighs 0): a rare class (the water of a valley) counts as
    much as a common one instead of being outvoted."""
    labels = labels.flatten()  # per-pixel masks count their labelled pixels
    labels = labels[labels != UNKNOWN]
    counts = torch.bincount(labels, minlength=classes).double()
    present = counts > 0
    weights = torch.zeros(classes, dtype=torch.float64)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return tuple(round(float(w), 6) for w in weights)


def epochs_for_steps(epochs: int, samples: int, batch_size: int, min_steps: int) -> int:
    """``epochs``, raised so that training takes at least ``min_steps`` optimiser steps: a few
    dozen chips make one or two batches an epoch, and ten epochs of that barely move a network."""
    per_epoch = max(1, -(-samples // batch_size))
    return max(epochs, -(-min_steps // per_epoch))


class WeightAverage(AveragedModel):
    """An exponential moving average of ``model``'s weights (decay ``decay`` per step; its
    buffers copied, not averaged: averaged running statistics do not fit averaged weights):
    torch's ``AveragedModel`` with the same state, whose update does not read its step count
    back from the device (``AveragedModel.update_parameters`` does, twice a step)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        average = get_ema_multi_avg_fn(decay)  # type: ignore[no-untyped-call]
        super().__init__(model, multi_avg_fn=average, use_buffers=False)
        self.average = average
        self.updates = 0  # the host's count of n_averaged

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        mine = [p.detach() for p in self.parameters()]
        theirs = [p.detach() for p in model.parameters()]
        if self.updates == 0:
            torch._foreach_copy_(mine, theirs)
        else:
            self.average(mine, theirs, self.n_averaged)
        for averaged, current in zip(self.module.buffers(), model.buffers(), strict=True):
            averaged.detach().copy_(current.detach())
        self.n_averaged += 1
        self.updates += 1

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        loaded = super().load_state_dict(state_dict, strict, assign)
        self.updates = int(self.n_averaged)
        return loaded


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, mode: MixMode, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix each patch with another of the batch: the mixed images, the partner's labels and the
    weight ``lam`` of the patch's own label (the loss is ``lam * CE(y) + (1 - lam) * CE(y2)``)."""
    if mode == "both":
        mode = "mixup" if rng.random() < 0.5 else "cutmix"
    partner = torch.from_numpy(rng.permutation(len(y))).to(y.device, non_blocking=True)
    if mode == "mixup":
        lam = float(rng.beta(MIXUP_ALPHA, MIXUP_ALPHA))
        return lam * x + (1.0 - lam) * x[partner], y[partner], lam
    height, width = x.shape[-2:]
    cut = float(np.sqrt(1.0 - rng.beta(CUTMIX_ALPHA, CUTMIX_ALPHA)))
    box_h, box_w = round(height * cut), round(width * cut)
    top = int(rng.integers(0, height - box_h + 1))
    left = int(rng.integers(0, width - box_w + 1))
    mixed = x.clone()
    mixed[..., top : top + box_h, left : left + box_w] = x[
        partner, :, top : top + box_h, left : left + box_w
    ]
    return mixed, y[partner], 1.0 - box_h * box_w / (height * width)


def refresh_batch_norm(
    model: nn.Module, train: PatchTensors, device: torch.device, config: TrainConfig
) -> None:
    """Measure ``model``'s batch-norm statistics again on up to :data:`BN_REFRESH_PATCHES`
    training patches (the same ones every epoch, unaugmented). An average of weights needs its
    own statistics: the averaged running statistics of the weights it averaged do not fit it
    (0.30 against 0.72 val accuracy in a short EuroSAT run), as for SWA."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    generator = torch.Generator().manual_seed(config.seed)
    index = torch.randperm(len(train), generator=generator)[:BN_REFRESH_PATCHES]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    model.train()
    for norm in norms:
        norm.reset_running_stats()
    # the plain average over the batches, as torch's update_bn takes it (momentum None); but
    # with each batch's weight set here, where update_bn's batch norms read their batch count
    # back from the device, once a layer and batch
    with torch.no_grad():
        for k, i in enumerate(range(0, len(index), config.batch_size)):
            for norm in norms:
                norm.momentum = 1.0 / (k + 1)
            xb = train.x[index[i : i + config.batch_size]].to(device, non_blocking=True)
            model(xb.contiguous(memory_format=torch.channels_last))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.train(was_training)


def fit(
    model: nn.Module,
    train: PatchTensors,
    val: PatchTensors,
    config: TrainConfig,
    device: torch.device,
    checkpoint: Path | None = None,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> History:
    """Train ``model`` in place; on return it holds the best weights (by validation accuracy)."""
    torch.manual_seed(config.seed)
    per_pixel = train.y.dim() == 3  # per-pixel masks: a segmentation model, kept by val mean IoU
    if per_pixel and config.mix != "none":
        raise ValueError("mixup/cutmix mix patch labels: a segmentation model trains without")
    model.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(
        param_groups(model, config),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        # CUDA: one kernel for the whole update, and the loss scaler's overflow check stays on
        # the device (with the plain AdamW it reads it back at every step)
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    mode = training_precision(config, device)
    use_amp = mode == "fp16-mixed"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history = History()
    ema = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
    kept: nn.Module = ema.module if ema is not None else model  # validated, kept, handed back
    best_state = {k: v.detach().clone() for k, v in kept.state_dict().items()}
    start_epoch = 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if resumable(state.get("config")) == resumable(asdict(config)):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            best_state = state["best_model"]
            history = state["history"]
            start_epoch = len(history.epochs)
            log.info("resuming from %s at epoch %d", checkpoint, start_epoch + 1)
        else:
            log.warning("checkpoint %s was made with other settings; starting afresh", checkpoint)
    weights = None if config.class_weights is None else torch.tensor(config.class_weights)
    loss_fn = nn.CrossEntropyLoss(
        weight=weights.to(device) if weights is not None else None,
        ignore_index=UNKNOWN,
        label_smoothing=config.label_smoothing,
    )
    labelled = int((train.y != UNKNOWN).sum()) if per_pixel else len(train)
    seen, busy = 0, 0.0
    for epoch in range(start_epoch, config.epochs):
        if history.stopped_early:
            break
        model.train()
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout: same draws after a resume
        generator = torch.Generator().manual_seed(config.seed + epoch)
        mixing = np.random.default_rng([config.seed, epoch])
        order = torch.randperm(len(train), generator=generator)
        # summed on the device and read once an epoch: a read per batch would make the host
        # wait for the accelerator at every step
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        started = time.perf_counter()
        for i in range(0, len(order), config.batch_size):
            index = order[i : i + config.batch_size]
            if len(index) < 2:  # BatchNorm needs two samples
                continue
            xb = train.x[index].to(device, non_blocking=True)
            yb = train.y[index].to(device, non_blocking=True)
            if config.augment:
                xb, turned = augment_pair(xb, yb if per_pixel else None, generator)
                yb = turned if turned is not None else yb
            partner, lam = yb, 1.0
            if config.mix != "none":
                xb, partner, lam = mix_batch(xb, yb, config.mix, mixing)
            xb = xb.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with autocast(mode, device):
                logits = model(xb)
                loss = loss_fn(logits, yb)
                if lam < 1.0:
                    loss = lam * loss + (1.0 - lam) * loss_fn(logits, partner)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update_parameters(model)
            total_loss += loss.detach().float() * len(index)
            correct += ((logits.argmax(1) == yb) & (yb != UNKNOWN)).sum()
            if on_batch is not None:
                on_batch(len(index))
        summed_loss, summed_correct = float(total_loss), int(correct)  # waits for the device
        elapsed = time.perf_counter() - started
        seen, busy = seen + len(train), busy + elapsed
        rate = float(scheduler.get_last_lr()[0])  # this epoch's, before the step to the next
        scheduler.step()
        if ema is not None:
            refresh_batch_norm(ema.module, train, device, config)
        result = evaluate(kept, val, device)
        metrics = {
            "train_loss": summed_loss / max(len(train), 1),
            "train_accuracy": summed_correct / max(labelled, 1),
            "val_loss": result["loss"],
            "val_accuracy": result["accuracy"],
            **({"val_mean_iou": result["mean_iou"]} if per_pixel else {}),
            "images_per_second": len(train) / max(elapsed, 1e-9),
            "learning_rate": rate,
        }
        history.epochs.append(metrics)
        score = metrics["val_mean_iou" if per_pixel else "val_accuracy"]
        if score > history.best_val_accuracy:
            history.best_val_accuracy = score
            history.best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in kept.state_dict().items()}
        elif epoch - history.best_epoch >= config.patience:
            history.stopped_early = True
            log.info("early stop after epoch %d: no gain for %d epochs", epoch + 1, config.patience)
        log.info(
            "epoch %d/%d: loss %.3f, train acc %.3f, val acc %.3f, %.0f images/s",
            epoch + 1,
            config.epochs,
            metrics["train_loss"],
            metrics["train_accuracy"],
            metrics["val_accuracy"],
            metrics["images_per_second"],
        )
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if checkpoint is not None:
            _save_atomic(
                {
                    "config": asdict(config),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "best_model": best_state,
                    "history": history,
                    **({"ema": ema.state_dict()} if ema is not None else {}),
                },
                checkpoint,
            )
    history.images_per_second = seen / busy if busy else 0.0
    model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return history
