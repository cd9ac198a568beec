"""The model contract between trainer, registry-bridge and inference.

A model is an ONNX graph with one float32 input ``input`` of shape ``[N, C, 64, 64]`` and one
output ``logits`` of shape ``[N, 10]`` (the EuroSAT classes, in :data:`EUROSAT_CLASSES` order).
Normalisation is inside the graph; what goes in is each declared band in the model's own units.
The :class:`ModelCard` says which bands, in which order, and how to turn top-of-atmosphere or
surface reflectance (0..1, harmonised) into those units. It travels as the ONNX metadata entry
``eostream.model_card`` (JSON), as MLflow tags, and inside the model's STAC MLM item; inference
checks it at load and refuses a model whose card does not match its graph.
"""

from __future__ import annotations

import json
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)

#: Sentinel-2 band names in the order EuroSAT MS GeoTIFFs store them (B8A is LAST).
EUROSAT_MS_FILE_ORDER: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B09",
    "B10",
    "B11",
    "B12",
    "B8A",
)
#: The band sets a model can be trained on, each in the order the model's input expects.
BAND_SETS: dict[str, tuple[str, ...]] = {
    "rgb": ("B04", "B03", "B02"),
    "ms13": EUROSAT_MS_FILE_ORDER,
}

PATCH_SIZE = 64
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
METADATA_KEY = "eostream.model_card"


class BandScaling(BaseModel):
    """``units = clip(reflectance * scale + offset, clip_min, clip_max)`` for one band."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    band: str
    scale: float
    offset: float = 0.0
    clip_min: float | None = None
    clip_max: float | None = None


class ModelCard(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    name: str
    band_set: Literal["rgb", "ms13"]
    bands: tuple[str, ...] = Field(min_length=1)
    scaling: tuple[BandScaling, ...]
    classes: tuple[str, ...] = EUROSAT_CLASSES
    patch_size: int = PATCH_SIZE
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    processing_level: Literal["L1C", "L2A"] = Field(
        default="L1C", description="EuroSAT is Level-1C (top of atmosphere)"
    )
    architecture: str = ""
    training_data_digest: str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if tuple(s.band for s in self.scaling) != self.bands:
            raise ValueError("scaling must list exactly the model's bands, in the same order")
        if len(set(self.bands)) != len(self.bands):
            raise ValueError("bands must not repeat")
        return self

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        return cls.model_validate(json.loads(text))
