"""Verify a registered version before it may be gated or shipped (blocking I/O; call from a
thread). Every problem found becomes a reason; any reason refuses the version."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from eostream.registry_bridge import contract, onnx_model
from eostream.registry_bridge.errors import NotReadyError, RefusedError
from eostream.registry_bridge.holdout import Holdout
from eostream.registry_bridge.port import ModelRegistry, VersionInfo
from eostream.shared import tags
from eostream.shared.modelcard import ModelCard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verified:
    name: str
    version: str
    run_id: str
    card: ModelCard
    onnx_bytes: bytes
    sha256: str
    agreement: float  # largest |onnx - native| difference on held-out images


def _outputs(
    native: Any, card: ModelCard, data: bytes, images: np.ndarray, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """(native, ONNX) outputs to compare: a patch model's logits of the images; a pixel
    model's probabilities of every pixel of them (log-probabilities near 0 differ wildly in
    float32 without meaning anything)."""
    sess = onnx_model.session(data, threads)
    if card.task == "pixel":
        expected = np.exp(
            onnx_model.sklearn_pixel_logits(
                native,
                images,
                card.bands,
                with_bands=card.pixel_features == "bands+indices",
                log_shift=card.class_log_shift,
            )
        )
        return expected, np.exp(onnx_model.pixel_onnx_logits(sess, images))
    return onnx_model.torch_logits(native, images, threads), onnx_model.logits(sess, images)


def verify(
    registry: ModelRegistry,
    mv: VersionInfo,
    *,
    holdout_for: Callable[[ModelCard, str], Holdout],
    grace_seconds: float,
    samples: int,
    atol: float,
    threads: int = 1,
) -> Verified:
    name, version = mv.name, mv.version
    version_tags = dict(mv.tags)
    age = time.time() - mv.created_ms / 1000.0
    if contract.missing_tags(version_tags) and age < grace_seconds:
        raise NotReadyError(
            f"{name} v{version}: waiting for tags {contract.missing_tags(version_tags)}"
        )
    card, problems = contract.check_tags(version_tags)
    if not mv.run_id:
        raise RefusedError([*problems, "the version has no run, so no ONNX artifact"])
    data = registry.download_onnx(mv.run_id)
    if data is None:
        raise RefusedError(
            [*problems, f"no ONNX artifact {tags.ONNX_ARTIFACT_PATH} in run {mv.run_id}"]
        )
    digest = onnx_model.sha256_hex(data)
    tagged = version_tags.get(tags.ONNX_SHA256)
    if tagged and tagged != digest:
        problems.append(f"onnx_sha256 tag {tagged} does not match the artifact's {digest}")
    facts, onnx_problems = onnx_model.inspect(data)
    problems += onnx_problems
    if facts is not None:
        problems += contract.check_graph(facts, card)
    if problems or card is None:
        raise RefusedError(problems or ["no usable model card"])

    holdout = holdout_for(card, mv.run_id)  # a chip dataset's model: its own test chips
    images = holdout.images[:: max(1, len(holdout.images) // samples)][:samples]
    try:
        native = registry.load_native(mv.source, card.library)
    except Exception as exc:  # any failure to load means we cannot vouch for the export
        raise RefusedError(
            [f"cannot load the MLflow {card.library} model {mv.source} to check the export: {exc}"]
        ) from exc
    try:
        expected, got = _outputs(native, card, data, images, threads)
    except Exception as exc:
        raise RefusedError([f"running the model on held-out images failed: {exc}"[:500]]) from exc
    diff = onnx_model.max_abs_difference(got, expected)
    if not diff <= atol:
        raise RefusedError(
            [
                f"ONNX and {card.library} outputs differ by up to {diff:.3g} "
                f"on {len(images)} held-out images (tolerance {atol:g})"
            ]
        )
    log.info(
        "%s v%s verified: contract ok, ONNX vs %s max diff %.2e", name, version, card.library, diff
    )
    return Verified(name, version, mv.run_id, card, data, digest, diff)
