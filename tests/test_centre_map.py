"""A ``centre_cnn``'s map labels every pixel on its own: the trainer exports its per-pixel map
output (the central 32x32 of each window: the window's context logits plus each pixel's local
ones) and inference, at its default stride, labels each window's centre from it. Exported by
the trainer's own exporter, run by inference's own engine, checked against the torch network
tiled the way the engine tiles; a stride the block cannot hold falls back to one class per
window."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch

from eostream.inference.engine import classify, plan_for
from eostream.inference.model import ModelInfo, load_model
from eostream.inference.settings import DEFAULT_STRIDE
from eostream.inference.tiling import pad_block
from eostream.shared.modelcard import BAND_SETS, MAP_BLOCK, ModelCard
from eostream.trainer.cards import map_fields
from eostream.trainer.export import export_onnx
from eostream.trainer.models import EuroSATNet, build_model
from eostream.trainer.scaling import identity_scaling

BANDS = BAND_SETS["ms13"]


class ArrayReader:
    """A scene already in model units ``[C, H, W]``, every pixel valid."""

    def __init__(self, image: npt.NDArray[np.float32]) -> None:
        self.image = image
        self.height, self.width = image.shape[1:]

    def read_into(
        self, top: int, bottom: int, out: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.bool_]:
        out[...] = self.image[:, top:bottom]
        return np.zeros((bottom - top, self.width), bool)


def scene(height: int, width: int) -> npt.NDArray[np.float32]:
    """Smooth fields with sharp-edged patches (a lake, fields): classes change inside windows."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((len(BANDS), height, width), np.float32)
    for c in range(len(BANDS)):
        image[c] = 0.15 + 0.1 * np.sin(x / (7 + c) + c) * np.cos(y / (11 + c))
    image[:, 20:55, 30:70] *= rng.uniform(0.2, 1.8, (len(BANDS), 1, 1))  # a lake-like patch
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    return image


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> tuple[EuroSATNet, ModelCard, bytes]:
    torch.manual_seed(3)
    model = build_model("centre_cnn", BANDS, [0.15] * len(BANDS), [0.06] * len(BANDS)).eval()
    card = ModelCard(
        name="centre",
        band_set="ms13",
        bands=BANDS,
        scaling=identity_scaling("ms13"),
        architecture="centre_cnn",
        **map_fields("centre_cnn", 64),
    )
    path = tmp_path_factory.mktemp("centre") / "model.onnx"
    export_onnx(model, card, path)
    return model, card, path.read_bytes()


def torch_map(
    model: EuroSATNet, card: ModelCard, image: npt.NDArray[np.float32], stride: int
) -> np.ndarray:
    """The torch network's per-pixel classes, windows laid out as the engine lays them."""
    height, width = image.shape[1:]
    plan = plan_for(card, height, width, stride)
    m = plan.margin
    padded = pad_block(image, m, plan.rows * stride + m - height, m, plan.cols * stride + m - width)
    windows = np.stack(
        [
            padded[:, r * stride : r * stride + 64, c * stride : c * stride + 64]
            for r in range(plan.rows)
            for c in range(plan.cols)
        ]
    )
    with torch.no_grad():
        pixels = model.forward_map(torch.from_numpy(windows), MAP_BLOCK)[1].numpy()
    inner = (MAP_BLOCK - stride) // 2
    labels = pixels[:, :, inner : inner + stride, inner : inner + stride].argmax(1)
    blocks = labels.reshape(plan.rows, plan.cols, stride, stride).transpose(0, 2, 1, 3)
    whole: np.ndarray = blocks.reshape(plan.rows * stride, plan.cols * stride)
    return whole[:height, :width]


@pytest.mark.parametrize("stride", [DEFAULT_STRIDE, 16])
def test_each_pixel_of_a_window_centre_gets_its_own_class(
    centre: tuple[EuroSATNet, ModelCard, bytes], stride: int
) -> None:
    model, card, onnx = centre
    loaded = load_model(
        onnx, ModelInfo("centre", "1"), expected_sha256=None, providers=("CPUExecutionProvider",)
    )
    assert loaded.map_block_for(stride) == MAP_BLOCK
    image = scene(100, 90)  # not whole windows: the last strip and column are partial
    got = classify(ArrayReader(image), loaded, plan_for(card, 100, 90, stride), batch_size=7)
    expected = torch_map(model, card, image, stride)
    assert (got.labels == expected).mean() > 0.999
    # not one class a stride x stride cell: pixels inside a cell differ
    cells = got.labels[: 96 // stride * stride, :64].reshape(96 // stride, stride, -1, stride)
    assert any(len(np.unique(cells[i, :, j])) > 1 for i in range(len(cells)) for j in range(2))


def test_a_stride_wider_than_the_block_labels_each_window_with_its_class(
    centre: tuple[EuroSATNet, ModelCard, bytes],
) -> None:
    _, card, onnx = centre
    loaded = load_model(
        onnx, ModelInfo("centre", "1"), expected_sha256=None, providers=("CPUExecutionProvider",)
    )
    assert loaded.map_block_for(64) is None and loaded.map_block_for(48) is None
    got = classify(ArrayReader(scene(128, 128)), loaded, plan_for(card, 128, 128, 64))
    for r in (0, 64):
        for c in (0, 64):
            assert len(np.unique(got.labels[r : r + 64, c : c + 64])) == 1


def test_the_block_is_inference_s_default_stride() -> None:
    """The trainer's block and inference's stride are one figure: at the defaults every window
    labels its 32x32 centre from the per-pixel output, none is computed for nothing."""
    assert MAP_BLOCK == DEFAULT_STRIDE
