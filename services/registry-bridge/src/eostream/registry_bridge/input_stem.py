"""The input convolutions of an int8 model in int8 too, the model's normalisation folded into the
quantisation of its input (:func:`fuse`, what :func:`.quantize.quantise` does with
``stem="fused"``).

An exported network starts ``(x - mean) / std`` per band (the trainer's ``Normalize``), then its
input convolutions (one, or two in ``centre_cnn``, one of them behind a crop). Quantised as
``quantize_static`` quantises it, that is an fp32 Sub and Div over every input value, a
QuantizeLinear, then (with 13 bands) an int8 convolution with 13 input channels, which fits
onnxruntime's int8 kernels badly; so the stem stayed fp32 and, for the 13-band ``centre_cnn``,
took ~45 % of the int8 model's time (benchmarks/inference/README.md). :func:`fuse` rewrites the
quantised graph so that

* **one per-band QuantizeLinear** (``axis=1``) reads the raw input and writes what the old
  QuantizeLinear wrote after the Sub and Div: band ``c`` with scale ``std[c] * S`` and zero point
  ``zp - R[c]``, ``R[c] = round(mean[c] / (std[c] * S))``. ``S`` and ``zp`` are one scale and
  zero point for the normalised input of every band: its range is that of the calibration
  patches' per-band :data:`INPUT_PERCENTILE` percentiles (low and high), not their min and max
  (see below), widened down to the normalised value of a raw 0 so that every band's zero
  point is a valid uint8 (with a negative mean it may not be: then :func:`fuse` raises and the
  stem stays fp32); brighter values saturate. The grid has the mean rounded to a step: each
  band reads its normalised value plus ``e[c] = mean[c] / std[c] - R[c] * S`` (at most half a
  step), which each input convolution's bias takes back (exact inside the window; in a
  zero-padded border ring it is off by at most half an input step times the weights that fall
  outside);
* the input is **padded with zero-weight channels to a multiple of** :data:`CHANNEL_MULTIPLE`
  (uint8, after the quantisation) for the convolutions that read the whole window:
  onnxruntime's int8 convolution took 16 channels ~1.6x as fast as 13, and 4 faster than 3 or
  16 (RGB);
* the input convolutions' **weights are 7-bit** (:data:`WEIGHT_LEVELS`, requantised from their
  int8 values): their input spans the whole uint8 range, and AVX2's int8 kernels (vpmaddubsw)
  add pairs of uint8 x int8 products in int16, which full-range weights overflow (seen under
  the AVX2 mask with 8-bit stem weights: the RGB model's logits up to 7.2 away from those of its
  stem-fp32 int8 file, top-1 agreement 0.918; with 7-bit ones within 0.38 of fp32's, agreement
  0.992);
* crops (Slice chains) run on the uint8 input, and each is dequantised with the same scale.

Measured 2026-12-06 with ``benchmarks/inference/bench_int8.py --maps`` (AMD EPYC, 2 threads,
onnxruntime 1.31; int8 / fp32 windows/s at batch 64, the other convolutions on the direct
kernels in both; AVX2 kernels: AVX-512 and VNNI hidden by ``benchmarks/cpu``'s mask, ``--cpu
avx2``):

| model | stem fp32 (shipped 12-04 to 12-06) | fused | AVX2 kernels: stem fp32 / fused |
|---|---:|---:|---:|
| 13-band ``centre_cnn`` | 1.65x | **2.38x** | 1.30x / **1.86x** |
| RGB ``small_cnn`` | 2.17x | **2.26x** | 1.59x / **1.71x** |

Water IoU of the 13-band model's map of Boadella 2020-09-14 (stride 4): 0.894 as fp32's (NDWI
0.930), the maps agreeing on 0.996 of their pixels (1.000 as water or not; 0.893 and 0.989 with
the min/max grid of the table's runs; 20:24 UTC run, 2.42x at batch 64).

Why percentiles: one grid serves all bands, so its step is set by the band with the widest
normalised range, and a min/max range by a handful of pixels. In the bridge's 105 calibration
patches of the data folder's EuroSAT MS files the blue band's brightest pixel lies 46.7 standard
deviations above its mean (clouds, glinting roofs), while every band's 99.99th percentile lies
within 14.6: the min/max step was 2.6x the 99.99 % one. Over six 13-band models' maps of three
labelled Boadella dates (2026-12-06, ``benchmarks/inference/bench_int8_calibration.py``) the
mean of each model's lowest all-class agreement with its fp32 map was 0.959 with a min/max grid
and 0.973 with 99.99 %, water IoU within 0.035 and 0.025 of fp32. A first try on the scratch
profile had rejected 99.99 % for moving some test windows' logits by up to 1.07; the maps say
otherwise.

A graph that does not start this way (spectral indices before the normalisation, a normalised
input read by something other than a convolution or a crop) is left to the caller
(:func:`fusable` says so), which keeps its stem fp32. Pure onnx and numpy: no onnxruntime,
no torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: the input channels the convolutions that read the whole window are padded to a multiple of
CHANNEL_MULTIPLE = 4
#: the input convolutions' weights are quantised to [-63, 63] (see :func:`_refit`)
WEIGHT_LEVELS = 63
#: the per-band percentile of the calibration patches the input grid reaches (and 100 minus it,
#: below); brighter values saturate (see the module)
INPUT_PERCENTILE = 99.99
#: the name of the per-band QuantizeLinear :func:`fuse` puts first
FUSED_NODE = "input_QuantizeLinear_per_band"


@dataclass(frozen=True)
class Normalisation:
    """``(input - mean) / std`` (or ``input / std``) at the start of a graph: its nodes and
    per-band constants."""

    input: str
    nodes: tuple[onnx.NodeProto, ...]  # the Sub (when there is one), then the Div
    mean: np.ndarray  # [C] float32
    std: np.ndarray  # [C] float32

    @property
    def output(self) -> str:
        return str(self.nodes[-1].output[0])


def find_normalisation(graph: onnx.GraphProto) -> Normalisation | None:
    """The graph's ``Sub(input, mean) -> Div(std)`` (or ``Div(input, std)``: a mean of 0) on its
    one input, mean and std constants with one value per band or one for all, std positive;
    None when it does not start so."""
    constants = {init.name: init for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in constants]
    if len(inputs) != 1:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[1].HasField("dim_value"):
        return None
    bands, name = int(dims[1].dim_value), inputs[0].name
    readers = _readers(graph)
    first = readers.get(name, [])
    if len(first) != 1 or first[0].op_type not in ("Sub", "Div") or first[0].input[0] != name:
        return None
    nodes = [first[0]]
    if first[0].op_type == "Sub":
        after = readers.get(first[0].output[0], [])
        if len(after) != 1 or after[0].op_type != "Div" or after[0].input[0] != nodes[0].output[0]:
            return None
        nodes.append(after[0])
    std = _per_band(constants.get(nodes[-1].input[1]), bands)
    mean = (
        _per_band(constants.get(nodes[0].input[1]), bands)
        if len(nodes) == 2
        else np.zeros(bands, np.float32)
    )
    if mean is None or std is None or not np.all(std > 0):
        return None
    return Normalisation(name, tuple(nodes), mean, std)


def fusable(graph: onnx.GraphProto) -> bool:
    """Whether :func:`fuse` can rewrite this (fp32) graph once quantised: a normalisation at its
    start whose output only convolutions and crops (Slice chains on the spatial axes ending in
    convolutions) read."""
    norm = find_normalisation(graph)
    if norm is None:
        return False
    readers = _readers(graph)
    constants = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    todo = [(node, norm.output) for node in readers.get(norm.output, [])]
    while todo:
        node, tensor = todo.pop()
        if node.input[0] != tensor or tensor in outputs:
            return False
        if node.op_type == "Slice" and _spatial(node, constants):
            todo.extend((n, node.output[0]) for n in readers.get(node.output[0], []))
        elif node.op_type != "Conv" or not _plain(node, constants, readers):
            return False
    return bool(readers.get(norm.output)) and norm.output not in outputs


def band_range(calibration: np.ndarray, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """Pure: each band's ``100 - percentile`` and ``percentile`` percentiles of ``calibration``
    ([N, C, H, W]), float64 [C] each; 100 gives the min and max. Below ~10,000 pixels a band,
    99.99 % leaves out less than a pixel: a small calibration set keeps its extremes."""
    if not 50 < percentile <= 100:
        raise ValueError(f"percentile {percentile} is not in (50, 100]")
    x = np.asarray(calibration)
    if percentile >= 100:
        return x.min(axis=(0, 2, 3)).astype(np.float64), x.max(axis=(0, 2, 3)).astype(np.float64)
    values = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    low, high = np.percentile(values, [100 - percentile, percentile], axis=1)
    return np.asarray(low, np.float64), np.asarray(high, np.float64)


def fuse(
    int8: onnx.ModelProto,
    calibration: np.ndarray,
    *,
    multiple: int = CHANNEL_MULTIPLE,
    percentile: float = INPUT_PERCENTILE,
) -> onnx.ModelProto:
    """Rewrite ``int8`` (``quantize_static``'s QDQ output with every convolution quantised, of
    a :func:`fusable` fp32 graph) in place as the module says; ``calibration``: the patches it
    was calibrated on, float32 [N, C, H, W] in the model's input units, whose per-band
    ``percentile`` range the input grid spans (100: min to max). Returns ``int8``."""
    graph = int8.graph
    norm = find_normalisation(graph)
    if norm is None:
        raise ValueError("the graph does not start with (input - mean) / std")
    readers = _readers(graph)
    made_by = {out: node for node in graph.node for out in node.output}
    arrays = {init.name: init for init in graph.initializer}
    quantise_in = _only(readers.get(norm.output, []), "QuantizeLinear")
    dequantise_in = _only(readers.get(quantise_in.output[0], []), "DequantizeLinear")
    normalised = dequantise_in.output[0]

    # the uint8 grid: the bands' percentile range, widened down to a raw 0's normalised value
    bands = len(norm.mean)
    lows, highs = band_range(calibration, percentile)
    lows, highs = (lows - norm.mean) / norm.std, (highs - norm.mean) / norm.std
    low = min(0.0, float(lows.min()), -float(np.max(norm.mean / norm.std)))
    high = max(0.0, float(highs.max()))
    step = (high - low) / 255.0 or 1.0
    zero = int(np.clip(np.round(-low / step), 0, 255))
    rounded = np.round(norm.mean / (norm.std * step))
    band_zero = zero - rounded
    if band_zero.min() < 0 or band_zero.max() > 255:
        raise ValueError("a band's zero point falls outside uint8 (a negative mean?)")
    offset = norm.mean / norm.std - rounded * step  # what each band reads beyond its value

    def constant(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    q_scale = constant("input_band_scale", (norm.std * step).astype(np.float32))
    q_zero = constant("input_band_zero_point", band_zero.astype(np.uint8))
    scale = constant("input_normalised_scale", np.array(step, np.float32))
    zero_point = constant("input_normalised_zero_point", np.array(zero, np.uint8))
    quantised = "input_normalised_uint8"
    head = [
        helper.make_node(
            "QuantizeLinear",
            [norm.input, q_scale, q_zero],
            [quantised],
            name=FUSED_NODE,
            axis=1,
        )
    ]
    # nodes by name: quantize_static's and quantise's (name_nodes) are unique
    drop = {*(n.name for n in norm.nodes), quantise_in.name, dequantise_in.name}
    convs = readers.get(normalised, [])
    # crops: their Slices read the uint8 input; the QuantizeLinear/DequantizeLinear pair that
    # quantize_static put after the last one becomes one DequantizeLinear on our grid
    replaced: dict[str, onnx.NodeProto] = {}
    cropped_convs: list[onnx.NodeProto] = []
    for node in list(convs):
        if node.op_type != "Slice":
            continue
        convs.remove(node)
        node.input[0] = quantised
        for last in _slice_chain_ends(node, readers):
            q = _only(readers.get(last.output[0], []), "QuantizeLinear")
            dq = _only(readers.get(q.output[0], []), "DequantizeLinear")
            drop.add(q.name)
            replaced[dq.name] = helper.make_node(
                "DequantizeLinear",
                [last.output[0], scale, zero_point],
                [dq.output[0]],
                name=f"{dq.name}_input_grid",
            )
            cropped_convs.extend(readers.get(dq.output[0], []))
    if any(conv.op_type != "Conv" for conv in cropped_convs):
        raise ValueError("a crop of the normalised input is read by something other than Conv")
    whole = [c for c in convs if c.op_type == "Conv"]
    if len(whole) != len(convs):
        raise ValueError("the normalised input is read by something other than Conv or Slice")
    padded = -(-bands // multiple) * multiple
    if whole:
        source = quantised
        if padded > bands:
            source = "input_normalised_uint8_padded"
            pads = constant(
                "input_channel_pads", np.array([0, 0, 0, 0, 0, padded - bands, 0, 0], np.int64)
            )
            head.append(
                helper.make_node(
                    "Pad", [quantised, pads, zero_point], [source], name="input_channel_Pad"
                )
            )
        head.append(
            helper.make_node(
                "DequantizeLinear", [source, scale, zero_point], [normalised], name="input_DQ"
            )
        )
    for conv in whole:
        _refit(conv, made_by, arrays, graph, offset, step, padded)
    for conv in cropped_convs:
        _refit(conv, made_by, arrays, graph, offset, step, bands)

    nodes: list[onnx.NodeProto] = [*head]
    if len({node.name for node in graph.node}) != len(graph.node):
        raise ValueError("the graph's node names are not unique")
    for node in graph.node:
        if node.name in replaced:
            nodes.append(replaced[node.name])
        elif node.name not in drop:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(_topological(nodes, graph))
    # the crops' outputs are uint8 now; onnxruntime infers every intermediate type itself
    del graph.value_info[:]
    _drop_unused_initialisers(graph)
    return int8


def is_fused(model: onnx.ModelProto) -> bool:
    """Whether an int8 model's input convolutions were quantised by :func:`fuse`."""
    return any(node.name == FUSED_NODE for node in model.graph.node)


def _refit(
    conv: onnx.NodeProto,
    made_by: dict[str, onnx.NodeProto],
    arrays: dict[str, TensorProto],
    graph: onnx.GraphProto,
    offset: np.ndarray,
    step: float,
    channels: int,
) -> None:
    """Pad an input convolution's int8 weights with zero input channels up to ``channels`` and
    requantise its bias for the input's new scale ``step``, less what the per-band ``offset``
    adds: ``b' = b - sum(W * offset)``."""
    weights_dq = made_by[conv.input[1]]
    w_q = numpy_helper.to_array(arrays[weights_dq.input[0]])
    w_scale = np.broadcast_to(
        numpy_helper.to_array(arrays[weights_dq.input[1]]).astype(np.float64), (w_q.shape[0],)
    )
    w = w_q.astype(np.float64) * w_scale.reshape(-1, *([1] * (w_q.ndim - 1)))
    # 7-bit weights: a pair of uint8 x int8 products stays inside int16, which AVX2's kernels
    # (vpmaddubsw) saturate; the input uses the whole uint8 range, unlike a ReLU's output
    w_scale = np.abs(w).reshape(len(w), -1).max(axis=1) / WEIGHT_LEVELS
    w_scale[w_scale == 0] = 1.0
    w_q = np.round(w / w_scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.int8)
    w = w_q.astype(np.float64) * w_scale.reshape(-1, *([1] * (w.ndim - 1)))
    bands = len(offset)
    correction = (w[:, :bands].sum(axis=(2, 3)) * offset[None, :]).sum(axis=1)
    if len(conv.input) > 2 and conv.input[2]:
        bias_dq = made_by[conv.input[2]]
        b_q = numpy_helper.to_array(arrays[bias_dq.input[0]]).astype(np.float64)
        b_scale = numpy_helper.to_array(arrays[bias_dq.input[1]]).astype(np.float64)
        bias = b_q * b_scale
        bias_name, bias_scale_name = bias_dq.input[0], bias_dq.input[1]
    else:  # a bias of its own, dequantised like quantize_static's, added to the graph below
        bias = np.zeros(w.shape[0])
        bias_name, bias_scale_name = f"{conv.name}_bias_quantized", f"{conv.name}_bias_scale"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.zeros(w.shape[0], np.int32), bias_name),
                numpy_helper.from_array(np.ones(w.shape[0], np.float32), bias_scale_name),
            ]
        )
        bias_dq = helper.make_node(
            "DequantizeLinear",
            [bias_name, bias_scale_name],
            [f"{conv.name}_bias"],
            name=f"{conv.name}_bias_DequantizeLinear",
        )
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = bias_dq.output[0]
        arrays.update({i.name: i for i in graph.initializer[-2:]})
    new_scale = step * w_scale
    new_bias = np.round((bias - correction) / new_scale)
    if np.abs(new_bias).max(initial=0) >= 2**31:
        raise ValueError(f"the bias of {conv.name} overflows int32 at the input's scale")
    arrays[bias_name].CopyFrom(numpy_helper.from_array(new_bias.astype(np.int32), bias_name))
    arrays[bias_scale_name].CopyFrom(
        numpy_helper.from_array(new_scale.astype(np.float32), bias_scale_name)
    )
    wider = np.zeros((w_q.shape[0], max(channels, w_q.shape[1]), *w_q.shape[2:]), np.int8)
    wider[:, : w_q.shape[1]] = w_q
    for dq in (weights_dq, bias_dq):  # their scales are per output channel now
        _set_axis(dq, 0)
    if bias_dq.name not in {node.name for node in graph.node}:
        graph.node.append(bias_dq)  # (appending copies it: after it is set up)
    weights, scales = weights_dq.input[0], weights_dq.input[1]
    arrays[weights].CopyFrom(numpy_helper.from_array(wider, weights))
    arrays[scales].CopyFrom(numpy_helper.from_array(w_scale.astype(np.float32), scales))


def _set_axis(node: onnx.NodeProto, axis: int) -> None:
    for attribute in node.attribute:
        if attribute.name == "axis":
            attribute.i = axis
            return
    node.attribute.append(helper.make_attribute("axis", axis))


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            if name:
                found.setdefault(name, []).append(node)
    return found


def _only(nodes: list[onnx.NodeProto], op_type: str) -> onnx.NodeProto:
    if len(nodes) != 1 or nodes[0].op_type != op_type:
        found = [n.op_type for n in nodes]
        raise ValueError(f"expected one {op_type} there, found {found}")
    return nodes[0]


def _per_band(init: TensorProto | None, bands: int) -> np.ndarray | None:
    """A constant's value for each band, when it broadcasts along the band axis of [N, C, H, W]:
    one value, or C of shape [C, 1, 1] or [1, C, 1, 1] (a 1-d [C] broadcasts along the width);
    else None."""
    if init is None:
        return None
    value = numpy_helper.to_array(init).astype(np.float32)
    if value.size == 1:
        return np.full(bands, float(value.ravel()[0]), np.float32)
    if value.shape not in ((bands, 1, 1), (1, bands, 1, 1)):
        return None
    return value.ravel()


def _plain(
    conv: onnx.NodeProto,
    constants: dict[str, TensorProto],
    readers: dict[str, list[onnx.NodeProto]],
) -> bool:
    """An ungrouped convolution with weights (and bias) of its own: :func:`_refit` pads and
    rescales them in place."""
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    own = [name for name in conv.input[1:] if name]
    return (
        group == 1
        and conv.input[1] in constants
        and all(name in constants and len(readers.get(name, [])) == 1 for name in own)
    )


def _spatial(node: onnx.NodeProto, constants: dict[str, TensorProto]) -> bool:
    """A Slice of a 4-d tensor whose axes are constant and leave out the batch and the bands."""
    if len(node.input) < 4 or node.input[3] not in constants:
        return False
    axes = numpy_helper.to_array(constants[node.input[3]])
    return all(int(a) % 4 in (2, 3) for a in np.atleast_1d(axes))


def _slice_chain_ends(
    first: onnx.NodeProto, readers: dict[str, list[onnx.NodeProto]]
) -> list[onnx.NodeProto]:
    """The last Slice of each chain of Slices that starts at ``first``."""
    ends, todo = [], [first]
    while todo:
        node = todo.pop()
        nexts = [n for n in readers.get(node.output[0], []) if n.op_type == "Slice"]
        if nexts:
            todo.extend(nexts)
        else:
            ends.append(node)
    return ends


def _topological(nodes: Iterable[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """``nodes`` in an order where each comes after what it reads (stable otherwise)."""
    ready = {i.name for i in graph.initializer} | {v.name for v in graph.input} | {""}
    pending, ordered = list(nodes), []
    while pending:
        for i, node in enumerate(pending):
            if all(name in ready for name in node.input):
                ordered.append(pending.pop(i))
                ready.update(node.output)
                break
        else:
            raise ValueError(f"a cycle or a missing input among {[n.name for n in pending]}")
    return ordered


def _drop_unused_initialisers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    used |= {v.name for v in (*graph.input, *graph.output)}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


__all__ = [
    "CHANNEL_MULTIPLE",
    "FUSED_NODE",
    "INPUT_PERCENTILE",
    "WEIGHT_LEVELS",
    "Normalisation",
    "band_range",
    "find_normalisation",
    "fusable",
    "fuse",
    "is_fused",
]
