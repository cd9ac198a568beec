"""The trainer's settings: one class, prefix ``TRAINER_``, built once at the entrypoint."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from eostream.shared.checkpoints import checkpoint_dir
from eostream.shared.holdout import HoldoutSettings
from eostream.shared.settings import ServiceSettings

Device = Literal["auto", "cpu", "cuda"]


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRAINER_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    mlflow_tracking_uri: str = Field(
        default="sqlite:///.eostream/mlflow.db",
        description="http(s)://host:port of an MLflow server, or sqlite:///path for embedded mode",
    )
    mlflow_registry_uri: str | None = Field(
        default=None, description="defaults to the tracking URI"
    )
    mlflow_ui_url: str | None = Field(
        default=None, description="base URL printed in run links (defaults to the tracking URI)"
    )
    experiment_name: str = Field(default="eostream-trainer", min_length=1)
    data_dir: Path = Field(
        default=Path("data"),
        validation_alias=AliasChoices("data_dir", "TRAINER_DATA_DIR", "EOSTREAM_DATA_DIR"),
        description="the folder holding eurosat_rgb/ and eurosat_ms/",
    )
    cache_dir: Path = Path(".eostream/trainer-cache")
    device: Device = "auto"
    num_threads: int = Field(default=2, ge=1, le=256)
    num_workers: int = Field(default=0, ge=0, le=64, description="DataLoader worker processes")
    cpu_bf16: bool = Field(
        default=False,
        description="train in bfloat16 autocast on a CPU with native bf16 (AMX or AVX512-BF16; "
        "fp32 where it has none): ResNet-18s 1.7x-3.3x faster on the 2 cores here; weights, "
        "validation and the ONNX export stay fp32",
    )
    gate_holdout: HoldoutSettings = Field(
        default=HoldoutSettings(),
        description="the registry-bridge's held-out set, left out of training (same settings)",
    )
    input_augmentation: tuple[str, ...] = Field(
        default=(),
        description="training-only input augmentations: radiometry (L1C->L2A haze and gain "
        "jitter), centre (the label is the window's centre); see trainer/augment.py",
    )
    consumer_group: str = "trainer"
    onnx_opset: int = Field(default=18, ge=13, le=23)
    onnx_tolerance: float = Field(
        default=1e-3,
        gt=0,
        description="max abs diff of ONNX logits, relative to the largest |logit| above 1",
    )
    pretrained_dirs: Annotated[tuple[Path, ...], NoDecode] = Field(
        default_factory=lambda: (checkpoint_dir(),),
        description="the folders a requested pretrained file may lie in (a TrainingRequested off "
        "the bus; a registry name is always allowed, `trainer fit --pretrained` any file), "
        "separated by ':' or given as a JSON list; by default the checkpoint folder `eostream "
        "data checkpoint` downloads into",
    )
    dataset_updated_epochs: int = Field(
        default=10, ge=1, description="epochs for data-triggered runs"
    )
    min_chip_steps: int = Field(
        default=300,
        ge=0,
        description="runs on a chip dataset take at least this many optimiser steps (more epochs "
        "when the dataset is small), with class-balanced loss weights",
    )
    label_architecture: str = Field(
        default="seg_unet_indices",
        description="what runs on an announced label collection train: seg_unet_indices (a "
        "small U-Net learning every pixel's class from the chips' masks, on the bands' spectral "
        "indices computed in its graph: segmentation; the most accurate on the same chips, "
        "benchmarks/maps/bench_label_models.py) or seg_unet (on the bands), seg_small_cnn (a U-Net "
        "on small_cnn's encoder, which label_base_model can start from a EuroSAT classifier), "
        "pixel_hgb / "
        "pixel_rf (a per-pixel scikit-learn model on the masks' labelled pixels, on the "
        "indices; ms13 or l2a labels), or a patch classifier (small_cnn, ...)",
    )
    label_base_model: str | None = Field(
        default=None,
        description="a registered version (models:/NAME/VERSION or models:/NAME@alias) that "
        "training on an announced label collection starts from: the same architecture (a new "
        "head when the class list differs), or a small_cnn/centre_cnn EuroSAT classifier whose "
        "encoder starts a seg_small_cnn; empty: from scratch",
    )
    label_pixel_indices_only: bool = Field(
        default=True,
        description="per-pixel models on label chips take the spectral indices alone, not the "
        "bands (ratios carry over between dates; docs/maps-accuracy.md)",
    )
    label_pixel_max: int = Field(
        default=300_000, ge=1000, description="at most this many labelled pixels to fit on"
    )
    label_chip_size: int = Field(
        default=32, ge=8, le=1024, description="chip edge (10 m px) cut from announced labels"
    )
    label_chip_block: int = Field(
        default=3, ge=1, le=64, description="chips per edge of a spatial split block"
    )
    default_model_name: str = Field(
        default="eurosat-landcover", min_length=1, description="model trained on DatasetUpdated"
    )

    @field_validator("pretrained_dirs", mode="before")
    @classmethod
    def _folders(cls, value: Any) -> Any:
        """``TRAINER_PRETRAINED_DIRS``: ``/a:/b`` (a path list, as PATH) or a JSON list; ``~``
        is the user's home."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(os.pathsep)
        if isinstance(value, list | tuple):
            return tuple(Path(str(v)).expanduser() for v in value if str(v).strip())
        return value
