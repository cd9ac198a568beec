"""Every network's int8 file keeps its stem fp32: the convolutions that read the bands, and what
leads to them (normalisation, the centre crop, spectral indices), see the inputs unrounded;
every later convolution is int8. Exported by the trainer's own exporter, quantised by the
registry-bridge's own ``quantise``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from eostream.registry_bridge.quantize import quantise
from eostream.shared.modelcard import BAND_SETS, ModelCard
from eostream.trainer.export import export_onnx
from eostream.trainer.models import INDEX_ARCHITECTURES, SpectralIndices, build_model
from eostream.trainer.scaling import identity_scaling

QDQ = {"QuantizeLinear", "DequantizeLinear"}


def ancestors(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    """Every node ``tensor`` is computed from."""
    made_by = {out: node for node in graph.node for out in node.output}
    seen: dict[int, onnx.NodeProto] = {}
    todo = [tensor]
    while todo:
        node = made_by.get(todo.pop())
        if node is not None and id(node) not in seen:
            seen[id(node)] = node
            todo.extend(node.input)
    return list(seen.values())


def exported(architecture: str, band_set: str, tmp_path: Path) -> Path:
    """An untrained ``architecture`` on ``band_set`` exported by the trainer's own exporter."""
    bands = BAND_SETS[band_set]
    torch.manual_seed(0)
    seen = SpectralIndices(bands).channels if architecture in INDEX_ARCHITECTURES else len(bands)
    model = build_model(architecture, bands, [0.1] * seen, [0.05] * seen)
    card = ModelCard(
        name=architecture,
        band_set=band_set,
        bands=bands,
        scaling=identity_scaling(band_set),
        architecture=architecture,
    )
    path = tmp_path / "model.onnx"
    export_onnx(model, card, path)
    return path


@pytest.mark.parametrize(
    ("architecture", "band_set"),
    [
        ("small_cnn", "rgb"),
        ("centre_cnn", "ms13"),  # two input convolutions, one behind a crop
        ("centre_cnn_stride2", "ms13"),  # the same, the context's a strided one
        ("resnet18_imagenet", "rgb"),  # residual adds right after the stem
        ("seg_unet_indices", "l2a"),  # spectral indices computed in the graph
        ("seg_small_cnn", "l2a"),
    ],
    ids=lambda value: str(value),
)
def test_the_stem_stays_fp32_and_the_rest_is_int8(
    architecture: str, band_set: str, tmp_path: Path
) -> None:
    bands = BAND_SETS[band_set]
    path = exported(architecture, band_set, tmp_path)
    calibration = np.random.default_rng(0).uniform(0, 0.3, (16, len(bands), 64, 64))
    graph = onnx.load_model_from_string(quantise(path.read_bytes(), calibration)).graph

    stem: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]] = []
    rest: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]] = []
    for conv in (node for node in graph.node if node.op_type == "Conv"):
        upstream = ancestors(graph, conv.input[0])
        (rest if any(n.op_type == "Conv" for n in upstream) else stem).append((conv, upstream))
    assert stem and rest
    for conv, upstream in stem:
        assert not any(n.op_type in QDQ for n in upstream), f"{conv.name} reads rounded bands"
        assert not any(n.op_type in QDQ for n in ancestors(graph, conv.input[1])), conv.name
    for conv, _ in rest:
        assert [n.op_type for n in ancestors(graph, conv.input[1])][:1] == ["DequantizeLinear"]


@pytest.mark.parametrize(
    ("architecture", "band_set"),
    [
        ("small_cnn", "rgb"),
        ("resnet18_imagenet", "rgb"),
        ("centre_cnn", "ms13"),
        ("centre_cnn_stride2", "ms13"),
    ],
    ids=lambda value: str(value),
)
def test_the_gemm_kernels_weights_stand_for_the_same_values(
    architecture: str, band_set: str, tmp_path: Path
) -> None:
    """``conv_kernel="gemm"`` stores every int8 convolution's weights one less with zero point
    -1 (so onnxruntime runs them on its int8 GEMM, not its direct kernels): the same dequantised
    weights, the same logits to within one step of the output's quantisation where this CPU's
    int8 GEMM is exact (VNNI or AMX); where it is not, the bridge's timing keeps the direct
    kernels."""
    from eostream.registry_bridge import onnx_model
    from eostream.registry_bridge.quantize import fastest_kernel, output_step

    bands = BAND_SETS[band_set]
    path = exported(architecture, band_set, tmp_path)
    x = np.random.default_rng(0).uniform(0, 0.3, (32, len(bands), 64, 64)).astype(np.float32)
    models = {k: quantise(path.read_bytes(), x, conv_kernel=k) for k in ("direct", "gemm")}

    def conv_weights(data: bytes) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        graph = onnx.load_model_from_string(data).graph
        arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        weights = {node.input[1] for node in graph.node if node.op_type == "Conv"}
        return {
            node.output[0]: tuple(arrays[t] for t in node.input[:3])  # type: ignore[misc]
            for node in graph.node
            if node.op_type == "DequantizeLinear" and node.output[0] in weights
        }

    direct, gemm = conv_weights(models["direct"]), conv_weights(models["gemm"])
    assert direct.keys() == gemm.keys() and direct
    for name, (w, scale, zero) in gemm.items():
        w0, scale0, zero0 = direct[name]
        assert not zero0.any() and (zero == -1).all(), name
        assert np.array_equal(scale, scale0)
        assert np.array_equal(w.astype(np.int32) + 1, w0.astype(np.int32)), name

    out_scale = float(
        next(
            numpy_helper.to_array(i)
            for i in onnx.load_model_from_string(models["direct"]).graph.initializer
            if i.name == "logits_scale"
        )
    )
    assert output_step(onnx.load_model_from_string(models["direct"])) == out_scale
    logits = {k: onnx_model.logits(onnx_model.session(data), x) for k, data in models.items()}
    chosen, kernel, medians = fastest_kernel(models["direct"], x, pairs=1, runs=1)
    if np.abs(logits["gemm"] - logits["direct"]).max() <= out_scale + 1e-6:
        assert chosen == models[kernel] and medians.keys() == {"direct", "gemm"}
    else:  # this CPU's int8 GEMM saturates (AVX2 without VNNI): the bridge keeps the direct one
        assert (chosen, kernel, medians) == (models["direct"], "direct", {})


class _Clock:
    """A fake ``time.perf_counter`` that only the fake sessions move."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _Session:
    """Stands in for an onnxruntime session: each run costs ``cost()`` seconds of ``clock``."""

    def __init__(self, clock: _Clock, cost: Callable[[], float]) -> None:
        self.clock, self.cost = clock, cost

    def run(self, _names: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.clock.now += self.cost()
        return [np.zeros((len(next(iter(feeds.values()))), 10), np.float32)]


@pytest.mark.parametrize(
    ("gemm_cost", "second_cost", "chosen"),
    [
        (0.9, 1.0, "gemm"),  # 10 % faster
        (0.99, 1.0, "direct"),  # within GEMM_MARGIN: the default stays
        (1.2, 1.0, "direct"),
        # the same speed, but whichever runs second in a round seems 30 % faster (a warm
        # cache), or slower: the order alternates, so that favours neither kernel
        (1.0, 0.7, "direct"),
        (1.0, 1.3, "direct"),
    ],
)
def test_the_bridge_times_both_kernels_in_rounds_of_either_order(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    gemm_cost: float,
    second_cost: float,
    chosen: str,
) -> None:
    """``fastest_kernel``'s choice on a fake clock: the median over pairs of rounds (one in
    each order) of their time ratios, the GEMM twin only when it saves ``GEMM_MARGIN``; no
    timed assertion (the clock is a counter)."""
    from eostream.registry_bridge import onnx_model, quantize

    x = np.random.default_rng(0).uniform(0, 0.3, (8, 3, 64, 64)).astype(np.float32)
    direct = quantise(exported("small_cnn", "rgb", tmp_path).read_bytes(), x)
    clock = _Clock()
    calls = [0]

    def session(data: bytes, _threads: int = 1) -> _Session:
        kernel = quantize.kernel_of(data)

        def cost() -> float:
            # one warm-up run of each, then rounds of one run of each (runs=1)
            calls[0] += 1
            second = calls[0] > 2 and calls[0] % 2 == 0
            return (gemm_cost if kernel == "gemm" else 1.0) * (second_cost if second else 1.0)

        return _Session(clock, cost)

    monkeypatch.setattr(onnx_model, "session", session)
    monkeypatch.setattr(quantize, "time", clock)
    data, kernel, medians = quantize.fastest_kernel(direct, x, pairs=4, runs=1)
    assert kernel == chosen and quantize.kernel_of(data) == chosen
    assert medians.keys() == {"direct", "gemm"}
    with pytest.raises(ValueError, match="at least 1"):
        quantize.fastest_kernel(direct, x, pairs=0)
