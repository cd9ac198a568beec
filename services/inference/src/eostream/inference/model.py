"""Loading a model: checksum, onnxruntime session, and the ModelCard checked against the graph."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from pydantic import ValidationError

from eostream.inference.errors import ModelLoadError
from eostream.shared.modelcard import METADATA_KEY, ModelCard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    alias: str | None = None
    run_id: str | None = None
    sha256: str = ""
    artifact_uri: str = ""
    mlm_item_href: str | None = None


@dataclass
class LoadedModel:
    """One onnxruntime session with the card that describes it."""

    info: ModelInfo
    card: ModelCard
    session: ort.InferenceSession
    provider: str
    loaded_at: float = field(default_factory=time.time)

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = self.session.run([self.card.output_name], {self.card.input_name: batch})
        return np.asarray(out[0], dtype=np.float32)

    def close(self) -> None:
        # dropping the last reference frees the session's arena; keep nothing else alive
        del self.session


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def choose_providers(wanted: tuple[str, ...]) -> list[str]:
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    return chosen or ["CPUExecutionProvider"]


def check_card_against_graph(card: ModelCard, session: ort.InferenceSession) -> None:
    """Refuse a model whose card does not describe its graph."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if card.input_name not in inputs:
        raise ModelLoadError(f"graph has no input {card.input_name!r} (inputs: {sorted(inputs)})")
    if card.output_name not in outputs:
        raise ModelLoadError(
            f"graph has no output {card.output_name!r} (outputs: {sorted(outputs)})"
        )
    shape: list[Any] = list(inputs[card.input_name].shape)
    if len(shape) != 4:
        raise ModelLoadError(
            f"input {card.input_name!r} has rank {len(shape)}, expected 4 [N,C,H,W]"
        )
    channels, height, width = shape[1], shape[2], shape[3]
    if isinstance(channels, int) and channels != len(card.bands):
        raise ModelLoadError(
            f"input has {channels} channels but the model card declares {len(card.bands)} bands "
            f"{list(card.bands)}"
        )
    for dim in (height, width):
        if isinstance(dim, int) and dim != card.patch_size:
            raise ModelLoadError(f"input is {height}x{width}, card says patch {card.patch_size}")
    if inputs[card.input_name].type != "tensor(float)":
        raise ModelLoadError(f"input type is {inputs[card.input_name].type}, expected float32")
    out_shape: list[Any] = list(outputs[card.output_name].shape)
    if out_shape and isinstance(out_shape[-1], int) and out_shape[-1] != len(card.classes):
        raise ModelLoadError(
            f"output has {out_shape[-1]} classes, the card lists {len(card.classes)}"
        )


def load_model(
    data: bytes,
    info: ModelInfo,
    *,
    expected_sha256: str | None,
    providers: tuple[str, ...],
    intra_op_threads: int = 0,
) -> LoadedModel:
    """Verify, open, validate and warm a model. Raises ModelLoadError on any mismatch."""
    digest = sha256_hex(data)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ModelLoadError(
            f"model {info.name} v{info.version}: sha256 {digest} does not match the promoted "
            f"{expected_sha256}; refusing it"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            data, sess_options=options, providers=choose_providers(providers)
        )
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelLoadError(
            f"model {info.name} v{info.version}: not a loadable ONNX graph: {exc}"
        ) from exc
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ModelLoadError(
            f"model {info.name} v{info.version} has no {METADATA_KEY} metadata entry"
        )
    try:
        card = ModelCard.from_json(meta[METADATA_KEY])
    except (ValidationError, ValueError) as exc:
        raise ModelLoadError(
            f"model {info.name} v{info.version}: invalid model card: {exc}"
        ) from exc
    check_card_against_graph(card, session)
    model = LoadedModel(info=info, card=card, session=session, provider=session.get_providers()[0])
    _warm(model)
    log.info(
        "loaded model %s v%s (%s, bands %s) on %s",
        info.name,
        info.version,
        card.architecture or "?",
        ",".join(card.bands),
        model.provider,
    )
    return model


def _warm(model: LoadedModel) -> None:
    """One real batch through the graph, so the first request pays no start-up cost."""
    batch = np.zeros(
        (2, len(model.card.bands), model.card.patch_size, model.card.patch_size), np.float32
    )
    try:
        logits = model.run(batch)
    except Exception as exc:
        raise ModelLoadError(
            f"model {model.info.name} v{model.info.version} fails to run: {exc}"
        ) from exc
    if logits.shape != (2, len(model.card.classes)):
        raise ModelLoadError(
            f"model output shape {logits.shape} is not [N, {len(model.card.classes)}]"
        )
