"""The model contract between trainer, registry-bridge and inference.

A model is an ONNX graph with one float32 input ``input`` of shape ``[N, C, P, P]`` (P the card's
``patch_size``, 64 for EuroSAT; ``[N, C]`` for a pixel model) and one output ``logits`` of shape
``[N, classes]`` (``[N, classes, P, P]`` for segmentation; the card's classes, by default the
EuroSAT ten in :data:`EUROSAT_CLASSES` order; ``onnx_contract`` checks a graph against its card).
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
    # Level-2A products have no B10 (cirrus, top of atmosphere only): chips cut from L2A scenes
    # for models of the user's own labels; EuroSAT (L1C) is rgb or ms13
    "l2a": tuple(b for b in EUROSAT_MS_FILE_ORDER if b != "B10"),
}

PATCH_SIZE = 64
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: the name of a patch model's second output, per-pixel scores of its window's centre (see
#: :attr:`ModelCard.map_output`)
MAP_OUTPUT_NAME = "pixel_logits"
#: the side of that block: inference's default stride, so at its defaults every window gives
#: the pixels it labels one score each, for about 1.6x a window's class alone
#: (docs/maps-accuracy.md)
MAP_BLOCK = 32
METADATA_KEY = "eostream.model_card"
#: the ONNX metadata entry naming a file's numeric precision ("int8": written by the
#: registry-bridge's quantisation); a file without it is fp32
PRECISION_METADATA_KEY = "eostream.precision"


class BandScaling(BaseModel):
    """``units = clip(reflectance * scale + offset, clip_min, clip_max)`` for one band."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    band: str
    scale: float
    offset: float = 0.0
    clip_min: float | None = None
    clip_max: float | None = None


class InputReference(BaseModel):
    """What the training inputs looked like, in model units: the distribution of the per-band
    means of the training patches. Inference compares each window's band means with it (a
    Mahalanobis distance) to tell a scene outside the training domain from one the model knows;
    ``distance_p99`` is the 99th percentile of that distance over the training patches."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patches: int = Field(ge=2)
    mean: tuple[float, ...]
    covariance: tuple[tuple[float, ...], ...]
    distance_p99: float = Field(gt=0)
    source: str = ""


class ModelCard(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    name: str
    band_set: Literal["rgb", "ms13", "l2a"]
    bands: tuple[str, ...] = Field(min_length=1)
    scaling: tuple[BandScaling, ...]
    classes: tuple[str, ...] = EUROSAT_CLASSES
    patch_size: int = Field(default=PATCH_SIZE, ge=1, le=4096)
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    processing_level: Literal["L1C", "L2A"] = Field(
        default="L1C", description="EuroSAT is Level-1C (top of atmosphere)"
    )
    architecture: str = ""
    training_data_digest: str | None = None
    description: str = ""
    gsd_m: float = Field(
        default=10.0,
        gt=0,
        description="ground sampling distance of the training patches in metres (EuroSAT: 10)",
    )
    input_reference: InputReference | None = Field(
        default=None, description="training-input statistics for the out-of-domain check"
    )
    task: Literal["patch", "pixel", "segmentation"] = Field(
        default="patch",
        description=(
            "patch: [N, C, P, P] windows -> [N, classes] (the window's class); pixel: [N, C] "
            "band vectors -> [N, classes] (one pixel each, patch_size 1); segmentation: "
            "[N, C, P, P] -> [N, classes, P, P] (one class per pixel)"
        ),
    )
    library: Literal["pytorch", "scikit-learn", "keras"] = Field(
        default="pytorch", description="the library the model was trained with"
    )
    library_version: str = ""
    pretrained_source: str | None = Field(
        default=None,
        description="what the training started from: a checkpoint ('NAME-or-path "
        "sha256:<hex>') or a registered version (models:/NAME/VERSION)",
    )
    dataset: str | None = Field(
        default=None,
        description="the chip dataset the model was trained on (its stac-geoparquet table, "
        "``eostream labels chips``); None: EuroSAT",
    )
    dataset_test_split: str | None = Field(
        default=None,
        description="the split of ``dataset`` held out for testing (what a gate scores it on)",
    )
    pixel_features: Literal["bands+indices", "indices"] = Field(
        default="bands+indices",
        description="a pixel model's inputs to its estimator: the bands and the spectral indices "
        "of eostream.shared.spectral, or the indices alone (computed inside the ONNX graph)",
    )
    map_output: str | None = Field(
        default=None,
        description="a patch model's second output: [N, classes, B, B] scores for each pixel of "
        "its window's central B x B block (B: map_block), so a map labels every pixel on its "
        "own while the window's class (output_name) is what its patch accuracy is measured on; "
        "None: the window's class labels its whole block",
    )
    map_block: int | None = Field(
        default=None, ge=1, description="the side of map_output's central block, in pixels"
    )
    class_log_shift: tuple[float, ...] | None = Field(
        default=None,
        description="a pixel model's per-class offsets added to its log-probabilities (a "
        "decision threshold chosen on held-out pixels, inside the ONNX graph); None: none",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if tuple(s.band for s in self.scaling) != self.bands:
            raise ValueError("scaling must list exactly the model's bands, in the same order")
        if len(set(self.bands)) != len(self.bands):
            raise ValueError("bands must not repeat")
        if self.task == "pixel" and self.patch_size != 1:
            raise ValueError("a pixel model's patch_size is 1")
        if (self.map_output is None) != (self.map_block is None):
            raise ValueError("map_output and map_block go together")
        if self.map_block is not None and (
            self.task != "patch"
            or self.map_block > self.patch_size
            or (self.patch_size - self.map_block) % 2
        ):
            raise ValueError(
                "map_block is for a patch model: at most its patch_size, centred (even margins)"
            )
        if self.class_log_shift is not None and len(self.class_log_shift) != len(self.classes):
            raise ValueError("class_log_shift needs one offset per class")
        ref = self.input_reference
        if ref is not None and (
            len(ref.mean) != len(self.bands)
            or len(ref.covariance) != len(self.bands)
            or any(len(row) != len(self.bands) for row in ref.covariance)
        ):
            raise ValueError("input_reference must have one mean and covariance row per band")
        return self

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        return cls.model_validate(json.loads(text))
