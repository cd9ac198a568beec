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


def build_segmentation_onnx(
    card: ModelCard, *, seed: int = 0, width: int = 8, any_size: bool = False
) -> bytes:
    """A tiny fully convolutional net ``[N, C, P, P] -> [N, classes, P, P]`` (two 3x3 convs, a
    receptive field of 5x5) with seeded random weights and the card inside; ``any_size``: the
    same graph with free height and width, to run it on a whole image at once."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c, k = len(card.bands), len(card.classes)
    inits = [
        numpy_helper.from_array(np.full((c, 1, 1), 1e-3, np.float32), "scale"),
        numpy_helper.from_array(rng.normal(0, 0.5, (width, c, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(-0.2, 0.5, (width,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 1.0, (k, width, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros((k,), np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Mul", [INPUT_NAME, "scale"], ["x0"]),
        helper.make_node("Conv", ["x0", "w1", "b1"], ["x1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["x1"], ["x2"]),
        helper.make_node("Conv", ["x2", "w2", "b2"], [OUTPUT_NAME], pads=[1, 1, 1, 1]),
    ]
    h, w = ("H", "W") if any_size else (card.patch_size, card.patch_size)
    graph = helper.make_graph(
        nodes,
        "tiny_segmentation",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", k, h, w])],
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


def fit_rgb_scaling(data_dir: Path) -> tuple[BandScaling, ...]:
    """Reflectance -> EuroSAT JPEG units for B04/B03/B02, fitted per band by least squares on
    the real MS GeoTIFF / JPEG pairs of the data folder (saturated JPEG pixels left out)."""
    import rasterio
    from PIL import Image

    refl, units = [], []
    for tif in sorted((data_dir / "eurosat_ms").rglob("*.tif")):
        jpeg = data_dir / "eurosat_rgb" / tif.parent.name / f"{tif.stem}.jpg"
        if not jpeg.is_file():
            continue
        with rasterio.open(tif) as ds:  # file order B01..B12, B8A: B04, B03, B02 = 4, 3, 2
            refl.append(ds.read([4, 3, 2]).reshape(3, -1).astype(np.float64) / 10000)
        with Image.open(jpeg) as img:
            units.append(
                np.asarray(img.convert("RGB"), np.float64).transpose(2, 0, 1).reshape(3, -1)
            )
    r, u = np.concatenate(refl, axis=1), np.concatenate(units, axis=1)
    out = []
    for i, band in enumerate(BAND_SETS["rgb"]):
        keep = (u[i] > 0) & (u[i] < 255)
        design = np.stack([r[i][keep], np.ones(int(keep.sum()))], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, u[i][keep], rcond=None)
        out.append(
            BandScaling(band=band, scale=float(a), offset=float(b), clip_min=0, clip_max=255)
        )
    return tuple(out)


def train_rgb_model(
    data_dir: Path, *, per_class: int = 60, epochs: int = 15, seed: int = 0
) -> tuple[bytes, ModelCard, float]:
    """A small CNN trained on real EuroSAT RGB patches (seconds on a CPU), exported to ONNX with
    its card (fitted scaling, 10 m GSD, input reference): (onnx bytes, card, held-out accuracy).
    Needs torch (a dev dependency of the workspace)."""
    import io
    import warnings

    import onnx
    import torch
    from PIL import Image
    from torch import nn

    from eostream.inference.domain import input_reference

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    xs: list[np.ndarray[Any, Any]] = []
    test_x: list[np.ndarray[Any, Any]] = []
    ys: list[int] = []
    test_y: list[int] = []
    for i, cls in enumerate(EUROSAT_CLASSES):
        files = sorted((data_dir / "eurosat_rgb" / cls).glob("*.jpg"))
        step = max(1, len(files) // (per_class + 20))
        chosen = files[::step][: per_class + 20]
        for k, f in enumerate(chosen):
            with Image.open(f) as img:
                x = np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
            (xs if k < per_class else test_x).append(x)
            (ys if k < per_class else test_y).append(i)
    inputs = np.stack(xs)
    x_t, y_t = torch.tensor(inputs), torch.tensor(ys)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(4),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 32, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(32, len(EUROSAT_CLASSES)),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.features(x / 255.0)  # type: ignore[no-any-return]

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x_t))
        for b in range(0, len(x_t), 32):
            idx = perm[b : b + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x_t[idx]), y_t[idx]).backward()  # type: ignore[no-untyped-call]
            opt.step()
    net.eval()
    with torch.no_grad():
        predicted = net(torch.tensor(np.stack(test_x))).argmax(1).numpy()
    accuracy = float((predicted == np.array(test_y)).mean())
    card = ModelCard(
        name="tiny-trained-rgb",
        band_set="rgb",
        bands=BAND_SETS["rgb"],
        scaling=fit_rgb_scaling(data_dir),
        architecture="tiny_cnn",
        description=f"small CNN on {len(xs)} EuroSAT RGB patches (test helper)",
        gsd_m=10.0,
        input_reference=input_reference(inputs, source=f"{len(xs)} EuroSAT RGB patches"),
    )
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(2, 3, 64, 64),),
            buf,  # type: ignore[arg-type]
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
            dynamo=False,
        )
    proto = onnx.load_model_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, card.to_json()
    return bytes(proto.SerializeToString()), card, accuracy


EUROSAT = EUROSAT_CLASSES
__all__ = [
    "build_onnx",
    "build_small_cnn",
    "fit_rgb_scaling",
    "item_for_raster",
    "localise_item",
    "model_card",
    "train_rgb_model",
]
