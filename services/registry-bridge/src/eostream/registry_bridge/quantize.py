"""The int8 variant of a model: statically quantised, checked against fp32, shipped beside it.

After a version passed the gate and before it ships (:meth:`.promotion.Promoter.ship`), the bridge

* quantises its ONNX with onnxruntime's ``quantize_static`` (:func:`quantise`): QDQ format,
  every convolution int8, the input ones fed by one per-band QuantizeLinear that does the
  model's normalisation (:mod:`.input_stem`; a network that does not start with its
  normalisation keeps its stem fp32), per-channel symmetric int8 weights (zero point 0, or -1
  to run on onnxruntime's int8 GEMM: :func:`.int8_kernels.gemm_weights`), uint8
  activations (U8S8) whose ranges are calibrated (MinMax) on ``calibration_size`` EuroSAT
  training patches in the model's input units (:func:`.calibration.calibration_files`: chosen
  per class by a salted name hash among the trainer's patches that are not in the gate's
  hold-out, so the int8 model is never checked on patches it was calibrated on); the input
  convolutions' uint8 grid spans the patches' per-band 0.01-99.99 % percentiles
  (:data:`.input_stem.INPUT_PERCENTILE`), not their min and max;
* scores both on the hold-out (top-1 accuracy of each, their top-1 agreement) and, with a
  reference set configured, on its maps (the gate's map figure of each);
* judges (:func:`judge`, pure): the int8 accuracy may be at most ``max_accuracy_loss`` below the
  fp32 one, its map figure at most ``max_map_loss`` below.
* with ``conv_kernel=auto``, times the int8 model's two kernel choices
  (:func:`.int8_kernels.gemm_weights`, the values bit for bit the same) on 64 calibration
  patches on this host and ships the faster (:func:`.int8_kernels.fastest_kernel`); the
  verdict's notes and the asset (``eostream:int8_conv_kernel``) say which and the times.

A passed int8 model ships as a second asset of the MLM item (``model_int8``, with its checksum,
``eostream:precision`` and the figures); a failed one is not shipped, the fp32 one is anyway. The
verdict and figures are version tags (``eostream.int8*``). Patch and segmentation models are
quantised; a segmentation model calibrates on its dataset's training chips and is scored on every
labelled pixel of the test chips (accuracy and agreement per pixel, 255 left out).

:func:`quantise` is the one quantisation code path: ``benchmarks/inference/bench_int8.py`` calls
it. This module never imports torch.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from eostream.registry_bridge import input_stem
from eostream.registry_bridge.holdout import Holdout
from eostream.registry_bridge.int8_kernels import ConvKernel, fastest_kernel, gemm_weights
from eostream.registry_bridge.policy import MapScores
from eostream.registry_bridge.settings import Int8Settings
from eostream.shared import tags
from eostream.shared.digest import sha256_hex
from eostream.shared.labels import MASK_UNKNOWN as UNKNOWN
from eostream.shared.modelcard import (
    INPUT_NAME,
    PRECISION_METADATA_KEY,
    ModelCard,
)

log = logging.getLogger(__name__)

Outcome = Literal["passed", "failed", "skipped"]
#: how the input convolutions are quantised (:func:`quantise`)
Stem = Literal["fused", "fp32", "int8"]
INT8 = "int8"
FP32 = "fp32"


def quantise(
    fp32: bytes,
    calibration: np.ndarray,
    batch: int = 32,
    *,
    stem: Stem = "fused",
    conv_kernel: ConvKernel = "direct",
    input_percentile: float = input_stem.INPUT_PERCENTILE,
) -> bytes:
    """Static int8 quantisation of an ONNX model (QDQ, per-channel int8 weights, uint8
    activations calibrated with MinMax (a fused stem's input grid: per-band percentiles,
    ``input_percentile``) on ``calibration``, float32 [N, C, H, W] in the model's
    input units). The ModelCard metadata entry is carried over, so inference loads the result,
    and an ``eostream.precision`` entry says int8.

    ``stem`` says how the input convolutions are quantised:

    * ``fused`` (the default): int8, their input quantised once per band by a QuantizeLinear
      that also does the model's ``(x - mean) / std``, padded with zero-weight channels to a
      multiple of four, their weights 7-bit (:func:`.input_stem.fuse`). quantize_static alone
      (``int8``) leaves an fp32 Sub and Div over every input value and a 13-channel int8
      convolution, which ran slower than keeping the stem fp32; fused, the 13-band
      ``centre_cnn``'s int8 ran 2.38x its fp32 on VNNI and 1.86x on AVX2 kernels, against 1.65x
      and 1.30x with the stem fp32 (2026-12-06, batch 64). A graph that does not start with
      its normalisation (spectral indices first), or whose rewrite fails or does not run in
      onnxruntime, falls back to ``fp32``.
    * ``fp32``: the stem (:func:`stem_nodes`: the input convolutions, what leads to them and
      what follows them up to the next convolution) stays fp32 (shipped 2026-12-04 to 12-06).
    * ``int8``: quantize_static's own quantisation of every node (shipped before 2026-12-04).

    ``conv_kernel`` chooses how onnxruntime will run the int8 convolutions, the values being
    the same either way (:func:`.int8_kernels.gemm_weights`): ``gemm`` (im2col and its int8 GEMM) or
    ``direct`` (its symmetric direct-convolution kernels). ``input_percentile``: the per-band
    percentile of ``calibration`` a fused stem's input grid reaches (100: min to max;
    ``benchmarks/inference/bench_int8_calibration.py`` compares them)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, x: np.ndarray) -> None:
            self.batches = iter([x[i : i + batch] for i in range(0, len(x), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {INPUT_NAME: np.ascontiguousarray(x, np.float32)}

    if len(calibration) == 0:
        raise ValueError("no calibration patches")
    with tempfile.TemporaryDirectory(prefix="eostream-int8-") as tmp:
        source, prepared, out = (Path(tmp, f) for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        source.write_bytes(fp32)
        quant_pre_process(str(source), str(prepared))
        graph = onnx.load(str(prepared))
        name_nodes(graph)
        onnx.save(graph, str(prepared))
        if stem == "fused" and not input_stem.fusable(graph.graph):
            log.info(
                "int8: the stem stays fp32: the graph does not start with a per-band "
                "normalisation that only plain convolutions and crops read"
            )
            stem = "fp32"
        excluded = stem_nodes(graph) if stem == "fp32" else []
        quantize_static(
            str(prepared),
            str(out),
            Reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # U8S8: uint8 activations, int8 weights. On this VNNI Xeon S8S8 QDQ ran slower than
            # fp32 for the 13-band centre_cnn (0.89x) and U8S8 faster (1.26x); on AVX2 without
            # VNNI U8S8 may saturate, which the accuracy check would catch
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
        )
        proto = onnx.load(str(out))
    if stem == "fused":
        try:  # the rewritten file must also load and run in onnxruntime
            input_stem.fuse(proto, calibration, percentile=input_percentile)
            _run_once(proto, calibration[:1])
        except Exception as exc:  # onnx and onnxruntime raise many types
            log.warning("int8: the stem stays fp32: %s", exc)
            return quantise(fp32, calibration, batch, stem="fp32", conv_kernel=conv_kernel)
    if conv_kernel == "gemm":
        gemm_weights(proto)
    metadata = {p.key: p.value for p in onnx.load_model_from_string(fp32).metadata_props}
    metadata[PRECISION_METADATA_KEY] = INT8  # what inference names the file by, however loaded
    present = {p.key for p in proto.metadata_props}
    for key, value in metadata.items():
        if key not in present:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
    return bytes(proto.SerializeToString())


def _run_once(model: onnx.ModelProto, x: np.ndarray) -> None:
    """Run ``model`` once on ``x`` with onnxruntime's CPU provider (raises what it raises)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    session.run(None, {INPUT_NAME: np.ascontiguousarray(x, np.float32)})


def stem_nodes(model: onnx.ModelProto) -> list[str]:
    """The names of the stem's nodes: every Conv that reads the graph's inputs with no Conv in
    between (the input convolutions: one in most networks, two in ``centre_cnn``), the nodes on
    the way there from the inputs (normalisation, crops, spectral indices) and the nodes after
    them up to the next Conv (activation, pooling), each only when all of its inputs come from
    the stem (a residual Add that also reads a later convolution is not). Empty when no Conv
    would be left to quantise. The nodes must have unique names (:func:`name_nodes`)."""
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if not node.input for out in node.output}
    #: stem tensors -> the input convolutions they come after (0: before them, 1: after)
    depth = {v.name: 0 for v in graph.input if v.name not in constants}
    stem: list[str] = []
    for node in graph.node:  # ONNX keeps nodes in topological order
        inputs = [t for t in node.input if t and t not in constants]
        if not inputs or any(t not in depth for t in inputs):
            continue
        level = max(depth[t] for t in inputs)
        if node.op_type == "Conv":
            if level > 0:
                continue  # the second convolution: where int8 starts
            level = 1
        stem.append(node.name)
        depth.update(dict.fromkeys(node.output, level))
    convs = [node.name for node in graph.node if node.op_type == "Conv"]
    return stem if set(convs) - set(stem) else []


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (quantize_static excludes nodes by name)."""
    taken: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in taken:
            name = f"{name}_{i}"
        node.name = name
        taken.add(name)


@dataclass(frozen=True)
class Int8Check:
    """The int8 verdict of one version and the figures it rests on (None: not measured)."""

    outcome: Outcome
    reasons: tuple[str, ...]
    onnx_bytes: bytes | None = None  # only when passed: what ships
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None
    agreement: float | None = None
    map_metric: str = "mean_iou"
    map_fp32: float | None = None
    map_int8: float | None = None
    calibration: int = 0
    seconds: float = 0.0
    conv_kernel: ConvKernel | None = None  # of what ships (None: nothing quantised)

    @property
    def accuracy_delta(self) -> float | None:
        if self.accuracy_fp32 is None or self.accuracy_int8 is None:
            return None
        return self.accuracy_int8 - self.accuracy_fp32

    @property
    def map_delta(self) -> float | None:
        if self.map_fp32 is None or self.map_int8 is None:
            return None
        return self.map_int8 - self.map_fp32

    @property
    def sha256(self) -> str | None:
        return sha256_hex(self.onnx_bytes) if self.onnx_bytes is not None else None

    def as_tags(self) -> dict[str, str]:
        """The version tags recording the verdict (the verdict tag last)."""

        def fmt(value: float | None) -> str:
            return "" if value is None else f"{value:.6f}"

        return {
            tags.INT8_REASONS: json.dumps(list(self.reasons)),
            tags.INT8_ACCURACY_DELTA: fmt(self.accuracy_delta),
            tags.INT8_AGREEMENT: fmt(self.agreement),
            tags.INT8_MAP_DELTA: fmt(self.map_delta),
            tags.INT8_SHA256: self.sha256 or "",
            tags.INT8: self.outcome,
        }

    def asset_fields(self) -> dict[str, Any]:
        """The int8 asset's fields in the MLM item (besides href, size and checksum)."""
        fields: dict[str, Any] = {
            "eostream:int8_check": self.outcome,
            "eostream:calibration_patches": self.calibration,
        }
        if self.accuracy_delta is not None:
            fields["eostream:holdout_accuracy"] = round(float(self.accuracy_int8 or 0.0), 6)
            fields["eostream:holdout_accuracy_delta"] = round(self.accuracy_delta, 6)
        if self.agreement is not None:
            fields["eostream:holdout_agreement"] = round(self.agreement, 6)
        if self.map_delta is not None:
            fields[f"eostream:map_{self.map_metric}_delta"] = round(self.map_delta, 6)
        if self.conv_kernel is not None:
            fields["eostream:int8_conv_kernel"] = self.conv_kernel
        return fields


def skipped(reason: str) -> Int8Check:
    return Int8Check("skipped", (f"NOTE: {reason}",))


def judge(
    accuracy_fp32: float,
    accuracy_int8: float,
    map_fp32: float | None,
    map_int8: float | None,
    settings: Int8Settings,
    *,
    map_checked: bool,
) -> tuple[bool, tuple[str, ...]]:
    """Pure: whether the int8 model may ship, with one reason per check."""
    reasons: list[str] = []
    passed = True
    loss = accuracy_fp32 - accuracy_int8
    ok = loss <= settings.max_accuracy_loss + 1e-12
    passed &= ok
    reasons.append(
        f"{'PASS' if ok else 'FAIL'}: hold-out accuracy int8 {accuracy_int8:.4f} vs fp32 "
        f"{accuracy_fp32:.4f} (loss {loss:+.4f}, at most {settings.max_accuracy_loss:.4f})"
    )
    if not map_checked:
        reasons.append("NOTE: map check skipped: no reference set configured")
    elif map_fp32 is None:
        reasons.append("NOTE: map check skipped: the fp32 model's maps could not be scored")
    elif map_int8 is None:
        passed = False
        reasons.append("FAIL: the int8 model's maps could not be scored on the reference set")
    else:
        map_loss = map_fp32 - map_int8
        ok = map_loss <= settings.max_map_loss + 1e-12
        passed &= ok
        reasons.append(
            f"{'PASS' if ok else 'FAIL'}: map figure int8 {map_int8:.4f} vs fp32 {map_fp32:.4f} "
            f"(loss {map_loss:+.4f}, at most {settings.max_map_loss:.4f})"
        )
    return passed, tuple(reasons)


def check(
    fp32: bytes,
    card: ModelCard,
    *,
    settings: Int8Settings,
    holdout: Holdout,
    calibration: Callable[[], np.ndarray],
    logits: Callable[[bytes, np.ndarray], np.ndarray],
    maps: Callable[[bytes], MapScores] | None = None,
    fp32_maps: Callable[[], MapScores | None] | None = None,
    map_metric: Literal["mean_iou", "overall_accuracy"] = "mean_iou",
    threads: int = 1,
) -> Int8Check:
    """Quantise ``fp32`` and check it (see the module). ``logits(onnx, images)`` runs a model;
    ``maps(onnx)`` scores one on the reference set and ``fp32_maps()`` gives the fp32 model's
    figures (both None: no reference set); ``threads``: the intra-op threads of the sessions
    that time the kernels (``conv_kernel=auto``). Never raises for a model that cannot be
    quantised or calibration patches that cannot be read: that fails the check (fp32 ships
    anyway)."""
    if not settings.enabled:
        return skipped("int8 disabled (BRIDGE_INT8__ENABLED=false)")
    if card.task not in ("patch", "segmentation"):
        return skipped(f"only patch and segmentation models are quantised, not {card.task}")
    pixels = card.task == "segmentation"
    if pixels and holdout.masks is None:
        return Int8Check("failed", ("FAIL: a segmentation model needs a hold-out with masks",))
    started = time.perf_counter()
    x = np.zeros((0,), np.float32)
    kernel: ConvKernel = "direct" if settings.conv_kernel == "auto" else settings.conv_kernel
    timed: dict[ConvKernel, float] = {}
    try:
        x = calibration()
        int8 = quantise(fp32, x, conv_kernel=kernel)
        if settings.conv_kernel == "auto":
            int8, kernel, timed = fastest_kernel(int8, x, threads)
        # a segmentation model is scored on every labelled pixel of the test chips
        y = holdout.masks if pixels and holdout.masks is not None else holdout.labels
        pred32 = logits(fp32, holdout.images).argmax(1)
        pred8 = logits(int8, holdout.images).argmax(1)
    except Exception as exc:  # onnxruntime and onnx raise many types
        reason = f"FAIL: calibrating, quantising or running the int8 model failed: {exc!r}"[:1000]
        return Int8Check("failed", (reason,), calibration=len(x))
    labelled = y != UNKNOWN
    accuracy32 = float((pred32 == y)[labelled].mean())
    accuracy8 = float((pred8 == y)[labelled].mean())
    agreement = float((pred32 == pred8)[labelled].mean())
    map32 = map8 = None
    if maps is not None and fp32_maps is not None:
        theirs = fp32_maps()
        map32 = theirs.figure(map_metric) if theirs is not None else None
        if map32 is not None:
            map8 = maps(int8).figure(map_metric)
    passed, reasons = judge(
        accuracy32, accuracy8, map32, map8, settings, map_checked=maps is not None
    )
    if timed:
        reasons = (
            *reasons,
            f"NOTE: int8 convolutions on onnxruntime's {kernel} kernels, timed here on "
            f"{min(len(x), 64)} calibration patches: gemm {timed['gemm'] * 1e3:.1f} ms, "
            f"direct {timed['direct'] * 1e3:.1f} ms a run (medians of rounds in either order)",
        )
    result = Int8Check(
        "passed" if passed else "failed",
        (
            *reasons,
            "NOTE: the input convolutions int8, the normalisation folded into the input's "
            "quantisation"
            if input_stem.is_fused(onnx.load_model_from_string(int8))
            else "NOTE: the input convolutions fp32 (their normalisation could not be folded "
            "into the input's quantisation; the bridge's log says why)",
            f"NOTE: top-1 agreement with fp32 on the hold-out"
            f"{' (labelled pixels)' if pixels else ''} {agreement:.4f}",
        ),
        int8 if passed else None,
        accuracy32,
        accuracy8,
        agreement,
        map_metric,
        map32,
        map8,
        len(x),
        time.perf_counter() - started,
        kernel if passed else None,
    )
    log.info(
        "int8 check %s (%.1f s, %d calibration patches): %s",
        result.outcome,
        result.seconds,
        len(x),
        "; ".join(result.reasons),
    )
    return result


__all__ = [
    "FP32",
    "INT8",
    "Int8Check",
    "check",
    "judge",
    "quantise",
    "skipped",
]
