"""torch -> ONNX: dynamic batch, ModelCard in the metadata, logits agree with torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eostream.shared.modelcard import BAND_SETS, ModelCard
from eostream.trainer.datasets import load_patches
from eostream.trainer.errors import ExportMismatchError
from eostream.trainer.export import check_onnx, export_onnx, onnx_logits, read_card
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
