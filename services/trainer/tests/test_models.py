"""Network shapes, built-in normalisation, widening RGB to 13 bands, and starting a model
from another (new bands, a new head, a classifier's encoder in a U-Net)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from eostream.shared.modelcard import BAND_SETS
from eostream.trainer import models
from eostream.trainer.models import (
    ARCHITECTURES,
    INDEX_ARCHITECTURES,
    SEGMENTATION_ARCHITECTURES,
    build_model,
    new_head,
    transfer_encoder,
    widen_input,
)
from eostream.trainer.scoring import confusion_matrix, per_class_scores


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("band_set", ["rgb", "ms13"])
def test_shapes(architecture: str, band_set: str) -> None:
    bands = BAND_SETS[band_set]
    if architecture in INDEX_ARCHITECTURES:  # it sees the four indices the 13 bands allow
        if band_set == "rgb":
            with pytest.raises(ValueError, match="allow no spectral index"):
                build_model(architecture, bands, [0.1] * 4, [0.05] * 4)
            return
        model = build_model(architecture, bands, [0.0] * 4, [0.5] * 4).eval()
    else:
        model = build_model(architecture, bands, [0.1] * len(bands), [0.05] * len(bands)).eval()
    with torch.no_grad():
        out = model(torch.rand(3, len(bands), 64, 64))
    # a segmentation network scores every class for every pixel
    per_pixel = (64, 64) if architecture in SEGMENTATION_ARCHITECTURES else ()
    assert out.shape == (3, 10, *per_pixel)
    if architecture in INDEX_ARCHITECTURES:  # it picks its bands by position: too few fail
        with pytest.raises(IndexError):
            model(torch.rand(1, 2, 64, 64))
        return
    with pytest.raises(RuntimeError):
        model(torch.rand(1, len(bands) + 1, 64, 64))


@pytest.mark.parametrize(
    ("architecture", "size"),
    [("resnet18", 64), ("resnet18_stride2", 32), ("resnet18_imagenet", 16)],
)
def test_resnet_stems_set_layer1_resolution(architecture: str, size: int) -> None:
    model = build_model(architecture, BAND_SETS["rgb"], [0.1] * 3, [0.05] * 3).eval()
    layer1 = model.backbone.layer1
    assert isinstance(layer1, torch.nn.Module)
    seen: list[torch.Size] = []

    def record(_module: torch.nn.Module, _inputs: object, out: torch.Tensor) -> None:
        seen.append(out.shape)

    layer1.register_forward_hook(record)
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    assert seen == [torch.Size([1, 64, size, size])]


def test_the_strided_centre_cnn_strides_its_first_layer_instead_of_pooling() -> None:
    """centre_cnn_stride2: the context's first convolution strides (a quarter of its work) and
    its max-pool goes; the second block sees the same 32x32 as centre_cnn's, the rest is equal."""
    shapes: dict[str, list[torch.Size]] = {}
    for architecture in ("centre_cnn", "centre_cnn_stride2"):
        model = build_model(architecture, BAND_SETS["ms13"], [0.1] * 13, [0.05] * 13).eval()
        context = list(model.backbone.get_submodule("context").children())
        convs = [m for m in context if isinstance(m, torch.nn.Conv2d)]
        seen = shapes.setdefault(architecture, [])
        convs[1].register_forward_hook(
            lambda _m, inputs, _o, seen=seen: seen.append(inputs[0].shape)
        )
        with torch.no_grad():
            model(torch.rand(2, 13, 64, 64))
        pools = [m for m in context if isinstance(m, torch.nn.MaxPool2d)]
        assert (convs[0].stride, len(pools)) == (
            ((2, 2), 3) if architecture == "centre_cnn_stride2" else ((1, 1), 4)
        )
    assert shapes["centre_cnn"] == shapes["centre_cnn_stride2"] == [torch.Size([2, 32, 32, 32])]
    with pytest.raises(ValueError, match="stem_stride is 1 or 2"):
        models._small_cnn(13, stem_stride=4)


def test_normalisation_is_inside_the_network() -> None:
    model = build_model("small_cnn", BAND_SETS["rgb"], [100.0, 90.0, 80.0], [20.0, 10.0, 5.0])
    x = torch.tensor([120.0, 90.0, 70.0]).view(1, 3, 1, 1).expand(1, 3, 64, 64)
    normalised = model.normalize(x)
    assert torch.allclose(normalised[0, :, 0, 0], torch.tensor([1.0, 0.0, -2.0]))
    assert "normalize.mean" in model.state_dict()  # saved with the weights


@pytest.mark.parametrize(
    "architecture", [a for a in ARCHITECTURES if a not in INDEX_ARCHITECTURES]
)  # an index network sees no RGB band: nothing to widen
def test_widening_preserves_rgb_outputs(architecture: str) -> None:
    torch.manual_seed(0)
    rgb = build_model(
        architecture, BAND_SETS["rgb"], [110.0, 100.0, 90.0], [40.0, 35.0, 30.0]
    ).eval()
    # the RGB model's units = a * reflectance + b (the fitted JPEG stretch)
    unit_map = {"B04": (900.0, 3.0), "B03": (905.0, 2.8), "B02": (915.0, 1.9)}
    ms_bands = BAND_SETS["ms13"]
    ms_mean = [0.12 + 0.01 * i for i in range(13)]
    ms_std = [0.04] * 13
    wide = widen_input(rgb, ms_bands, ms_mean, ms_std, unit_map=unit_map, init_std=0.05).eval()
    assert wide.first_conv.in_channels == 13 and wide.bands == ms_bands

    reflectance = torch.rand(4, 13, 64, 64) * 0.25
    for i, band in enumerate(ms_bands):  # bands the RGB model never saw sit at their mean
        if band not in unit_map:
            reflectance[:, i] = ms_mean[i]
    rgb_units = torch.stack(
        [reflectance[:, ms_bands.index(b)] * a + off for b, (a, off) in unit_map.items()], dim=1
    )
    with torch.no_grad():
        expected = rgb(rgb_units)
        got = wide(reflectance)
    assert torch.allclose(got, expected, atol=1e-3, rtol=1e-3)
    # and the new bands do matter once they move
    reflectance[:, ms_bands.index("B08")] += 0.3
    with torch.no_grad():
        assert not torch.allclose(wide(reflectance), expected, atol=1e-3)


def test_widening_refuses_missing_bands() -> None:
    rgb = build_model("small_cnn", BAND_SETS["rgb"], [0.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError, match="lacks"):
        widen_input(rgb, ("B02", "B03"), [0.0] * 2, [1.0] * 2)


def test_dropping_a_band_is_the_band_at_its_mean() -> None:
    """A 13-band (L1C) model narrowed to the 12 L2A bands: B10's filters go, which is what the
    old network computed with B10 at its mean."""
    torch.manual_seed(0)
    ms, l2a = BAND_SETS["ms13"], BAND_SETS["l2a"]
    mean, std = [0.1 + 0.01 * i for i in range(13)], [0.05] * 13
    old = build_model("small_cnn", ms, mean, std).eval()
    narrow = widen_input(old, l2a, [0.0] * 12, [1.0] * 12, drop_missing=True).eval()
    assert narrow.bands == l2a and narrow.first_conv.in_channels == 12
    x = torch.rand(3, 13, 64, 64) * 0.3
    x[:, ms.index("B10")] = mean[ms.index("B10")]
    with torch.no_grad():
        assert torch.allclose(narrow(x[:, [ms.index(b) for b in l2a]]), old(x), atol=1e-5)


@pytest.mark.parametrize("architecture", [a for a in ARCHITECTURES if a not in INDEX_ARCHITECTURES])
def test_a_new_head_keeps_the_rest(architecture: str) -> None:
    torch.manual_seed(0)
    bands = BAND_SETS["rgb"]
    model = build_model(architecture, bands, [0.1] * 3, [0.05] * 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new_head(model, 3, seed=1)
    size = 32 if architecture in SEGMENTATION_ARCHITECTURES else 64
    with torch.no_grad():
        out = model.eval()(torch.rand(2, 3, size, size))
    assert out.shape[1] == 3
    after = model.state_dict()
    changed = {k for k in before if k not in after or before[k].shape != after[k].shape}
    kept = [k for k in before if k not in changed]
    assert changed and all(torch.equal(before[k], after[k]) for k in kept)
    heads = {k.rsplit(".", 1)[0] for k in changed}
    assert len(heads) == (2 if architecture.startswith("centre_cnn") else 1), heads


@pytest.mark.parametrize("source", ["small_cnn", "centre_cnn"])
def test_a_classifiers_encoder_starts_a_u_net(source: str) -> None:
    """seg_small_cnn's encoder computes what the classifier's first three blocks did."""
    torch.manual_seed(0)
    bands = BAND_SETS["l2a"]
    mean, std = [0.1] * 12, [0.05] * 12
    classifier = build_model(source, bands, mean, std).eval()
    for module in classifier.modules():  # trained-looking BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    segmenter = build_model("seg_small_cnn", bands, [0.0] * 12, [1.0] * 12, num_classes=2)
    transfer_encoder(classifier, segmenter).eval()
    backbone: Any = classifier.backbone
    cnn = backbone if source == "small_cnn" else backbone.context
    x = torch.rand(2, 12, 32, 32) * 0.3
    with torch.no_grad():
        expected = cnn[:11](classifier.normalize(x))  # three blocks and the pools between
        unet: Any = segmenter.backbone
        got = unet.middle(unet.pool(unet.enc2(unet.pool(unet.enc1(segmenter.normalize(x))))))
    assert torch.allclose(got, expected, atol=1e-6)
    assert segmenter(x).shape == (2, 2, 32, 32)
    resnet = build_model("resnet18_imagenet", bands, mean, std)
    with pytest.raises(ValueError, match="starts from a small_cnn or centre_cnn"):
        transfer_encoder(resnet, segmenter)


def test_per_class_scores() -> None:
    truth = torch.tensor([0, 0, 1, 1, 2]).numpy()
    pred = torch.tensor([0, 1, 1, 1, 0]).numpy()
    matrix = confusion_matrix(truth, pred, classes=3)
    precision, recall = per_class_scores(matrix)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert precision.tolist() == [0.5, 2 / 3, 0.0]
    assert recall.tolist() == [0.5, 1.0, 0.0]


@pytest.mark.parametrize("architecture", models.MAP_ARCHITECTURES)
def test_the_map_output_is_the_sum_the_window_logits_average(architecture: str) -> None:
    """forward_map: the window's logits are forward's, and each pixel of the central block
    scores the context's logits plus its own local ones, so the mean over the central 8x8
    pixels gives the window's logits back (the map and the patch class are one model)."""
    bands = BAND_SETS["ms13"]
    torch.manual_seed(0)
    model = build_model(architecture, bands, [0.1] * len(bands), [0.05] * len(bands)).eval()
    x = torch.rand(3, len(bands), 64, 64) * 0.3
    with torch.no_grad():
        logits, pixels = model.forward_map(x, 32)
        expected = model(x)
    assert pixels.shape == (3, 10, 32, 32)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    centre = pixels[..., 12:20, 12:20].mean(dim=(2, 3))
    torch.testing.assert_close(centre, expected, rtol=1e-5, atol=1e-5)
    # the pixels differ where the local spectra do: not one score copied over the block
    assert float(pixels.std(dim=(2, 3)).min()) > 0
    with pytest.raises(ValueError, match="centre"):
        model.forward_map(x, 7)


def test_only_centre_networks_have_a_map_output() -> None:
    bands = BAND_SETS["rgb"]
    model = build_model("small_cnn", bands, [0.1] * 3, [0.05] * 3).eval()
    with pytest.raises(TypeError, match="no per-pixel map output"):
        model.forward_map(torch.zeros(1, 3, 64, 64), 32)
