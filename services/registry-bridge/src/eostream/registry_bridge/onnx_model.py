"""Reading and running ONNX models: facts for the contract, logits, agreement with torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from eostream.shared import ort_session
from eostream.shared.digest import sha256_hex
from eostream.shared.onnx_contract import Dim, OnnxFacts, TensorFacts

__all__ = [
    "inspect",
    "logits",
    "max_abs_difference",
    "pixel_onnx_logits",
    "session",
    "sha256_hex",
    "sklearn_pixel_logits",
    "torch_logits",
]


def _tensor_facts(value: onnx.ValueInfoProto) -> TensorFacts:
    tensor = value.type.tensor_type
    dims: list[Dim] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    return TensorFacts(name=value.name, shape=tuple(dims), dtype=dtype)


def inspect(data: bytes) -> tuple[OnnxFacts | None, list[str]]:
    """Check the model with onnx.checker and describe its inputs, outputs and metadata."""
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises several types (DecodeError, ValidationError, ...)
        return None, [f"the ONNX model fails onnx.checker: {type(exc).__name__}: {exc}"[:500]]
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(_tensor_facts(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_tensor_facts(v) for v in model.graph.output)
    metadata = {p.key: p.value for p in model.metadata_props}
    return OnnxFacts(inputs=inputs, outputs=outputs, metadata=metadata), []


def session(data: bytes, threads: int = 1) -> ort.InferenceSession:
    options = ort_session.configure(ort.SessionOptions(), threads=threads)
    return ort.InferenceSession(
        data, options, providers=[ort_session.CPU], **ort_session.session_arguments()
    )


def logits(sess: ort.InferenceSession, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Patch logits ``[N, classes]`` of ``images`` ``[N, C, H, W]``. A pixel model (an input of
    rank 2, ``[N, C]``) scores a patch by the mean of its per-pixel probabilities over all the
    patch's pixels; the logits returned are the log of that mean (so softmax and argmax work as
    for a patch model)."""
    name = sess.get_inputs()[0].name
    if len(sess.get_inputs()[0].shape) == 2:
        return pixel_patch_logits(sess, images, batch)
    parts = [
        np.asarray(sess.run(None, {name: images[i : i + batch]})[0])
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def pixel_patch_logits(sess: ort.InferenceSession, images: np.ndarray, batch: int) -> np.ndarray:
    name = sess.get_inputs()[0].name
    parts = []
    for i in range(0, len(images), batch):
        part = images[i : i + batch]
        n, c = part.shape[:2]
        pixels = np.ascontiguousarray(part.reshape(n, c, -1).transpose(0, 2, 1).reshape(-1, c))
        z = np.asarray(sess.run(None, {name: pixels.astype(np.float32)})[0], np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        mean = p.reshape(n, -1, p.shape[1]).mean(axis=1)
        parts.append(np.log(np.maximum(mean, 1e-12)).astype(np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def sklearn_pixel_logits(
    estimator: Any,
    images: np.ndarray,
    bands: tuple[str, ...],
    *,
    with_bands: bool = True,
    log_shift: tuple[float, ...] | None = None,
) -> np.ndarray:
    """What a pixel model's ONNX graph gives for the pixels of ``images`` ``[N, C, H, W]``,
    computed by its scikit-learn estimator (fitted on the bands and the spectral indices of
    :mod:`eostream.shared.spectral`, or on the indices alone without ``with_bands``):
    ``log(max(p, 1e-12)) + log_shift`` per pixel, ``[N * H * W, K]`` (the card's
    ``pixel_features`` and ``class_log_shift``)."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    from eostream.shared.spectral import index_features

    n, c = images.shape[:2]
    pixels = images.reshape(n, c, -1).transpose(0, 2, 1).reshape(-1, c)
    with threadpool_limits(1):  # OpenMP threads spin against each other on busy cores
        p = estimator.predict_proba(index_features(pixels, bands, with_bands=with_bands))
    z = np.log(np.maximum(p, 1e-12))
    if log_shift is not None:
        z = z + np.asarray(log_shift)
    return np.asarray(z, np.float32)


def pixel_onnx_logits(sess: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    """A pixel model's ONNX logits for every pixel of ``images``: ``[N * H * W, K]``."""
    n, c = images.shape[:2]
    pixels = np.ascontiguousarray(images.reshape(n, c, -1).transpose(0, 2, 1).reshape(-1, c))
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: pixels})[0])


def torch_logits(model: Any, images: np.ndarray, threads: int = 1) -> np.ndarray:
    """Run an MLflow-loaded torch model (eager module or torch.export GraphModule)."""
    import torch

    torch.set_num_threads(threads)
    if isinstance(model, torch.nn.Module) and model.training:
        try:
            model.eval()
        except (NotImplementedError, RuntimeError):  # torch.export modules refuse eval()
            pass
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(images)))
    if isinstance(out, tuple | list):
        out = out[0]
    return np.asarray(out.detach().cpu().numpy())


def max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
