"""Helpers for tests and benchmarks: small real ONNX models with a proper ModelCard, and STAC
items for local rasters. Needs the ``onnx`` package (a dev dependency)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from eostream.inference.uploads import item_for_raster
from eostream.shared.modelcard import (
    BAND_SETS,
    EUROSAT_CLASSES,
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    PATCH_SIZE,
    BandScaling,
    ModelCard,
)


def model_card(
    band_set: str = "rgb",
    *,
    name: str = "test-cnn",
    level: str = "L1C",
    bands: tuple[str, ...] | None = None,
) -> ModelCard:
    chosen = bands or BAND_SETS[band_set]
    return ModelCard(
        name=name,
        band_set="ms13" if band_set == "ms13" else "rgb",
        bands=chosen,
        scaling=tuple(
            BandScaling(band=b, scale=10000.0, clip_min=0, clip_max=20000) for b in chosen
        ),
        processing_level=level,
        architecture="tiny_conv",
        description="random-weight test model",
    )


def build_onnx(
    card: ModelCard,
    *,
    seed: int = 0,
    channels: int | None = None,
    width: int = 8,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
    with_card: bool = True,
) -> bytes:
    """A tiny conv net ``[N,C,64,64] -> [N,10]`` with seeded random weights and the card inside."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c = channels if channels is not None else len(card.bands)
    k = len(card.classes)
    inits = [
        numpy_helper.from_array((np.full((c, 1, 1), 1e-3, np.float32)), "scale"),
        numpy_helper.from_array(rng.normal(0, 0.5, (width, c, 4, 4)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(-0.5, 0.5, (width,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 3.0, (k, width)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros((k,), np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Mul", [input_name, "scale"], ["x0"]),
        helper.make_node("Conv", ["x0", "w1", "b1"], ["x1"], strides=[4, 4]),
        helper.make_node("Relu", ["x1"], ["x2"]),
        helper.make_node("GlobalAveragePool", ["x2"], ["x3"]),
        helper.make_node("Flatten", ["x3"], ["x4"], axis=1),
        helper.make_node("Gemm", ["x4", "w2", "b2"], [output_name], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info(
                input_name, TensorProto.FLOAT, ["N", c, PATCH_SIZE, PATCH_SIZE]
            )
        ],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", k])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_card:
        helper.set_model_props(model, {METADATA_KEY: card.to_json()})
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def build_small_cnn(card: ModelCard, *, seed: int = 0) -> bytes:
    """A benchmark-sized CNN (3 conv blocks, ~60k parameters, like the trainer's small_cnn)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c, k = len(card.bands), len(card.classes)
    widths = [c, 32, 64, 64]
    inits, nodes, x = [], [], INPUT_NAME
    inits.append(numpy_helper.from_array(np.full((c, 1, 1), 1e-4, np.float32), "scale"))
    nodes.append(helper.make_node("Mul", [x, "scale"], ["s0"]))
    x = "s0"
    for i in range(3):
        w = rng.normal(0, (2 / (9 * widths[i])) ** 0.5, (widths[i + 1], widths[i], 3, 3))
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(np.zeros(widths[i + 1], np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
            helper.make_node("MaxPool", [f"r{i}"], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]),
        ]
        x = f"p{i}"
    inits += [
        numpy_helper.from_array(rng.normal(0, 0.2, (k, 64)).astype(np.float32), "fc"),
        numpy_helper.from_array(np.zeros(k, np.float32), "fcb"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc", "fcb"], [OUTPUT_NAME], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["N", c, PATCH_SIZE, PATCH_SIZE]
            )
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", k])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: card.to_json()})
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def localise_item(item_path: Path, out_path: Path) -> dict[str, Any]:
    """Copy an item JSON, pointing asset hrefs that end in a local file name to that file."""
    item = json.loads(item_path.read_text())
    folder = item_path.parent
    for asset in item.get("assets", {}).values():
        name = str(asset.get("href", "")).rsplit("/", 1)[-1]
        if (folder / name).is_file():
            asset["href"] = str(folder / name)
    out_path.write_text(json.dumps(item))
    return dict(item)


EUROSAT = EUROSAT_CLASSES
__all__ = ["build_onnx", "build_small_cnn", "item_for_raster", "localise_item", "model_card"]
