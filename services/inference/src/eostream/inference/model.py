"""Loading a model: checksum, onnxruntime session, and the ModelCard checked against the graph.

A shipped model may have an int8 file beside its fp32 one (the MLM item's ``model_int8`` asset,
written by the registry-bridge when the int8 model passed its accuracy check):
:func:`int8_artifact` finds it in an item and :func:`int8_wanted` says whether to run it (on the
CPU provider only; CUDA runs fp32). :func:`info_from_item` reads the model an MLM item describes.
The loaded model names its ``precision``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from pydantic import ValidationError

from eostream.inference.errors import BadInputError, ModelLoadError
from eostream.shared import mlm, ort_session
from eostream.shared.digest import sha256_hex
from eostream.shared.modelcard import METADATA_KEY, PRECISION_METADATA_KEY, ModelCard
from eostream.shared.objects import absolute_href
from eostream.shared.onnx_contract import OnnxFacts, TensorFacts, graph_problems, ort_dtype

__all__ = [
    "Artifact",
    "LoadedModel",
    "ModelInfo",
    "Precision",
    "check_card_against_graph",
    "choose_providers",
    "graph_facts",
    "info_from_item",
    "int8_artifact",
    "int8_wanted",
    "load_model",
    "sha256_hex",
]

log = logging.getLogger(__name__)
Precision = Literal["fp32", "int8"]


#: the version of a model loaded from a file (no registry version): ``file-`` and the first hex
#: digits of its sha256, so another file is another model's result, never this one's
FILE_VERSION_PREFIX = "file-"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    alias: str | None = None
    run_id: str | None = None
    sha256: str = ""
    artifact_uri: str = ""
    mlm_item_href: str | None = None
    #: when the promotion that named it was made (its event's time); None for a model named by
    #: its file or reloaded at a start
    promoted_at: datetime | None = None

    @classmethod
    def of_file(cls, uri: str, sha256: str | None = None) -> ModelInfo:
        """A model named only by its file (``inference classify --model``,
        ``INITIAL_MODEL_URI``): :func:`load_model` names it after its card's name and its digest
        (:data:`FILE_VERSION_PREFIX`) once it is read."""
        return cls(name="", version="", sha256=sha256 or "", artifact_uri=uri)

    @property
    def label(self) -> str:
        """``NAME vVERSION`` (``NAME file-...`` for a model named by its file), or the file of a
        model not yet named (:meth:`of_file`)."""
        if not self.version:
            return f"file {self.artifact_uri}"
        if self.version.startswith(FILE_VERSION_PREFIX):
            return f"{self.name} {self.version}"
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class Artifact:
    """One ONNX file of a model: where it is, its checksum and its precision."""

    uri: str
    sha256: str
    precision: Precision = "fp32"


@dataclass
class LoadedModel:
    """One onnxruntime session with the card that describes it."""

    info: ModelInfo
    card: ModelCard
    session: ort.InferenceSession
    provider: str
    loaded_at: float = field(default_factory=time.time)
    precision: Precision = "fp32"
    #: the sha256 of the file that runs: the int8 one's when int8 runs (``info.sha256`` is the
    #: promoted fp32 file's, the model's identity)
    file_sha256: str = ""

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = self.session.run([self.card.output_name], {self.card.input_name: batch})
        return np.asarray(out[0], dtype=np.float32)

    def run_map(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The per-pixel scores ``[N, K, B, B]`` of the windows' central blocks (the card's
        ``map_output``). onnxruntime runs the whole graph whichever output is asked for, so a
        window costs the same through :meth:`run` (its logits are computed from the block)."""
        if not self.card.map_output:
            raise ValueError(f"{self.card.name} has no per-pixel map output")
        out = self.session.run([self.card.map_output], {self.card.input_name: batch})
        return np.asarray(out[0], dtype=np.float32)

    def map_block_for(self, stride: int) -> int | None:
        """The block of the map output when windows at ``stride`` can label their pixels from
        it (the stride fits in the block, centred); None: each window's class labels them (at
        the same cost a window: the graph computes the block either way)."""
        block = self.card.map_block
        if block is None or stride > block or (block - stride) % 2:
            return None
        return block

    def close(self) -> None:
        # dropping the last reference frees the session's arena; keep nothing else alive
        del self.session


def choose_providers(wanted: tuple[str, ...]) -> list[str]:
    return ort_session.choose_providers(wanted, ort.get_available_providers())


def int8_wanted(wanted: tuple[str, ...], allowed: bool) -> bool:
    """Whether an int8 file should run: allowed, and onnxruntime would run on the CPU provider
    (what the first available of ``wanted`` is); CUDA runs the fp32 file."""
    chosen = choose_providers(wanted)
    return allowed and bool(chosen) and chosen[0] == ort_session.CPU


def int8_artifact(item: dict[str, Any], item_href: str) -> Artifact | None:
    """The int8 file an MLM item ships beside the fp32 one, when it has one whose check passed
    (relative hrefs resolved against ``item_href``); None otherwise."""
    asset = (item.get("assets") or {}).get(mlm.INT8_ASSET)
    if not isinstance(asset, dict) or asset.get(mlm.PRECISION) != "int8":
        return None
    checksum = str(asset.get("file:checksum") or "")
    if asset.get("eostream:int8_check") != "passed" or not asset.get("href"):
        return None
    if not checksum.startswith("1220") or len(checksum) != 68:
        return None  # never run a file without its sha256
    return Artifact(absolute_href(str(asset["href"]), item_href), checksum[4:], "int8")


def info_from_item(data: bytes, href: str) -> ModelInfo:
    """The model an MLM item (``data``, read from ``href``) describes: its name, version, MLflow
    run, checksum and fp32 ONNX asset (relative hrefs resolved against ``href``)."""
    try:
        item = json.loads(data)
        props: dict[str, Any] = item["properties"]
        assets = [
            a
            for a in item["assets"].values()
            if "mlm:model" in (a.get("roles") or []) and a.get("href")
        ]
        name = str(props.get("eostream:model_name") or item["id"])
        version = str(props.get("eostream:model_version") or "")
        sha256 = str(props["eostream:sha256"])
        run_id = props.get("eostream:mlflow_run_id")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        # what was wrong, in words: not JSON, or which field is missing or of the wrong kind
        found = (
            "not JSON"
            if isinstance(exc, ValueError | RecursionError)
            else (f"no {exc}" if isinstance(exc, KeyError) else "a field of the wrong type")
        )
        raise BadInputError(
            f"{href} is not an MLM item of an eostream model (needs properties "
            f"eostream:sha256 and an asset with role mlm:model): {found}"
        ) from None
    if len(assets) != 1 or not version:
        raise BadInputError(
            f"{href}: an MLM item needs eostream:model_version and one mlm:model asset"
        )
    return ModelInfo(
        name=name,
        version=version,
        run_id=str(run_id) if run_id else None,
        sha256=sha256,
        artifact_uri=absolute_href(str(assets[0]["href"]), href),
        mlm_item_href=href,
    )


def graph_facts(session: ort.InferenceSession) -> OnnxFacts:
    """What the contract check needs to know of an open session's graph, as plain values."""

    def facts(node: Any) -> TensorFacts:
        shape = tuple(d if isinstance(d, int | str) else None for d in node.shape)
        return TensorFacts(name=node.name, shape=shape, dtype=ort_dtype(node.type))

    return OnnxFacts(
        inputs=tuple(facts(i) for i in session.get_inputs()),
        outputs=tuple(facts(o) for o in session.get_outputs()),
        metadata=dict(session.get_modelmeta().custom_metadata_map),
    )


def check_card_against_graph(card: ModelCard, session: ort.InferenceSession) -> None:
    """Refuse a model whose card does not describe its graph: the registry-bridge's gate check
    (:func:`eostream.shared.onnx_contract.graph_problems`), so what passed the gate loads."""
    problems = graph_problems(graph_facts(session), card)
    if problems:
        raise ModelLoadError("; ".join(problems))


def load_model(
    data: bytes,
    info: ModelInfo,
    *,
    expected_sha256: str | None,
    providers: tuple[str, ...],
    intra_op_threads: int = 0,
    precision: Precision = "fp32",
) -> LoadedModel:
    """Verify, open, validate and warm a model. Raises ModelLoadError on any mismatch.
    ``precision``: what the caller chose to load (an MLM item's int8 asset); a file whose metadata
    says int8 (the registry-bridge's quantisation) is int8 however it was found."""
    digest = sha256_hex(data)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ModelLoadError(
            f"model {info.label}: sha256 {digest} does not match the promoted "
            f"{expected_sha256}; refusing it"
        )
    options = ort_session.configure(ort.SessionOptions(), threads=intra_op_threads)
    chosen = choose_providers(providers)
    try:
        session = ort.InferenceSession(
            data,
            sess_options=options,
            providers=chosen,
            **ort_session.session_arguments(),
        )
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelLoadError(f"model {info.label}: not a loadable ONNX graph: {exc}") from exc
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ModelLoadError(f"model {info.label} has no {METADATA_KEY} metadata entry")
    try:
        card = ModelCard.from_json(meta[METADATA_KEY])
    except (ValidationError, ValueError) as exc:
        raise ModelLoadError(f"model {info.label}: invalid model card: {exc}") from exc
    check_card_against_graph(card, session)
    if not info.version:  # a file (ModelInfo.of_file): its card's name, its digest as version
        version = FILE_VERSION_PREFIX + digest[:12]
        info = replace(info, name=card.name, version=version, sha256=info.sha256 or digest)
    if meta.get(PRECISION_METADATA_KEY) == "int8":  # an int8 file loaded by its path, too
        precision = "int8"
    provider = session.get_providers()[0]
    if provider != chosen[0]:
        # onnxruntime lists a provider whose libraries then fail to load (CUDA without its
        # runtime, a driver too old) and quietly runs on the next one
        log.warning(
            "model %s v%s: wanted %s, which this onnxruntime offers, but the session runs on "
            "%s (onnxruntime's own log says why)",
            info.name,
            info.version,
            chosen[0],
            provider,
        )
    model = LoadedModel(
        info=info,
        card=card,
        session=session,
        provider=provider,
        precision=precision,
        file_sha256=digest,
    )
    _warm(model)
    log.info(
        "loaded model %s v%s (%s, bands %s) on %s, %s",
        info.name,
        info.version,
        card.architecture or "?",
        ",".join(card.bands),
        model.provider,
        precision,
    )
    return model


def _warm(model: LoadedModel) -> None:
    """One real batch through the graph, so the first request pays no start-up cost."""
    size = () if model.card.task == "pixel" else (model.card.patch_size,) * 2
    batch = np.zeros((2, len(model.card.bands), *size), np.float32)
    try:
        logits = model.run(batch)
    except Exception as exc:
        raise ModelLoadError(
            f"model {model.info.name} v{model.info.version} fails to run: {exc}"
        ) from exc
    per_pixel = size if model.card.task == "segmentation" else ()
    if logits.shape != (2, len(model.card.classes), *per_pixel):
        expected = ", ".join(["N", str(len(model.card.classes)), *map(str, per_pixel)])
        raise ModelLoadError(f"model output shape {logits.shape} is not [{expected}]")
    block = model.card.map_block
    if block is not None:  # the per-pixel output the maps are made from
        try:
            pixels = model.run_map(batch)
        except Exception as exc:
            raise ModelLoadError(
                f"model {model.info.name} v{model.info.version} fails to run its "
                f"{model.card.map_output}: {exc}"
            ) from exc
        if pixels.shape != (2, len(model.card.classes), block, block):
            raise ModelLoadError(
                f"model {model.card.map_output} shape {pixels.shape} is not "
                f"[N, {len(model.card.classes)}, {block}, {block}]"
            )
