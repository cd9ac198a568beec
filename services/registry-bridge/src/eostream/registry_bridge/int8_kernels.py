"""Which onnxruntime kernels run an int8 model's convolutions, and the choice of the faster.

A QLinearConv whose weight zero points are all 0 runs on onnxruntime's symmetric direct kernels;
the same weights stored one less with zero point -1 (:func:`gemm_weights`, the same values) run
on im2col and its int8 GEMM. :func:`fastest_kernel` times both on this host and keeps the faster
one, if their outputs agree (:func:`output_step`); :func:`kernel_of` says which a file uses.
The registry-bridge's int8 check (:mod:`.quantize`) and ``benchmarks/inference`` use them.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import numpy as np
import onnx
from onnx import numpy_helper

from eostream.shared.modelcard import INPUT_NAME

log = logging.getLogger(__name__)

#: how onnxruntime runs the int8 convolutions (:func:`gemm_weights`)
ConvKernel = Literal["gemm", "direct"]
#: what the GEMM kernels must save (:func:`fastest_kernel`'s median ratio) to be chosen over
#: onnxruntime's default (direct) ones
GEMM_MARGIN = 0.03


def gemm_weights(model: onnx.ModelProto) -> int:
    """Store each int8 convolution's symmetric weights with zero point -1 instead of 0 (the
    weights one less: [-127, 127] becomes [-128, 126]), so they stand for the same values; returns
    how many convolutions were rewritten.

    Only the kernel onnxruntime picks changes: a QLinearConv whose weight zero points are all 0
    runs on its symmetric direct-convolution kernels (``MlasConvSym``: VNNI or AVX2), any other on
    im2col and its int8 GEMM (``MlasGemm``), which uses AMX where the CPU has it. On this host's
    Xeon (AVX-512, VNNI, AMX) a 2048^3 MatMulInteger ran 3.6 T ops/s against 0.29 T for the fp32
    MatMul, and the RGB ``small_cnn``'s three int8 convolutions at batch 64 took 5.1 ms against
    5.3 ms on the direct kernels, the logits bit for bit the same; but single convolutions timed
    alone went either way (0.54x-1.65x), so the bridge times both on each model
    (:func:`fastest_kernel`, ``BRIDGE_INT8__CONV_KERNEL=auto``) unless told which.
    ``benchmarks/inference/bench_int8.py`` times both. A convolution whose weights already use
    -128 is left as it is."""
    rewritten = 0
    done: set[str] = set()
    for weights, zero_point in conv_weights(model.graph):
        if {weights.name, zero_point.name} & done:
            continue
        w, zp = numpy_helper.to_array(weights), numpy_helper.to_array(zero_point)
        if w.dtype != np.int8 or zp.dtype != np.int8 or np.any(zp != 0) or w.min() < -127:
            continue
        weights.CopyFrom(
            numpy_helper.from_array((w.astype(np.int16) - 1).astype(np.int8), weights.name)
        )
        zero_point.CopyFrom(numpy_helper.from_array(np.full_like(zp, -1), zero_point.name))
        done |= {weights.name, zero_point.name}
        rewritten += 1
    return rewritten


def conv_weights(graph: onnx.GraphProto) -> list[tuple[onnx.TensorProto, onnx.TensorProto]]:
    """Each int8 convolution's weights and their zero point (the initialisers its weights'
    DequantizeLinear reads), in the graph's order."""
    initialisers = {init.name: init for init in graph.initializer}
    dequantised_by = {
        out: node
        for node in graph.node
        if node.op_type == "DequantizeLinear"
        for out in node.output
    }
    found = []
    for conv in (node for node in graph.node if node.op_type == "Conv"):
        dq = dequantised_by.get(conv.input[1]) if len(conv.input) > 1 else None
        if dq is None or len(dq.input) < 3:
            continue
        weights, zero_point = (initialisers.get(dq.input[i]) for i in (0, 2))
        if weights is not None and zero_point is not None:
            found.append((weights, zero_point))
    return found


def fastest_kernel(
    int8: bytes, windows: np.ndarray, threads: int = 1, pairs: int = 4, runs: int = 4
) -> tuple[bytes, ConvKernel, dict[ConvKernel, float]]:
    """The faster of ``int8`` (quantised with ``conv_kernel="direct"``) and its
    :func:`gemm_weights` twin on this host: both run on the same ``windows`` (up to 64) in
    sessions set up as inference sets them up, one warm-up, then ``pairs`` pairs of rounds, a
    round being ``runs`` runs of one and ``runs`` of the other, the GEMM twin first in one round
    of a pair and second in the other. A pair's figure is the geometric mean of its two rounds'
    time ratios (GEMM / direct), in which what running first or second does cancels out; the
    GEMM twin is chosen when the median of the pairs' figures is ``GEMM_MARGIN`` below 1.
    Returns the chosen model, its kernel and each one's median seconds a run.

    Paired rounds of several runs, because single runs (~25-50 ms here) are too noisy on a
    shared host: five of them each, medians compared, chose the RGB ``small_cnn``'s GEMM twin
    on an AMD EPYC with AVX-512 VNNI and no AMX (2026-12-05), which ``bench_int8.py`` then
    measured 10 % slower than the direct kernels; single-run ratios of the two ranged 0.7-2.1
    there, the ratios of four-run rounds 1.0-1.4, with medians of 1.11-1.21 (the direct ones
    faster) in six trials of six for that model (and of six for the 13-band ``centre_cnn``).

    The twin must also give the same outputs to within one step of the output's quantisation
    (:func:`output_step`): on a CPU without VNNI (AVX2 only) onnxruntime's u8s8 GEMM adds pairs
    of products in int16, which saturates on full-range weights (seen 2026-12-04 on an AMD EPYC
    with AVX2 only: logits 4 steps apart). Then the direct kernels ship and no times are
    returned."""
    from eostream.registry_bridge import onnx_model

    if pairs < 1 or runs < 1:
        raise ValueError(f"pairs and runs must be at least 1, not {pairs} and {runs}")
    proto = onnx.load_model_from_string(int8)
    if not gemm_weights(proto):
        return int8, "direct", {}
    models: dict[ConvKernel, bytes] = {
        "direct": int8,
        "gemm": bytes(proto.SerializeToString()),
    }
    x = np.ascontiguousarray(windows[:64], np.float32)
    sessions = {kernel: onnx_model.session(data, threads) for kernel, data in models.items()}
    # every output (a centre_cnn's per-pixel map output too: inference maps from it), each
    # within its own step
    warm = {kernel: sess.run(None, {INPUT_NAME: x}) for kernel, sess in sessions.items()}
    names = [o.name for o in proto.graph.output]
    over = {
        name: gap
        for name, g, d in zip(names, warm["gemm"], warm["direct"], strict=True)
        if (gap := float(np.abs(np.asarray(g) - np.asarray(d)).max()))
        > output_step(proto, name) + 1e-6
    }
    if over:
        log.warning(
            "int8: the GEMM kernels' outputs differ from the direct ones (%s) on this CPU "
            "(int16 saturation without VNNI?): shipping the direct kernels",
            ", ".join(f"{name} by {gap:.4g}" for name, gap in over.items()),
        )
        return int8, "direct", {}
    times: dict[ConvKernel, list[float]] = {kernel: [] for kernel in models}
    orders: tuple[tuple[ConvKernel, ConvKernel], ...] = (("gemm", "direct"), ("direct", "gemm"))
    for _ in range(pairs):
        for order in orders:
            for kernel in order:
                started = time.perf_counter()
                for _ in range(runs):
                    sessions[kernel].run(None, {INPUT_NAME: x})
                times[kernel].append((time.perf_counter() - started) / runs)
    ratios = np.divide(times["gemm"], times["direct"]).reshape(pairs, len(orders))
    ratio = float(np.median(np.sqrt(ratios.prod(axis=1))))
    chosen: ConvKernel = "gemm" if ratio < 1 - GEMM_MARGIN else "direct"
    return models[chosen], chosen, {k: float(np.median(v)) for k, v in times.items()}


def kernel_of(int8: bytes) -> ConvKernel:
    """The kernels onnxruntime runs an int8 model's convolutions on: ``gemm`` when a
    convolution's weight zero point is -1 (:func:`gemm_weights`), else ``direct``."""
    found = conv_weights(onnx.load_model_from_string(int8).graph)
    minus_one = (np.any(numpy_helper.to_array(zp) == -1) for _, zp in found)
    return "gemm" if any(minus_one) else "direct"


def output_step(model: onnx.ModelProto, name: str | None = None) -> float:
    """The quantisation step of the graph's output ``name`` (default: its first): the scale of
    the DequantizeLinear that makes it (0.0 when none does: then outputs must be equal)."""
    name = name or model.graph.output[0].name
    scales = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and name in node.output and node.input[1] in scales:
            return float(np.max(numpy_helper.to_array(scales[node.input[1]])))
    return 0.0
