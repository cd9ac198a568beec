"""The STAC MLM item that describes a model, built and validated with ``stac-model``.

The registry-bridge ships one beside every ONNX it exports; ``eostream trainer fit --stac-out``
writes the same item into a STAC catalog (the CWL application package's stage-out).

The item says what inference must know to run the model: the bands and their order, how
reflectance becomes the model's input units (per band), the classes in output order, the
ONNX artifact with its size and checksum, and where the training data and the MLflow run are.
Validation is offline: the core STAC schema bundled with pystac, the MLM fields through
stac-model's pydantic models, and the contract (bands, classes, checksum) against the card.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pystac
from pydantic import ValidationError
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from stac_model.input import (  # type: ignore[import-untyped]
    InputStructure,
    ModelInput,
    ValueScalingProcessingExpression,
)
from stac_model.output import (  # type: ignore[import-untyped]
    MLMClassification,
    ModelOutput,
    ModelResult,
)
from stac_model.schema import MLModelExtension, MLModelProperties  # type: ignore[import-untyped]

from eostream.shared.modelcard import ModelCard

ONNX_MEDIA_TYPE = "application/octet-stream; framework=onnx; profile=onnx"
#: EuroSAT patches come from 34 European countries; the model is meant for that extent.
EUROPE_BBOX = (-31.3, 27.6, 45.0, 71.2)
SENTINEL2A_LAUNCH = "2015-06-23T00:00:00Z"
CARD_PROPERTY = "eostream:model_card"
#: STAC's relation type for the sources of a derived product (training data, the base model):
#: ``derived_from``, with an underscore (STAC spec, "Relation types")
DERIVED_FROM = "derived_from"


#: the asset field naming an ONNX asset's numeric precision: fp32 (the ``model`` asset) or int8
PRECISION = "eostream:precision"
#: the key of the int8 asset, shipped beside the fp32 ``model`` when it passed its check
INT8_ASSET = "model_int8"


@dataclass(frozen=True)
class ModelVariant:
    """Another ONNX file of the same model (the int8 one), shipped as a second asset: not an
    ``mlm:model`` asset (that stays the fp32 file every reader can run), its checksum and its
    check's figures in ``fields``."""

    key: str
    precision: str
    href: str
    sha256: str
    size: int
    fields: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class MlmFacts:
    name: str
    version: str
    card: ModelCard
    artifact_href: str
    sha256: str
    size: int
    created: datetime
    run_id: str | None = None
    run_href: str | None = None
    training_data_href: str | None = None
    metrics: tuple[tuple[str, float], ...] = ()
    base_model: str | None = None  # models:/NAME/VERSION it was fine-tuned from
    variants: tuple[ModelVariant, ...] = ()


def _onnx_version() -> str | None:
    try:
        return importlib.metadata.version("onnx")
    except importlib.metadata.PackageNotFoundError:  # inference reads items, never builds them
        return None


def item_id(name: str, version: str) -> str:
    return f"{name}-v{version}"


def multihash_sha256(hex_digest: str) -> str:
    """The ``file:checksum`` form: multihash code 0x12 (sha2-256), length 0x20, digest."""
    return "1220" + hex_digest


def _scaling_expression(card: ModelCard) -> list[ValueScalingProcessingExpression]:
    expressions = []
    for s in card.scaling:
        lo = "None" if s.clip_min is None else repr(s.clip_min)
        hi = "None" if s.clip_max is None else repr(s.clip_max)
        expressions.append(
            ValueScalingProcessingExpression(
                format="python",
                expression=f"numpy.clip({s.band} * {s.scale!r} + {s.offset!r}, {lo}, {hi})",
                description=f"{s.band}: reflectance (0..1, harmonised) to model units",
            )
        )
    return expressions


def properties(facts: MlmFacts) -> MLModelProperties:
    card = facts.card
    model_input = ModelInput(
        name=f"{card.band_set} Sentinel-2 {card.processing_level} patches",
        bands=list(card.bands),
        input=InputStructure(
            shape=[-1, len(card.bands), card.patch_size, card.patch_size],
            dim_order=["batch", "bands", "height", "width"],
            data_type="float32",
        ),
        value_scaling=list(_scaling_expression(card)),
        resize_type=None,
        pre_processing_function=None,
    )
    segmentation = card.task == "segmentation"
    tasks = {"semantic-segmentation"} if segmentation else {"classification"}
    per_pixel = [card.patch_size, card.patch_size] if segmentation else []
    model_output = ModelOutput(
        name=card.output_name,
        tasks=tasks,
        result=ModelResult(
            shape=[-1, len(card.classes), *per_pixel],
            dim_order=["batch", "class", *(["height", "width"] if segmentation else [])],
            data_type="float32",
        ),
        classes=[MLMClassification(value=i, name=c) for i, c in enumerate(card.classes)],
        post_processing_function=None,
    )
    outputs = [model_output]
    if card.map_output and card.map_block:  # per-pixel scores of the window's centre block
        outputs.append(
            ModelOutput(
                name=card.map_output,
                tasks={"semantic-segmentation"},
                result=ModelResult(
                    shape=[-1, len(card.classes), card.map_block, card.map_block],
                    dim_order=["batch", "class", "height", "width"],
                    data_type="float32",
                ),
                classes=model_output.classes,
                post_processing_function=None,
            )
        )
    return MLModelProperties(
        name=f"{facts.name} v{facts.version}",
        architecture=card.architecture or "unknown",
        tasks=tasks,
        framework="onnxruntime",
        framework_version=_onnx_version(),
        file_size=facts.size,
        accelerator="amd64",
        accelerator_constrained=False,
        # fine-tuned from a registered version, or started from a pretrained checkpoint file
        pretrained=(facts.base_model or facts.card.pretrained_source) is not None,
        pretrained_source=facts.base_model or facts.card.pretrained_source,
        input=[model_input],
        output=outputs,
    )


def build_item(facts: MlmFacts, self_href: str) -> dict[str, Any]:
    bbox = list(EUROPE_BBOX)
    geometry = {
        "type": "Polygon",
        "coordinates": [
            [
                [bbox[0], bbox[1]],
                [bbox[2], bbox[1]],
                [bbox[2], bbox[3]],
                [bbox[0], bbox[3]],
                [bbox[0], bbox[1]],
            ]
        ],
    }
    props: dict[str, Any] = {
        "start_datetime": SENTINEL2A_LAUNCH,
        "end_datetime": facts.created.isoformat().replace("+00:00", "Z"),
        "description": facts.card.description
        or f"EuroSAT land-cover classifier {facts.name} version {facts.version}",
        CARD_PROPERTY: json.loads(facts.card.to_json()),
        "eostream:model_name": facts.name,
        "eostream:model_version": facts.version,
        "eostream:sha256": facts.sha256,
        "processing:level": facts.card.processing_level,
        "gsd": facts.card.gsd_m,  # STAC common metadata: the scale the model was trained at
        "eostream:library": facts.card.library,  # what it was trained with (it runs as ONNX)
        "eostream:task": facts.card.task,
    }
    if facts.run_id:
        props["eostream:mlflow_run_id"] = facts.run_id
    for key, value in facts.metrics:
        props[f"eostream:metric:{key}"] = value
    item = pystac.Item(
        id=item_id(facts.name, facts.version),
        geometry=geometry,
        bbox=bbox,
        datetime=None,
        properties=props,
    )
    asset = pystac.Asset(
        href=facts.artifact_href,
        title=f"{facts.name} v{facts.version} (ONNX)",
        media_type=ONNX_MEDIA_TYPE,
        roles=["mlm:model", "data"],
        extra_fields={
            "mlm:artifact_type": "onnx",
            "file:size": facts.size,
            "file:checksum": multihash_sha256(facts.sha256),
            "bands": [{"name": b} for b in facts.card.bands],
            PRECISION: "fp32",
        },
    )
    item.add_asset("model", asset)
    for variant in facts.variants:
        item.add_asset(
            variant.key,
            pystac.Asset(
                href=variant.href,
                title=f"{facts.name} v{facts.version} (ONNX, {variant.precision})",
                media_type=ONNX_MEDIA_TYPE,
                roles=["data"],
                extra_fields={
                    "mlm:artifact_type": "onnx",
                    "file:size": variant.size,
                    "file:checksum": multihash_sha256(variant.sha256),
                    "bands": [{"name": b} for b in facts.card.bands],
                    PRECISION: variant.precision,
                    **dict(variant.fields),
                },
            ),
        )
    MLModelExtension.ext(item, add_if_missing=True).apply(properties(facts))
    if facts.training_data_href:
        item.add_link(
            pystac.Link(rel=DERIVED_FROM, target=facts.training_data_href, title="training data")
        )
    if facts.card.training_data_digest:
        item.add_link(
            pystac.Link(
                rel=DERIVED_FROM,
                target=f"urn:eostream:dataset:sha256:{facts.card.training_data_digest}",
                title="training data (content digest)",
            )
        )
    if facts.base_model:
        item.add_link(pystac.Link(rel=DERIVED_FROM, target=facts.base_model, title="base model"))
    if facts.run_href:
        item.add_link(pystac.Link(rel="via", target=facts.run_href, title="MLflow run"))
    item.set_self_href(self_href)
    data = item.to_dict(include_self_link=True, transform_hrefs=False)
    data["stac_extensions"] = sorted(
        {
            *data.get("stac_extensions", []),
            "https://stac-extensions.github.io/file/v2.1.0/schema.json",
        }
    )
    return data


def validate_item(data: dict[str, Any], card: ModelCard, sha256: str) -> list[str]:
    """Every problem with an MLM item; empty when it is valid and matches the model."""
    problems: list[str] = []
    try:
        JsonSchemaSTACValidator().validate_core(
            data, pystac.STACObjectType.ITEM, str(data.get("stac_version"))
        )
    except Exception as exc:  # STACValidationError, or a schema we do not have offline
        problems.append(f"not a valid STAC item: {exc}".splitlines()[0])
    props = data.get("properties", {})
    mlm = {k.removeprefix("mlm:"): v for k, v in props.items() if k.startswith("mlm:")}
    try:
        parsed = MLModelProperties.model_validate(mlm)
    except ValidationError as exc:
        return [*problems, f"invalid MLM fields: {exc}".splitlines()[0]]
    if not any(
        s.endswith("/mlm/v1.6.0/schema.json") or "/mlm/" in s
        for s in data.get("stac_extensions", [])
    ):
        problems.append("the MLM extension is not declared in stac_extensions")
    if len(parsed.input) != 1 or list(parsed.input[0].bands or []) != list(card.bands):
        problems.append(f"MLM input bands differ from the card's {list(card.bands)}")
    if parsed.input and parsed.input[0].input.shape[1:] != [
        len(card.bands),
        card.patch_size,
        card.patch_size,
    ]:
        problems.append("MLM input shape differs from the card")
    classes = [c.name for c in (parsed.output[0].classes or [])] if parsed.output else []
    if classes != list(card.classes):
        problems.append("MLM output classes differ from the card's classes")
    if parsed.input and len(parsed.input[0].value_scaling or []) != len(card.bands):
        problems.append("MLM value scaling does not give one entry per band")
    models = [a for a in data.get("assets", {}).values() if "mlm:model" in a.get("roles", [])]
    if len(models) != 1:
        problems.append("the item must have exactly one asset with role mlm:model")
    elif models[0].get("file:checksum") != multihash_sha256(sha256):
        problems.append("the model asset's file:checksum does not match the artifact's sha256")
    for key, asset in data.get("assets", {}).items():
        if key != "model" and asset.get(PRECISION) and not asset.get("file:checksum"):
            problems.append(f"the {key} asset has no file:checksum")
    if props.get(CARD_PROPERTY):
        try:
            if ModelCard.model_validate(props[CARD_PROPERTY]) != card:
                problems.append("the item's model card differs from the model's")
        except ValidationError as exc:
            problems.append(f"the item's model card is not valid: {exc}".splitlines()[0])
    if any(link.get("rel") == "derived-from" for link in data.get("links", [])):
        problems.append(f"'derived-from' is not a STAC relation type: use {DERIVED_FROM!r}")
    return problems
