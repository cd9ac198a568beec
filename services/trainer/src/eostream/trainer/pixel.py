"""Per-pixel models: scikit-learn classifiers on band vectors, exported to ONNX with skl2onnx.

A pixel model classifies every pixel from its own band vector (``[N, C]`` in the card's units,
here EuroSAT MS reflectance in file order, B8A last), so its maps are true 10 m maps. The
estimator is fitted on :func:`eostream.shared.spectral.index_features` (the bands, then NDWI,
MNDWI, NDVI, NDBI); the exported graph takes the raw bands and computes those indices itself, in
front of the skl2onnx graph, and ends in ``logits = log(max(probabilities, 1e-12))``: the
contract's one ``[N, classes]`` output whose softmax is the class probability (skl2onnx's
``label`` output is dropped, ``zipmap`` is off).

Two options serve models fitted on the user's own labels (benchmarks/maps/bench_own_labels.py):
``with_bands=False`` fits on the indices alone (band ratios carry over between dates better than
reflectance does), and :meth:`PixelModel.with_threshold` moves one class's decision threshold by
adding a constant to its log-probability, inside the graph too, so every consumer's argmax (and
softmax) uses it without knowing about it.

The functions here take plain arrays, so any sampler can feed them (EuroSAT patches below;
pixels under label items elsewhere)::

    fitted = fit_pixel_model(x, y, classes, bands, seed=42)        # x [n, C] float32 units
    sha256 = export_pixel_onnx(fitted, card, path)                 # card.task == "pixel"
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from eostream.shared.digest import file_sha256_hex
from eostream.shared.modelcard import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelCard
from eostream.shared.spectral import EPSILON, index_features, indices_for
from eostream.trainer.datasets import PatchTensors
from eostream.trainer.errors import DatasetError, ExportMismatchError
from eostream.trainer.export import ExportCheck, onnx_logits

log = logging.getLogger(__name__)

#: classes of a fitted estimator that MLflow's skops format must be told to trust on load
SKOPS_TRUSTED = {
    "pixel_hgb": ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"],
    "pixel_rf": [],
}
#: architecture name -> what it is; a TrainingRequested naming one of these trains a pixel model
PIXEL_ARCHITECTURES: dict[str, str] = {
    "pixel_hgb": "HistGradientBoostingClassifier on bands + spectral indices",
    "pixel_rf": "RandomForestClassifier on bands + spectral indices",
}
PROBABILITY_FLOOR = 1e-12
ML_OPSET = 3


@dataclass(frozen=True)
class PixelModel:
    """A fitted scikit-learn classifier and what it takes: ``bands`` in card units."""

    estimator: Any
    bands: tuple[str, ...]
    classes: tuple[str, ...]
    architecture: str
    with_bands: bool = True  # False: fitted on the spectral indices alone
    #: added to each class's log-probability (all 0: none); see :meth:`with_threshold`
    log_shift: tuple[float, ...] | None = None

    def features(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``[N, C]`` band vectors -> what the estimator takes."""
        return index_features(x, self.bands, with_bands=self.with_bands)

    def probabilities(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """The estimator's own class probabilities (no threshold shift)."""
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        with threadpool_limits(1):  # OpenMP threads spin against each other on busy cores
            return np.asarray(self.estimator.predict_proba(self.features(x)), np.float64)

    def logits(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``[N, C]`` band vectors -> ``[N, classes]`` log-probabilities, shifted by
        :attr:`log_shift` (what ONNX gives)."""
        z = np.log(np.maximum(self.probabilities(x), PROBABILITY_FLOOR))
        if self.log_shift is not None:
            z = z + np.asarray(self.log_shift)
        return np.asarray(z, np.float32)

    def card_fields(self) -> dict[str, Any]:
        """What its model card must say about how it decides (``ModelCard.pixel_features``,
        ``class_log_shift``): ``card.model_copy(update=model.card_fields())``."""
        shift = self.log_shift if self.log_shift is not None and any(self.log_shift) else None
        return {
            "pixel_features": "bands+indices" if self.with_bands else "indices",
            "class_log_shift": shift,
        }

    def with_threshold(self, cls: int, threshold: float) -> PixelModel:
        """This model deciding ``cls`` where its probability exceeds ``threshold`` (two classes:
        exactly; more: ``cls`` wins where ``p_cls / p_other > threshold / (1 - threshold)`` for
        every other class). Kept as ``log((1 - t) / t)`` added to the class's log-probability;
        the softmax of the shifted logits is the probability under the matching prior shift."""
        if not 0.0 < threshold < 1.0 or not 0 <= cls < len(self.classes):
            raise DatasetError(f"threshold {threshold} of class {cls}: want 0 < t < 1, a class")
        shift = [0.0] * len(self.classes)
        shift[cls] = float(np.log((1.0 - threshold) / threshold))
        return replace(self, log_shift=tuple(shift))


def sample_pixels(
    patches: PatchTensors,
    per_patch: int,
    *,
    seed: int,
    augmentation: torch.nn.Module | None = None,
    copies: int = 1,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``per_patch`` random pixels of every patch, labelled with the patch's class, as
    ``([n, C], [n])``. With ``augmentation`` (the radiometric jitter of :mod:`.augment`, applied
    per patch in training mode: one atmosphere per patch) each patch is drawn ``copies`` times,
    each draw seeing a fresh jitter; the first draw is always the patch as it is."""
    n, c, h, w = patches.x.shape
    if n == 0 or per_patch < 1:
        raise DatasetError("no pixels to sample: no patches or per_patch < 1")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    xs, ys = [], []
    for copy in range(copies if augmentation is not None else 1):
        x = patches.x
        if copy and augmentation is not None:
            augmentation.train()
            with torch.no_grad():
                x = augmentation(x)
        flat = x.reshape(n, c, h * w).numpy()
        picks = rng.integers(0, h * w, size=(n, per_patch))
        xs.append(np.take_along_axis(flat, picks[:, None, :], axis=2).transpose(0, 2, 1))
        ys.append(np.repeat(patches.y.numpy(), per_patch))
    x_out = np.concatenate([a.reshape(-1, c) for a in xs]).astype(np.float32)
    return x_out, np.concatenate(ys).astype(np.int64)


def fit_pixel_model(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    classes: Sequence[str],
    bands: Sequence[str],
    *,
    seed: int,
    architecture: str = "pixel_hgb",
    max_iter: int = 200,
    threads: int = 1,
    with_bands: bool = True,
) -> PixelModel:
    """Fit ``architecture`` on pixels ``x`` ``[n, C]`` (card units, ``bands`` order) labelled
    ``y`` (indices into ``classes``; every class must occur, so the output has one column per
    class). ``with_bands=False``: on the spectral indices alone."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    if x.ndim != 2 or x.shape[1] != len(bands) or len(x) != len(y):
        raise DatasetError(f"pixels {x.shape} and labels {y.shape} do not match bands {bands}")
    missing = sorted(set(range(len(classes))) - {int(v) for v in np.unique(y)})
    if missing:
        raise DatasetError(f"no training pixels of class(es) {[classes[i] for i in missing]}")
    estimator: Any
    if architecture == "pixel_hgb":
        estimator = HistGradientBoostingClassifier(
            max_iter=max_iter, learning_rate=0.1, max_leaf_nodes=31, random_state=seed
        )
    elif architecture == "pixel_rf":
        estimator = RandomForestClassifier(
            n_estimators=max_iter, min_samples_leaf=5, n_jobs=threads, random_state=seed
        )
    else:
        raise DatasetError(f"unknown pixel architecture {architecture!r}")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads):  # OpenMP spinning on a busy machine costs 10x
        estimator.fit(index_features(x, bands, with_bands=with_bands), y)
    log.info("fitted %s on %d pixels (bands %s)", architecture, len(x), with_bands)
    return PixelModel(estimator, tuple(bands), tuple(classes), architecture, with_bands)


def pixel_onnx(model: PixelModel, opset: int = 17) -> Any:
    """The ONNX graph ``input [N, C] -> logits [N, classes]`` with the indices inside."""
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    n_features = len(model.bands) * model.with_bands + len(indices_for(model.bands))
    with _int_missing_flags():
        inner = to_onnx(
            model.estimator,
            initial_types=[("features", FloatTensorType([None, n_features]))],
            options={id(model.estimator): {"zipmap": False}},
            target_opset={"": opset, "ai.onnx.ml": ML_OPSET},
        )
    graph = inner.graph
    probabilities = next(o.name for o in graph.output if o.name != "label")
    nodes: list[Any] = []
    inits = [
        helper.make_tensor("eps", TensorProto.FLOAT, [], [EPSILON]),
        helper.make_tensor("floor", TensorProto.FLOAT, [], [PROBABILITY_FLOOR]),
    ]
    columns = [INPUT_NAME] if model.with_bands else []
    for name, a, b in indices_for(model.bands):
        for band, col in (("a", a), ("b", b)):
            inits.append(helper.make_tensor(f"{name}_{band}_idx", TensorProto.INT64, [1], [col]))
            nodes.append(
                helper.make_node(
                    "Gather", [INPUT_NAME, f"{name}_{band}_idx"], [f"{name}_{band}"], axis=1
                )
            )
        nodes += [
            helper.make_node("Sub", [f"{name}_a", f"{name}_b"], [f"{name}_num"]),
            helper.make_node("Add", [f"{name}_a", f"{name}_b"], [f"{name}_sum"]),
            helper.make_node("Add", [f"{name}_sum", "eps"], [f"{name}_den"]),
            helper.make_node("Div", [f"{name}_num", f"{name}_den"], [name]),
        ]
        columns.append(name)
    nodes.append(helper.make_node("Concat", columns, ["features"], axis=1))
    shifted = model.log_shift is not None and any(model.log_shift)
    tail = [
        helper.make_node("Max", [probabilities, "floor"], ["probabilities_floored"]),
        helper.make_node("Log", ["probabilities_floored"], ["log_p" if shifted else OUTPUT_NAME]),
    ]
    if shifted:
        shift = [float(v) for v in model.log_shift or ()]
        inits.append(helper.make_tensor("log_shift", TensorProto.FLOAT, [1, len(shift)], shift))
        tail.append(helper.make_node("Add", ["log_p", "log_shift"], [OUTPUT_NAME]))
    merged = helper.make_graph(
        [*nodes, *graph.node, *tail],
        "eostream_pixel_model",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", len(model.bands)])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", len(model.classes)])],
        [*inits, *graph.initializer],
    )
    proto = helper.make_model(merged, opset_imports=list(inner.opset_import))
    proto.ir_version = inner.ir_version
    onnx.checker.check_model(proto, full_check=True)
    return proto


@contextlib.contextmanager
def _int_missing_flags() -> Iterator[None]:
    """skl2onnx 1.20 passes a Python ``False`` as a leaf's ``nodes_missing_value_tracks_true``
    of a HistGradientBoosting tree beside numpy ints for branches, which onnx 1.23 refuses in an
    ``ints`` attribute; make it an int while converting (the value is the same)."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, **kwargs: Any) -> Any:
        flag = kwargs.get("nodes_missing_value_tracks_true")
        if flag is not None:
            kwargs["nodes_missing_value_tracks_true"] = int(flag)
        return original(*args, **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def export_pixel_onnx(model: PixelModel, card: ModelCard, path: Path, opset: int = 17) -> str:
    """Write ``model`` as ONNX with ``card`` in its metadata to ``path``; returns its SHA-256."""
    import onnx

    if card.task != "pixel" or card.library != "scikit-learn":
        raise ExportMismatchError("a pixel model's card says task 'pixel', library 'scikit-learn'")
    if card.bands != model.bands or card.classes != model.classes:
        raise ExportMismatchError("the card's bands or classes differ from the fitted model's")
    wanted = model.card_fields()
    said = {"pixel_features": card.pixel_features, "class_log_shift": card.class_log_shift}
    if said != wanted:
        raise ExportMismatchError(
            f"the card says {said} but the fitted model is {wanted}: "
            "card.model_copy(update=model.card_fields())"
        )
    proto = pixel_onnx(model, opset)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, card.to_json()
    proto.producer_name = "eostream-trainer"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return file_sha256_hex(path)


def check_pixel_onnx(
    path: Path, model: PixelModel, x: npt.NDArray[np.float32], tolerance: float
) -> ExportCheck:
    """Compare ONNX and scikit-learn on pixels ``x``; raise ExportMismatchError when they
    disagree beyond ``tolerance`` (compared on probabilities: log-probabilities of ~0 differ
    wildly in float32 without meaning anything)."""
    expected = _softmax(model.logits(x))
    got = _softmax(onnx_logits(path, x))
    diff = float(np.abs(expected - got).max())
    agreement = float((expected.argmax(1) == got.argmax(1)).mean())
    log.info("ONNX vs scikit-learn on %d pixels: max |diff| %.2e", len(x), diff)
    if diff > tolerance:
        raise ExportMismatchError(
            f"ONNX export disagrees with scikit-learn: max |probability diff| {diff:.3g} "
            f"(tolerance {tolerance})"
        )
    return ExportCheck(diff, agreement, len(x))


def _softmax(z: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    e = np.exp(np.asarray(z, np.float64) - np.max(z, axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def patch_probabilities(
    logits_of: Any, x: torch.Tensor | npt.NDArray[np.float32], chunk: int = 64, step: int = 1
) -> npt.NDArray[np.float32]:
    """A pixel model's class probabilities of whole patches ``[N, C, H, W]``: the mean of its
    per-pixel probabilities over each patch (``logits_of``: ``[n, C]`` -> ``[n, classes]``),
    over every ``step``-th row and column of it (1: every pixel, as the gate scores)."""
    array = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    array = array[:, :, ::step, ::step]
    n, c = array.shape[:2]
    out = []
    for i in range(0, n, chunk):
        part = array[i : i + chunk]
        pixels = part.reshape(len(part), c, -1).transpose(0, 2, 1).reshape(-1, c)
        z = np.asarray(logits_of(np.ascontiguousarray(pixels, np.float32)), np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out.append(p.reshape(len(part), -1, p.shape[1]).mean(axis=1))
    return np.concatenate(out).astype(np.float32)
