"""How an int8 file's stem is quantised: by default every convolution is int8, the input ones
fed by one per-band quantisation that does the model's normalisation (``stem="fused"``,
registry_bridge.input_stem); a network that does not start with its normalisation, or
``stem="fp32"``, keeps the convolutions that read the bands fp32. Exported by the trainer's own
exporter, quantised by the registry-bridge's own ``quantise``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from eostream.registry_bridge.input_stem import (
    CHANNEL_MULTIPLE,
    INPUT_PERCENTILE,
    WEIGHT_LEVELS,
    band_range,
    is_fused,
)
from eostream.registry_bridge.quantize import Stem, quantise
from eostream.shared.modelcard import BAND_SETS, ModelCard
from eostream.trainer.cards import map_fields
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


def exported(
    architecture: str,
    band_set: str,
    tmp_path: Path,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Path:
    """An untrained ``architecture`` on ``band_set`` exported by the trainer's own exporter
    (normalising by ``mean`` and ``std``, else 0.1 and 0.05 for every band)."""
    bands = BAND_SETS[band_set]
    torch.manual_seed(0)
    seen = SpectralIndices(bands).channels if architecture in INDEX_ARCHITECTURES else len(bands)
    model = build_model(
        architecture,
        bands,
        [0.1] * seen if mean is None else [float(v) for v in mean],
        [0.05] * seen if std is None else [float(v) for v in std],
    )
    card = ModelCard(
        name=architecture,
        band_set=band_set,
        bands=bands,
        scaling=identity_scaling(band_set),
        architecture=architecture,
        **map_fields(architecture, 64),  # a centre_cnn's per-pixel map output, as trained
    )
    path = tmp_path / "model.onnx"
    export_onnx(model, card, path)
    return path


FUSABLE = [
    ("small_cnn", "rgb"),
    ("centre_cnn", "ms13"),  # two input convolutions, one behind a crop
    ("centre_cnn_stride2", "ms13"),  # the same, the context's a strided one
    ("resnet18_imagenet", "rgb"),  # a 7x7 stride-2 stem, residual adds after it
    ("seg_small_cnn", "l2a"),
]


def input_convs(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The convolutions with no convolution upstream of their input."""
    return [
        node
        for node in graph.node
        if node.op_type == "Conv"
        and not any(n.op_type == "Conv" for n in ancestors(graph, node.input[0]))
    ]


@pytest.mark.parametrize(("architecture", "band_set"), FUSABLE, ids=str)
def test_every_convolution_is_int8_and_the_input_is_quantised_once_per_band(
    architecture: str, band_set: str, tmp_path: Path
) -> None:
    bands = BAND_SETS[band_set]
    path = exported(architecture, band_set, tmp_path)
    calibration = np.random.default_rng(0).uniform(0, 0.3, (16, len(bands), 64, 64))
    model = onnx.load_model_from_string(quantise(path.read_bytes(), calibration))
    graph = model.graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

    assert is_fused(model)
    assert not [n.op_type for n in graph.node if n.op_type in ("Sub", "Div")]
    readers = [n for n in graph.node if graph.input[0].name in n.input]
    assert [n.op_type for n in readers] == ["QuantizeLinear"]
    axis = next(a.i for a in readers[0].attribute if a.name == "axis")
    assert axis == 1 and arrays[readers[0].input[1]].shape == (len(bands),)
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        made = [n.op_type for n in ancestors(graph, conv.input[0])]
        assert made[:1] == ["DequantizeLinear"], f"{conv.name} reads fp32"
        assert [n.op_type for n in ancestors(graph, conv.input[1])] == ["DequantizeLinear"]
    padded = -(-len(bands) // CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE
    made_by = {out: node for node in graph.node for out in node.output}
    for conv in input_convs(graph):
        weights = arrays[made_by[conv.input[1]].input[0]]
        assert weights.dtype == np.int8 and np.abs(weights).max() <= WEIGHT_LEVELS
        whole = made_by[conv.input[0]].name == "input_DQ"  # else a crop's
        assert weights.shape[1] == (padded if whole else len(bands)), conv.name
        if whole:
            assert not weights[:, len(bands) :].any()


@pytest.mark.parametrize(
    ("architecture", "band_set"), [("small_cnn", "rgb"), ("centre_cnn", "ms13")], ids=str
)
def test_the_fused_file_runs_as_inference_runs_it_and_agrees_with_fp32(
    architecture: str, band_set: str, tmp_path: Path
) -> None:
    """With every onnxruntime optimisation on (its QLinearConv kernels, as inference opens the
    file), the fused int8 logits stay as close to fp32's as the stem-fp32 file's do, within a
    few output steps."""
    from eostream.registry_bridge import onnx_model
    from eostream.registry_bridge.int8_kernels import output_step

    bands = len(BAND_SETS[band_set])
    path = exported(
        architecture,
        band_set,
        tmp_path,
        mean=np.linspace(0.04, 0.2, bands).tolist(),
        std=np.linspace(0.03, 0.09, bands).tolist(),
    )
    x = np.random.default_rng(0).uniform(0, 0.3, (48, bands, 64, 64)).astype(np.float32)
    fused = quantise(path.read_bytes(), x[:32])
    stem_fp32 = quantise(path.read_bytes(), x[:32], stem="fp32")
    logits = {
        name: onnx_model.logits(onnx_model.session(data), x[32:])
        for name, data in (("fp32", path.read_bytes()), ("fused", fused), ("stem", stem_fp32))
    }
    step = output_step(onnx.load_model_from_string(fused))
    fused_error = np.abs(logits["fused"] - logits["fp32"]).max()
    stem_error = np.abs(logits["stem"] - logits["fp32"]).max()
    assert fused_error <= max(4 * step, 2 * stem_error), (fused_error, stem_error, step)


def test_band_range_leaves_out_the_brightest_and_darkest_pixels_of_each_band() -> None:
    rng = np.random.default_rng(0)
    ranges = np.array([0.1, 0.3, 2.0]).reshape(1, 3, 1, 1)  # each band its own range
    x = rng.uniform(0.0, 1.0, (16, 3, 32, 32)) * ranges
    low, high = band_range(x, 100)
    for c in range(3):
        assert (low[c], high[c]) == (x[:, c].min(), x[:, c].max())
    x[0, 1, 0, 0], x[3, 2, 5, 5] = 9.0, -9.0  # 1 of 16,384 pixels each: under 0.01 %
    low, high = band_range(x, INPUT_PERCENTILE)
    for c in range(3):
        expected = np.percentile(x[:, c], [100 - INPUT_PERCENTILE, INPUT_PERCENTILE])
        assert np.allclose((low[c], high[c]), expected)
    assert np.all(high <= ranges.ravel()) and np.all(low >= 0)  # the outliers left out
    with pytest.raises(ValueError, match="not in"):
        band_range(x, 50)


def test_a_few_outlier_pixels_in_the_calibration_keep_the_input_grid_fine(
    tmp_path: Path,
) -> None:
    """One grid serves every band, so a min-max range would let a handful of bright pixels of
    one band (a cloud, a glinting roof) coarsen the input of every band; the per-band
    percentiles keep the step, and the int8 logits stay as close to fp32's as without them."""
    from eostream.registry_bridge import onnx_model

    bands = len(BAND_SETS["ms13"])
    mean, std = np.linspace(0.04, 0.2, bands), np.linspace(0.03, 0.09, bands)
    path = exported("centre_cnn", "ms13", tmp_path, mean=mean.tolist(), std=std.tolist())
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.3, (48, bands, 64, 64)).astype(np.float32)
    clean = x[:32]
    bright = clean.copy()
    bright[5, 1, 10:12, 10:12] = 5.0  # 4 pixels of 131,072, 141 standard deviations of band 1

    def step(model: bytes) -> float:
        arrays = {i.name: i for i in onnx.load_model_from_string(model).graph.initializer}
        return float(numpy_helper.to_array(arrays["input_normalised_scale"]))

    models = {
        "clean": quantise(path.read_bytes(), clean),
        "bright": quantise(path.read_bytes(), bright),
    }
    assert step(models["bright"]) == pytest.approx(step(models["clean"]), rel=0.02)
    # what a min-max grid makes of it: a step over 10x as coarse
    min_max = quantise(path.read_bytes(), bright, input_percentile=100)
    assert step(min_max) > 10 * step(models["clean"])
    fp32 = onnx_model.logits(onnx_model.session(path.read_bytes()), x[32:])
    error = {
        name: np.abs(onnx_model.logits(onnx_model.session(data), x[32:]) - fp32).max()
        for name, data in models.items()
    }
    assert error["bright"] <= 1.5 * error["clean"] + 1e-6, error


def _normalising_graph(
    *,
    mean: np.ndarray | None = None,
    group: int = 1,
    shared: bool = False,
    output_normalised: bool = False,
) -> onnx.GraphProto:
    """input [1, 4, 8, 8] -> (Sub mean) -> Div std -> two 3x3 convolutions."""
    from onnx import TensorProto, helper

    inits = [numpy_helper.from_array(np.full((1, 4, 1, 1), 0.5, np.float32), "std")]
    nodes = []
    source = "input"
    if mean is not None:
        inits.append(numpy_helper.from_array(mean.astype(np.float32), "mean"))
        nodes.append(helper.make_node("Sub", ["input", "mean"], ["centred"]))
        source = "centred"
    nodes.append(helper.make_node("Div", [source, "std"], ["normalised"]))
    for i in range(2):
        name = "w0" if shared else f"w{i}"
        if not shared or i == 0:
            shape = (4, 4 // group, 3, 3)
            inits.append(numpy_helper.from_array(np.ones(shape, np.float32), name))
        nodes.append(
            helper.make_node(
                "Conv", ["normalised", name], [f"y{i}"], pads=[1, 1, 1, 1], group=group
            )
        )
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(2)]
    if output_normalised:
        outputs.append(helper.make_tensor_value_info("normalised", TensorProto.FLOAT, None))
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])
    return helper.make_graph(nodes, "g", [x], outputs, inits)


def test_only_what_the_rewrite_handles_is_fused() -> None:
    from eostream.registry_bridge.input_stem import find_normalisation, fusable

    per_band = np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1) / 10
    assert fusable(_normalising_graph(mean=per_band))
    divided = _normalising_graph()  # input / std: a mean of 0
    norm = find_normalisation(divided)
    assert fusable(divided) and norm is not None and not norm.mean.any()
    assert not fusable(_normalising_graph(mean=per_band.ravel()))  # [C] broadcasts along W
    assert not fusable(_normalising_graph(mean=per_band, group=4))  # depthwise
    assert not fusable(_normalising_graph(mean=per_band, shared=True))  # one weight, two convs
    assert not fusable(_normalising_graph(mean=per_band, output_normalised=True))


@pytest.mark.parametrize(
    ("architecture", "band_set"),
    [("small_cnn", "rgb"), ("centre_cnn", "ms13"), ("resnet18_imagenet", "rgb")],
    ids=str,
)
def test_the_fused_input_convolutions_compute_what_the_fp32_ones_do_on_the_grid(
    architecture: str, band_set: str, tmp_path: Path
) -> None:
    """Inputs that the per-band quantisation represents exactly: each input convolution of the
    int8 file (run without onnxruntime's fusions, so in float) gives what the fp32 file's gives
    with the same (7-bit) weights, to the bias's int32 rounding, everywhere but the border ring
    its zero padding reaches. That checks the per-band scales and zero points against the
    model's mean and std, the bias's correction for the mean rounded to the grid, the padded
    channels and the crop."""
    import onnxruntime as ort

    bands = len(BAND_SETS[band_set])
    mean = np.linspace(0.04, 0.2, bands).tolist()
    std = np.linspace(0.03, 0.09, bands).tolist()
    path = exported(architecture, band_set, tmp_path, mean=mean, std=std)
    calibration = np.random.default_rng(0).uniform(0, 0.3, (16, bands, 64, 64))
    int8 = onnx.load_model_from_string(quantise(path.read_bytes(), calibration))
    fp32 = onnx.load(str(path))
    arrays = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    band_scale, band_zero = arrays["input_band_scale"], arrays["input_band_zero_point"]
    codes = np.random.default_rng(1).integers(0, 256, (4, bands, 64, 64))
    shape = (1, bands, 1, 1)
    x = ((codes - band_zero.reshape(shape)) * band_scale.reshape(shape)).astype(np.float32)

    convs = {conv.name: conv for conv in input_convs(int8.graph)}
    assert len(convs) == (2 if architecture == "centre_cnn" else 1)
    made_by = {out: node for node in int8.graph.node for out in node.output}
    fp32_inits = {i.name: i for i in fp32.graph.initializer}
    for name, conv in convs.items():
        dq = made_by[conv.input[1]]
        w = arrays[dq.input[0]].astype(np.float64) * arrays[dq.input[1]].reshape(-1, 1, 1, 1)
        theirs = next(n for n in fp32.graph.node if n.name == name)
        original = numpy_helper.to_array(fp32_inits[theirs.input[1]])
        assert np.abs(w[:, :bands] - original).max() <= np.abs(original).max() / WEIGHT_LEVELS
        fp32_inits[theirs.input[1]].CopyFrom(
            numpy_helper.from_array(w[:, :bands].astype(np.float32), theirs.input[1])
        )

    def run(model: onnx.ModelProto) -> dict[str, np.ndarray]:
        for name in convs:
            node = next(n for n in model.graph.node if n.name == name)
            model.graph.output.append(onnx.ValueInfoProto(name=node.output[0]))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), options)
        names = [o.name for o in model.graph.output][-len(convs) :]
        return dict(zip(convs, session.run(names, {"input": x}), strict=True))

    ours, theirs = run(int8), run(fp32)
    for name, conv in convs.items():
        attrs = {a.name: list(a.ints) for a in conv.attribute}
        pad, stride = max(attrs.get("pads", [0]) or [0]), (attrs.get("strides") or [1])[0]
        ring = -(-pad // stride)
        inner = (slice(None), slice(None), slice(ring, -ring or None), slice(ring, -ring or None))
        bias_scale = arrays[made_by[conv.input[2]].input[1]].reshape(1, -1, 1, 1)
        error = np.abs(ours[name] - theirs[name])[inner]
        scale = np.abs(theirs[name]).max()
        assert (error <= bias_scale + 1e-5 * scale).all(), f"{name}: {error.max():.3g}"
        if ring:  # the border ring reads the zero padding, where the correction is approximate
            assert np.abs(ours[name] - theirs[name]).max() > error.max()


@pytest.mark.parametrize(
    ("architecture", "band_set", "stem"),
    [
        ("seg_unet_indices", "l2a", "fused"),  # spectral indices first: no fusing, stem fp32
        ("small_cnn", "rgb", "fp32"),
        ("centre_cnn", "ms13", "fp32"),
        ("resnet18_imagenet", "rgb", "fp32"),  # residual adds right after the stem
    ],
    ids=str,
)
def test_a_stem_left_fp32_reads_the_bands_unrounded(
    architecture: str, band_set: str, stem: Stem, tmp_path: Path
) -> None:
    """With ``stem="fp32"``, or for a network that does not start with its normalisation, the
    convolutions that read the bands and what leads to them (normalisation, the centre crop,
    spectral indices) see the inputs unrounded; every later convolution is int8."""
    bands = BAND_SETS[band_set]
    path = exported(architecture, band_set, tmp_path)
    calibration = np.random.default_rng(0).uniform(0, 0.3, (16, len(bands), 64, 64))
    model = onnx.load_model_from_string(quantise(path.read_bytes(), calibration, stem=stem))
    graph = model.graph
    assert not is_fused(model)

    stem_convs: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]] = []
    rest: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]] = []
    for conv in (node for node in graph.node if node.op_type == "Conv"):
        upstream = ancestors(graph, conv.input[0])
        (rest if any(n.op_type == "Conv" for n in upstream) else stem_convs).append(
            (conv, upstream)
        )
    assert stem_convs and rest
    for conv, upstream in stem_convs:
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
    from eostream.registry_bridge.int8_kernels import fastest_kernel, output_step

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
    proto = onnx.load_model_from_string(models["direct"])
    assert output_step(proto) == out_scale
    # every output (a centre_cnn's per-pixel map output too), each within its own step
    outputs = {k: onnx_model.session(data).run(None, {"input": x}) for k, data in models.items()}
    steps = [output_step(proto, o.name) for o in proto.graph.output]
    assert len(outputs["direct"]) == (2 if architecture.startswith("centre_cnn") else 1)
    chosen, kernel, medians = fastest_kernel(models["direct"], x, pairs=1, runs=1)
    if all(
        np.abs(g - d).max() <= step + 1e-6
        for g, d, step in zip(outputs["gemm"], outputs["direct"], steps, strict=True)
    ):
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
    from eostream.registry_bridge import int8_kernels, onnx_model

    x = np.random.default_rng(0).uniform(0, 0.3, (8, 3, 64, 64)).astype(np.float32)
    direct = quantise(exported("small_cnn", "rgb", tmp_path).read_bytes(), x)
    clock = _Clock()
    calls = [0]

    def session(data: bytes, _threads: int = 1) -> _Session:
        kernel = int8_kernels.kernel_of(data)

        def cost() -> float:
            # one warm-up run of each, then rounds of one run of each (runs=1)
            calls[0] += 1
            second = calls[0] > 2 and calls[0] % 2 == 0
            return (gemm_cost if kernel == "gemm" else 1.0) * (second_cost if second else 1.0)

        return _Session(clock, cost)

    monkeypatch.setattr(onnx_model, "session", session)
    monkeypatch.setattr(int8_kernels, "time", clock)
    data, kernel, medians = int8_kernels.fastest_kernel(direct, x, pairs=4, runs=1)
    assert kernel == chosen and int8_kernels.kernel_of(data) == chosen
    assert medians.keys() == {"direct", "gemm"}
    with pytest.raises(ValueError, match="at least 1"):
        int8_kernels.fastest_kernel(direct, x, pairs=0)


def test_a_stem_that_cannot_be_fused_stays_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the fusing gives up on a graph it accepted (a band's zero point outside uint8),
    the int8 file keeps its stem fp32 instead of failing the int8 check."""
    from eostream.registry_bridge import input_stem

    def refuse(_model: onnx.ModelProto, _calibration: np.ndarray, **_: Any) -> onnx.ModelProto:
        raise ValueError("a band's zero point falls outside uint8")

    monkeypatch.setattr(input_stem, "fuse", refuse)
    path = exported("small_cnn", "rgb", tmp_path)
    x = np.random.default_rng(0).uniform(0, 0.3, (8, 3, 64, 64))
    model = onnx.load_model_from_string(quantise(path.read_bytes(), x))
    assert not is_fused(model)
    assert [n.op_type for n in model.graph.node if n.op_type in ("Sub", "Div")] == ["Sub", "Div"]
    assert "the stem stays fp32: a band's zero point" in caplog.text
