"""Training-only input augmentations (radiometric haze/gain jitter, centre-context swaps) and the
centre_cnn network: identity in eval mode, so the ONNX export never contains them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eostream.shared.modelcard import BAND_SETS, ModelCard
from eostream.trainer.augment import (
    HAZE,
    CentreContext,
    Chain,
    RadiometricJitter,
    jitter_for,
    training_augmentation,
)
from eostream.trainer.export import check_onnx, export_onnx
from eostream.trainer.models import ARCHITECTURES, _CentreCNN, build_model, widen_input
from eostream.trainer.scaling import identity_scaling
from eostream.trainer.settings import TrainerSettings

MS = BAND_SETS["ms13"]


def ms_batch(n: int = 8) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(n, len(MS), 64, 64) * 0.3 + 0.05


def test_jitter_is_identity_in_eval_and_random_in_training() -> None:
    jitter = RadiometricJitter(MS)
    x = ms_batch()
    assert torch.equal(jitter.eval()(x), x)
    jitter.train()
    a, b = jitter(x), jitter(x)
    assert not torch.equal(a, x) and not torch.equal(a, b)
    assert float(a.min()) >= 0.0, "reflectance is clipped at zero"


def test_haze_darkens_blue_more_than_nir() -> None:
    """One haze draw per patch, scaled per band like path radiance (falls with wavelength)."""
    jitter = RadiometricJitter(MS, gain=0.0, haze_min=1.0, haze_max=1.0).train()
    x = torch.full((2, len(MS), 8, 8), 0.3)
    out = jitter(x)
    drop = {b: float(0.3 - out[0, i].mean()) for i, b in enumerate(MS)}
    assert drop["B02"] == pytest.approx(HAZE["B02"], abs=1e-6)
    assert drop["B02"] > drop["B03"] > drop["B04"] > drop["B08"] > drop["B11"] >= drop["B10"]


def test_jitter_works_in_model_units() -> None:
    """RGB models take JPEG units: haze scales by the fitted units per reflectance, the floor
    is zero reflectance in those units."""
    scaling = {"B04": (800.0, 5.0), "B03": (900.0, 3.0), "B02": (1000.0, -10.0)}
    jitter = jitter_for(BAND_SETS["rgb"], scaling)
    assert jitter.haze.flatten().tolist() == pytest.approx(
        [HAZE["B04"] * 800, HAZE["B03"] * 900, HAZE["B02"] * 1000]
    )
    assert jitter.floor.flatten().tolist() == [5.0, 3.0, 0.0]


def test_centre_context_keeps_the_centre_and_swaps_the_surround() -> None:
    swap = CentreContext(p=1.0, min_size=8, max_size=8).train()
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 2, 64, 64).clone()
    out = swap(x)
    assert torch.equal(out[:, :, 28:36, 28:36], x[:, :, 28:36, 28:36])
    border = out[:, 0, 0, 0]
    assert bool((border != x[:, 0, 0, 0]).all()), "every patch got another patch's surround"
    assert torch.equal(swap.eval()(x), x)


def test_training_augmentation_by_name() -> None:
    assert training_augmentation((), MS) is None
    assert isinstance(training_augmentation(("radiometry",), MS), RadiometricJitter)
    assert isinstance(training_augmentation(("radiometry", "centre"), MS), Chain)
    with pytest.raises(ValueError, match="unknown input augmentation"):
        training_augmentation(("haze",), MS)
    with pytest.raises(ValueError, match="no haze profile"):
        RadiometricJitter(("B99",))


def test_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINER_INPUT_AUGMENTATION", '["radiometry", "centre"]')
    settings = TrainerSettings(bus="memory")
    assert settings.input_augmentation == ("radiometry", "centre")


def test_model_jitter_runs_only_in_training() -> None:
    x = ms_batch(4)
    model = build_model("small_cnn", MS, [0.1] * len(MS), [0.1] * len(MS))
    plain = model.eval()(x)
    model.with_jitter(training_augmentation(("radiometry", "centre"), MS))
    assert torch.equal(model.eval()(x), plain)
    assert "jitter" not in "".join(model.state_dict()), "not part of the saved weights"


@pytest.mark.slow
def test_centre_cnn_exports_without_its_augmentation(tmp_path: Path) -> None:
    assert "centre_cnn" in ARCHITECTURES
    model = build_model(
        "centre_cnn",
        MS,
        [0.1] * len(MS),
        [0.1] * len(MS),
        jitter=training_augmentation(("radiometry", "centre"), MS),
    )
    card = ModelCard(name="t", band_set="ms13", bands=MS, scaling=identity_scaling("ms13"))
    export_onnx(model, card, tmp_path / "m.onnx")
    check = check_onnx(tmp_path / "m.onnx", model, ms_batch(4), 1e-3)
    assert check.argmax_agreement == 1.0


def test_centre_cnn_follows_its_centre_pixels() -> None:
    """The local branch sees only the central 8x8 (plus a 1 px margin): changing the surround
    changes only the context branch's share of the logits."""
    torch.manual_seed(0)
    model = build_model("centre_cnn", MS, [0.1] * len(MS), [0.1] * len(MS)).eval()
    backbone = model.backbone
    assert isinstance(backbone, _CentreCNN)
    x = ms_batch(2)
    y = x.clone()
    y[..., :20, :] = 0.0
    local = backbone.local
    with torch.no_grad():
        a = local(model.normalize(x)[..., 27:37, 27:37]).mean((2, 3))
        b = local(model.normalize(y)[..., 27:37, 27:37]).mean((2, 3))
    assert torch.allclose(a, b)
    rgb = build_model("centre_cnn", BAND_SETS["rgb"], [0.1] * 3, [0.1] * 3)
    wide = widen_input(rgb, MS, [0.1] * len(MS), [0.1] * len(MS))
    assert [c.in_channels for c in wide.input_convs] == [len(MS), len(MS)], "both branches"
    assert np.isfinite(model(x).detach().numpy()).all()
