"""The networks: a small CNN and three ResNet-18s for 64x64 patches, normalisation built in.

* ``small_cnn``: four conv blocks, ~0.3 M parameters; trains in minutes on two CPU cores.
* ``centre_cnn``: ``small_cnn`` for the window's context plus per-pixel logits of its central
  8x8 pixels (see :class:`_CentreCNN`): for maps, whose pixels are labelled by the window
  centred on them.
* ``centre_cnn_stride2``: ``centre_cnn`` whose context starts with a 3x3 stride-2 convolution
  (no max-pool after it): the first layer, which sees every band, costs a quarter (while int8
  files kept that layer fp32, until 2026-12-06, it mapped ~1.9x as fast in int8; now that it
  is int8 too, ``centre_cnn`` itself meets the int8 goals); its maps came out a little less
  right than ``centre_cnn``'s in most paired trainings (docs/maps-accuracy.md), so the demo
  keeps ``centre_cnn``.
* ``resnet18``: a 3x3 stride-1 stem and no max-pool, so layer1 sees all 64x64 pixels; the most
  accurate and ~16x the compute of ``resnet18_imagenet``: meant for a GPU.
* ``resnet18_stride2``: a 3x3 stride-2 stem and no max-pool, so layer1 sees 32x32; ~4x the
  compute of ``resnet18_imagenet``, the middle way for a CPU.
* ``resnet18_imagenet``: torchvision's ResNet-18 as built for ImageNet (7x7 stride-2 stem and
  max-pool: layer1 sees 16x16); the ResNet that trains on the full EuroSAT in an hour on a CPU.
* ``seg_unet``: a small U-Net for semantic segmentation: one class per pixel of the window
  (``[N, classes, P, P]``), trained on the per-pixel masks of a chip dataset;
  ``seg_unet_indices`` sees the spectral indices of the bands (:class:`SpectralIndices`, in the
  graph) instead of the bands.
* ``seg_small_cnn``: a U-Net whose encoder is ``small_cnn``'s first three blocks, so it can
  start from the encoder of a EuroSAT classifier (:func:`transfer_encoder`).

Every model is :class:`EuroSATNet`: a :class:`Normalize` layer (per-band mean and standard
deviation, in the model's input units) followed by a backbone. What goes in is each band in the
model's units (the ModelCard says which); what comes out is ``[N, classes]`` logits (the
EuroSAT 10 by default; a chip dataset's own class list with ``num_classes``).

:func:`widen_input` turns a model trained on some bands (RGB) into one that takes more (13 MS
bands): the old filters move to their bands' positions, the new bands' filters start small, and
the old bands' normalisation is rewritten for the new units, so on the old bands the widened
network computes what the old one did; with ``drop_missing`` it also drops bands the new list
lacks (the network sees them at their mean). :func:`new_head` gives a model a fresh output layer
for another class list; :func:`transfer_encoder` copies a ``small_cnn`` (or ``centre_cnn``)
classifier's convolutions into a ``seg_small_cnn``: fine-tuning from what exists.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import nn

from eostream.shared.modelcard import EUROSAT_CLASSES

ARCHITECTURES = (
    "small_cnn",
    "centre_cnn",
    "centre_cnn_stride2",
    "resnet18",
    "resnet18_stride2",
    "resnet18_imagenet",
    "seg_unet",
    "seg_unet_indices",
    "seg_small_cnn",
)
#: the networks that give one class per pixel (``[N, classes, P, P]``): trained on chip masks
SEGMENTATION_ARCHITECTURES = ("seg_unet", "seg_unet_indices", "seg_small_cnn")
#: the classifiers whose encoder :func:`transfer_encoder` moves into a ``seg_small_cnn``
ENCODER_SOURCES = ("small_cnn", "centre_cnn")
#: the networks that see the spectral indices of their bands (computed in the graph), not the
#: bands: band ratios carry over between dates where reflectance does not
INDEX_ARCHITECTURES = ("seg_unet_indices",)
#: the central pixels whose own spectra ``centre_cnn`` classifies (inference's stride 8 labels
#: the central 8x8 of each window)
CENTRE_CROP = 8
#: the networks whose ONNX graph has a second output, per-pixel scores of the window's central
#: :data:`~eostream.shared.modelcard.MAP_BLOCK` pixels (``map_output`` in the card)
MAP_ARCHITECTURES = ("centre_cnn", "centre_cnn_stride2")
NUM_CLASSES = len(EUROSAT_CLASSES)


class Normalize(nn.Module):
    """``(x - mean) / std`` per band; mean and std are buffers, saved with the weights."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError("mean and std must have one value per band")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def channels(self) -> int:
        return int(self.mean.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _small_cnn(
    in_channels: int, num_classes: int = NUM_CLASSES, stem_stride: int = 1
) -> nn.Sequential:
    """Four conv-BN-ReLU-pool blocks (64 -> 4 px) and a linear head: ~0.3 M parameters, cheap
    enough to train on two CPU cores. ``stem_stride=2``: the first block's convolution strides
    instead of its max-pool (same sizes after it, a quarter of its work)."""

    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride is 1 or 2, not {stem_stride}")

    def block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
        return [
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            *([nn.MaxPool2d(2)] if stride == 1 else []),
        ]

    return nn.Sequential(
        *block(in_channels, 32, stem_stride),  # 32x32
        *block(32, 64),  # 16x16
        *block(64, 128),  # 8x8
        *block(128, 128),  # 4x4
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(128, num_classes),
    )


class _CentreCNN(nn.Module):
    """``small_cnn`` on the whole window (context) plus per-pixel logits of the central
    ``crop`` x ``crop`` pixels (a 3x3 receptive field), averaged: the window's class follows
    the pixels it labels at inference, not only their 640 m surroundings. Train it with the
    ``centre`` augmentation so the context branch does not drown the centre."""

    def __init__(
        self,
        in_channels: int,
        crop: int = CENTRE_CROP,
        num_classes: int = NUM_CLASSES,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        self.crop = crop
        self.context = _small_cnn(in_channels, num_classes, stem_stride)
        self.local = nn.Sequential(
            nn.Conv2d(in_channels, 64, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, bias=False),  # valid: the crop plus a 1 px margin in
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self._local(x, self.crop).mean(dim=(2, 3))
        out: torch.Tensor = self.context(x) + local
        return out

    def forward_map(self, x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's logits ``[N, K]`` (as :meth:`forward`) and the per-pixel logits
        ``[N, K, block, block]`` of its central ``block`` x ``block`` pixels: the context's
        logits plus each pixel's own local logits, the same sum :meth:`forward` averages over
        the central ``crop`` pixels. One local pass over the block gives both."""
        if block < self.crop or (block - self.crop) % 2:
            raise ValueError(f"block {block} must hold the {self.crop} px centre, centred")
        local = self._local(x, block)
        inner = (block - self.crop) // 2
        centre = local[..., inner : inner + self.crop, inner : inner + self.crop]
        context = self.context(x)
        logits = context + centre.mean(dim=(2, 3))
        return logits, context[:, :, None, None] + local

    def _local(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """Local logits ``[N, K, size, size]`` of the central pixels (a 1 px margin read in)."""
        top = (x.shape[-2] - size) // 2 - 1
        left = (x.shape[-1] - size) // 2 - 1
        out: torch.Tensor = self.local(x[..., top : top + size + 2, left : left + size + 2])
        return out


def _resnet18(in_channels: int, stem: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    """torchvision's ResNet-18 with a stem for 64x64 patches: ``imagenet`` (7x7 stride 2 and
    max-pool, layer1 at 16x16), ``stride2`` (3x3 stride 2, layer1 at 32x32) or ``full`` (3x3
    stride 1, layer1 at 64x64)."""
    # imported here: torchvision's package import pulls in torch._dynamo and sympy (~5 s of CPU
    # at every trainer start on two cores), and only the ResNets need it
    import torchvision  # type: ignore[import-untyped]

    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if stem == "imagenet":
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    else:
        stride = 2 if stem == "stride2" else 1
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=stride, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return cast(nn.Module, net)


class SpectralIndices(nn.Module):
    """The bands ``[N, C, H, W]`` -> their spectral indices ``[N, k, H, W]``
    (:data:`eostream.shared.spectral.INDICES` that the bands allow, as the per-pixel models
    compute them), inside the network and so inside its ONNX graph: inference feeds bands."""

    def __init__(self, bands: Sequence[str]) -> None:
        super().__init__()
        from eostream.shared.spectral import EPSILON, indices_for

        pairs = indices_for(bands)
        if not pairs:
            raise ValueError(f"bands {tuple(bands)} allow no spectral index")
        self.a = [a for _, a, _ in pairs]
        self.b = [b for _, _, b in pairs]
        self.epsilon = EPSILON

    @property
    def channels(self) -> int:
        return len(self.a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, self.a], x[:, self.b]
        return (a - b) / (a + b + self.epsilon)


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]


class _UNet(nn.Module):
    """A small U-Net (two 2x down- and up-sampling levels, skip connections):
    ``[N, C, P, P] -> [N, classes, P, P]``, one score per class and pixel, for windows whose
    side is a multiple of 4 (chips of 32 px). ``seg_unet``: width 16, two convs a level (~0.12 M
    parameters). ``seg_small_cnn`` (``single_encoder``, width 32): each encoder level is one
    conv-BN-ReLU, ``small_cnn``'s first three blocks (32, 64 and 128 filters; ``enc1.0`` is
    ``small_cnn``'s ``0``), so a EuroSAT classifier's filters can start it (~0.3 M)."""

    def __init__(
        self, in_channels: int, num_classes: int, width: int = 16, single_encoder: bool = False
    ) -> None:
        super().__init__()

        def double(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(*_conv_bn_relu(c_in, c_out), *_conv_bn_relu(c_out, c_out))

        def encoder(c_in: int, c_out: int) -> nn.Sequential:
            return (
                nn.Sequential(*_conv_bn_relu(c_in, c_out))
                if single_encoder
                else double(c_in, c_out)
            )

        w = width
        self.enc1 = encoder(in_channels, w)  # P
        self.enc2 = encoder(w, 2 * w)  # P / 2
        self.middle = encoder(2 * w, 4 * w)  # P / 4
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = double(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = double(2 * w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    @property
    def encoder(self) -> list[nn.Sequential]:
        return [self.enc1, self.enc2, self.middle]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.middle(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        out: torch.Tensor = self.head(d1)
        return out


def _backbone(architecture: str, in_channels: int, num_classes: int = NUM_CLASSES) -> nn.Module:
    if architecture in ("seg_unet", "seg_unet_indices"):
        return _UNet(in_channels, num_classes)
    if architecture == "seg_small_cnn":
        return _UNet(in_channels, num_classes, width=32, single_encoder=True)
    if architecture == "small_cnn":
        return _small_cnn(in_channels, num_classes)
    if architecture in ("centre_cnn", "centre_cnn_stride2"):
        stride = 2 if architecture == "centre_cnn_stride2" else 1
        return _CentreCNN(in_channels, num_classes=num_classes, stem_stride=stride)
    stems = {"resnet18": "full", "resnet18_stride2": "stride2", "resnet18_imagenet": "imagenet"}
    return _resnet18(in_channels, stems[architecture], num_classes)


class EuroSATNet(nn.Module):
    def __init__(
        self,
        architecture: str,
        bands: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}"
            )
        self.architecture = architecture
        self.bands = tuple(bands)
        # what the backbone sees: the bands, or (INDEX_ARCHITECTURES) their spectral indices
        indices = SpectralIndices(bands) if architecture in INDEX_ARCHITECTURES else None
        self.features: nn.Module | None = indices
        seen = len(bands) if indices is None else indices.channels
        if seen != len(mean):
            raise ValueError(f"one mean and std per input feature ({seen})")
        self.normalize = Normalize(mean, std)
        self.backbone = _backbone(architecture, seen, num_classes)
        self.jitter: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # training-only input augmentation (identity in eval); getattr: older pickles lack it
        jitter = getattr(self, "jitter", None)
        if jitter is not None and self.training:
            x = jitter(x)
        features = getattr(self, "features", None)
        if features is not None:
            x = features(x)
        out: torch.Tensor = self.backbone(self.normalize(x))
        return out

    def forward_map(self, x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A ``centre_cnn``'s two outputs (eval only, no jitter): the window's logits and the
        per-pixel logits of its central ``block`` pixels (:meth:`_CentreCNN.forward_map`)."""
        if not isinstance(self.backbone, _CentreCNN):
            raise TypeError(f"{self.architecture} has no per-pixel map output")
        features = getattr(self, "features", None)
        if features is not None:
            x = features(x)
        return self.backbone.forward_map(self.normalize(x), block)

    def with_jitter(self, jitter: nn.Module | None) -> EuroSATNet:
        """Attach (or with None remove) a training-only input augmentation, e.g.
        :class:`~eostream.trainer.augment.RadiometricJitter`; returns self."""
        self.jitter = jitter
        return self

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.input_convs[0]

    @property
    def input_convs(self) -> list[nn.Conv2d]:
        """Every conv that reads the input bands (``centre_cnn`` has two branches)."""
        convs = [getattr(parent, name) for parent, name in self._input_conv_slots()]
        for conv in convs:
            if not isinstance(conv, nn.Conv2d):
                raise TypeError(f"first layer of {self.architecture} is {type(conv).__name__}")
        return convs

    def _input_conv_slots(self) -> list[tuple[nn.Module, str]]:
        if isinstance(self.backbone, _CentreCNN):
            return [(self.backbone.context, "0"), (self.backbone.local, "0")]
        if self.architecture in SEGMENTATION_ARCHITECTURES:
            return [(cast(_UNet, self.backbone).enc1, "0")]
        return [(self.backbone, "0" if self.architecture == "small_cnn" else "conv1")]


def build_model(
    architecture: str,
    bands: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    jitter: nn.Module | None = None,
    num_classes: int = NUM_CLASSES,
) -> EuroSATNet:
    """``num_classes`` outputs: EuroSAT's 10 by default, a chip dataset's class count else."""
    return EuroSATNet(architecture, bands, mean, std, num_classes).with_jitter(jitter)


def widen_input(
    model: EuroSATNet,
    bands: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    unit_map: Mapping[str, tuple[float, float]] | None = None,
    init_std: float = 1e-3,
    seed: int = 0,
    drop_missing: bool = False,
) -> EuroSATNet:
    """A copy of ``model`` that takes ``bands``; ``model``'s bands must all be among them, or
    with ``drop_missing`` those that are not are dropped: their filters go, which is what the
    old network computed with those bands at their mean (normalised 0).

    ``mean``/``std`` normalise the new bands (in the new units). ``unit_map[band] = (a, b)`` says
    how the new units map to the old model's units for an old band (``old = a * new + b``); the
    old normalisation is rewritten through it, so for inputs whose new-only bands sit at their
    mean the widened network's logits equal the old network's on the mapped old bands.
    """
    if getattr(model, "features", None) is not None:  # its normalisation is of indices
        if tuple(bands) != model.bands:
            raise ValueError(f"{model.architecture} sees its bands' indices: they cannot change")
        return copy.deepcopy(model)
    missing = [b for b in model.bands if b not in bands]
    if missing and not drop_missing:
        raise ValueError(f"cannot widen: the new band list lacks {missing}")
    unit_map = unit_map or {}
    new = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    new_mean, new_std = list(mean), list(std)
    kept = [(i, band) for i, band in enumerate(model.bands) if band in bands]
    for old_index, band in kept:
        index = list(bands).index(band)
        a, b = unit_map.get(band, (1.0, 0.0))
        old_mean = float(model.normalize.mean[0, old_index, 0, 0])
        old_std = float(model.normalize.std[0, old_index, 0, 0])
        # (a*x + b - m) / s == (x - (m - b)/a) / (s/a)
        new_mean[index] = (old_mean - b) / a
        new_std[index] = old_std / a
    for old_conv, (parent, name) in zip(model.input_convs, new._input_conv_slots(), strict=True):
        conv = nn.Conv2d(
            len(bands),
            old_conv.out_channels,
            cast(tuple[int, int], old_conv.kernel_size),
            stride=cast(tuple[int, int], old_conv.stride),
            padding=cast(tuple[int, int], old_conv.padding),
            bias=old_conv.bias is not None,
        )
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * init_std)
            for old_index, band in kept:
                conv.weight[:, list(bands).index(band)] = old_conv.weight[:, old_index]
            if old_conv.bias is not None and conv.bias is not None:
                conv.bias.copy_(old_conv.bias)
        setattr(parent, name, conv)
    new.normalize = Normalize(new_mean, new_std)
    new.bands = tuple(bands)
    return new


def output_layers(model: EuroSATNet) -> list[tuple[nn.Module, str]]:
    """The (parent, name) of every layer that gives class scores: the head(s)."""
    backbone = model.backbone
    if isinstance(backbone, _CentreCNN):
        return [(backbone.context, str(len(backbone.context) - 1)), (backbone.local, "6")]
    if isinstance(backbone, _UNet):
        return [(backbone, "head")]
    if isinstance(backbone, nn.Sequential):  # small_cnn
        return [(backbone, str(len(backbone) - 1))]
    return [(backbone, "fc")]  # the ResNets


def new_head(model: EuroSATNet, num_classes: int, seed: int = 0) -> EuroSATNet:
    """``model`` (changed in place, and returned) with freshly initialised output layers for
    ``num_classes`` classes: fine-tuning a model for another class list keeps everything
    else it learnt."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for parent, name in output_layers(model):
            old = getattr(parent, name)
            if isinstance(old, nn.Linear):
                setattr(parent, name, nn.Linear(old.in_features, num_classes))
            elif isinstance(old, nn.Conv2d):
                setattr(parent, name, nn.Conv2d(old.in_channels, num_classes, 1))
            else:
                raise TypeError(f"the head of {model.architecture} is {type(old).__name__}")
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def transfer_encoder(classifier: EuroSATNet, segmenter: EuroSATNet) -> EuroSATNet:
    """Copy a ``small_cnn`` (or ``centre_cnn``'s context) classifier's first three blocks and
    its normalisation into ``segmenter``, a ``seg_small_cnn`` on the same bands; returns it.
    The decoder and the head keep their initial weights."""
    if classifier.architecture not in ENCODER_SOURCES:
        raise ValueError(
            f"a seg_small_cnn starts from a {' or '.join(ENCODER_SOURCES)} classifier, "
            f"not a {classifier.architecture}"
        )
    if segmenter.architecture != "seg_small_cnn":
        raise ValueError(f"only a seg_small_cnn takes a classifier's encoder, not a "
                         f"{segmenter.architecture}")  # fmt: skip
    if classifier.bands != segmenter.bands:
        raise ValueError(f"bands differ: {classifier.bands} and {segmenter.bands}")
    cnn = classifier.backbone
    if isinstance(cnn, _CentreCNN):
        cnn = cnn.context
    source = cast(nn.Sequential, cnn)
    target = cast(_UNet, segmenter.backbone)
    for level, block in enumerate(target.encoder):  # small_cnn: conv, BN, ReLU, pool per level
        for offset in (0, 1):
            block[offset].load_state_dict(source[4 * level + offset].state_dict())
    segmenter.normalize.load_state_dict(classifier.normalize.state_dict())
    return segmenter
