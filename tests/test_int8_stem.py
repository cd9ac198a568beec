"""Every network's int8 file keeps its stem fp32: the convolutions that read the bands, and what
leads to them (normalisation, the centre crop, spectral indices), see the inputs unrounded;
every later convolution is int8. Exported by the trainer's own exporter, quantised by the
registry-bridge's own ``quantise``."""

from __future__ import annotations

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
    [("small_cnn", "rgb"), ("resnet18_imagenet", "rgb"), ("centre_cnn", "ms13")],
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
    chosen, kernel, medians = fastest_kernel(models["direct"], x, rounds=2, runs=1)
    if np.abs(logits["gemm"] - logits["direct"]).max() <= out_scale + 1e-6:
        assert chosen == models[kernel] and medians.keys() == {"direct", "gemm"}
    else:  # this CPU's int8 GEMM saturates (AVX2 without VNNI): the bridge keeps the direct one
        assert (chosen, kernel, medians) == (models["direct"], "direct", {})
