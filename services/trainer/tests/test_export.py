"""torch -> ONNX: dynamic batch, ModelCard in the metadata, logits agree with torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eostream.shared.modelcard import BAND_SETS, INPUT_NAME, OUTPUT_NAME, ModelCard
from eostream.trainer.datasets import load_patches
from eostream.trainer.errors import ExportMismatchError
from eostream.trainer.export import (
    check_onnx,
    compare_onnx,
    export_onnx,
    onnx_logits,
    read_card,
)
from eostream.trainer.models import build_model
from eostream.trainer.scaling import identity_scaling
from eostream.trainer.selection import SelectionSpec, select


def test_onnx_agrees_with_torch_on_real_patches(ms_table, data_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    selection = select(ms_table, SelectionSpec("ms13", samples_per_class=12, seed=3))
    patches = load_patches(data_dir, "ms13", selection.patches[:20])
    bands = BAND_SETS["ms13"]
    torch.manual_seed(0)
    model = build_model(
        "small_cnn", bands, patches.x.mean((0, 2, 3)).tolist(), patches.x.std((0, 2, 3)).tolist()
    )
    card = ModelCard(
        name="t",
        band_set="ms13",
        bands=bands,
        scaling=identity_scaling("ms13"),
        architecture="small_cnn",
        training_data_digest=selection.digest,
    )
    path = tmp_path / "model.onnx"
    sha = export_onnx(model, card, path)
    assert len(sha) == 64 and not list(tmp_path.glob("*.data"))  # one self-contained file
    assert read_card(path) == card
    check = check_onnx(path, model, patches.x, tolerance=1e-3)
    assert check.argmax_agreement == 1.0 and check.max_abs_diff < 1e-3
    for batch in (1, 7):  # the batch dimension is dynamic
        assert onnx_logits(path, patches.x[:batch].numpy()).shape == (batch, 10)

    # a model that differs from the export is caught
    backbone = model.backbone
    assert isinstance(backbone, torch.nn.Sequential)
    head = backbone[-1]  # small_cnn: its last layer is the classifier
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        head.bias.add_(torch.linspace(0, 5, 10))
    with pytest.raises(ExportMismatchError, match="disagrees"):
        check_onnx(path, model, patches.x, tolerance=1e-3)
    assert np.isfinite(onnx_logits(path, patches.x.numpy())).all()


def test_the_tolerance_grows_with_the_logits(tmp_path: Path) -> None:
    """float32 rounding is relative: logits of ~2000 may differ by 2e-3 in ONNX, logits of ~1
    may not."""
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAME])],
        "identity",
        [value(INPUT_NAME, TensorProto.FLOAT, ["batch", 10])],
        [value(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 10])],
    )
    path = tmp_path / "identity.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, str(path))
    x = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
    x[:, 0] += 10.0  # one clear winner a row: the argmaxes agree throughout

    large = compare_onnx(path, x * 200 + 2e-3, x * 200, 1e-3, "torch")
    assert large.max_abs_diff == pytest.approx(2e-3, rel=0.1) and large.argmax_agreement == 1.0
    with pytest.raises(ExportMismatchError, match=r"tolerance 0\.001 x 1, the largest"):
        compare_onnx(path, x / 20 + 2e-3, x / 20, 1e-3, "torch")
    # a diverged model: NaN logits on both sides compare as no difference (NaN > tolerance is
    # False) and every argmax agrees, so it passed and was registered
    nan = np.full_like(x, np.nan)
    with pytest.raises(ExportMismatchError, match="NaN or infinite"):
        compare_onnx(path, nan, nan, 1e-3, "torch")


def test_a_centre_cnn_exports_its_per_pixel_map_output_beside_its_logits(tmp_path: Path) -> None:
    """The card the trainer writes for a centre_cnn names a second output, per-pixel logits of
    each window's central 32x32 pixels; the graph has both, follows the ONNX contract with
    that card, and both outputs agree with torch (check_onnx compares each)."""
    from eostream.shared.modelcard import MAP_BLOCK, MAP_OUTPUT_NAME
    from eostream.shared.onnx_contract import graph_problems
    from eostream.trainer.cards import map_fields

    bands = BAND_SETS["ms13"]
    torch.manual_seed(0)
    model = build_model("centre_cnn", bands, [0.1] * len(bands), [0.05] * len(bands))
    card = ModelCard(
        name="centre",
        band_set="ms13",
        bands=bands,
        scaling=identity_scaling("ms13"),
        architecture="centre_cnn",
        **map_fields("centre_cnn", 64),
    )
    assert (card.map_output, card.map_block) == (MAP_OUTPUT_NAME, MAP_BLOCK)
    path = tmp_path / "centre.onnx"
    export_onnx(model, card, path)
    x = torch.rand(5, len(bands), 64, 64) * 0.3
    check = check_onnx(path, model, x, tolerance=1e-4)
    assert check.argmax_agreement == 1.0

    import onnxruntime as ort

    from eostream.inference.model import graph_facts

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME, MAP_OUTPUT_NAME]
    assert graph_problems(graph_facts(session), card) == []
    pixels = onnx_logits(path, x.numpy(), output=MAP_OUTPUT_NAME)
    with torch.no_grad():
        expected = model.forward_map(x, MAP_BLOCK)[1].numpy()
    assert pixels.shape == (5, 10, MAP_BLOCK, MAP_BLOCK)
    assert np.abs(pixels - expected).max() < 1e-4
    # a small_cnn (no map output) and chips too small for the block and its margin: none
    assert map_fields("small_cnn", 64) == {} and map_fields("centre_cnn", 32) == {}
    # chips whose side leaves an odd margin around the block (35 px): no map output, and the
    # card is valid (it used to be refused, failing the training before it started)
    assert map_fields("centre_cnn", 35) == {}
    odd = card.model_copy(update={"patch_size": 35, "map_output": None, "map_block": None})
    ModelCard.model_validate({**odd.model_dump(), **map_fields("centre_cnn", 35)})
    assert map_fields("centre_cnn", 36) == {"map_output": MAP_OUTPUT_NAME, "map_block": MAP_BLOCK}
