"""Radiometric augmentation: per-patch haze and per-band gain jitter, active only in training.

EuroSAT is Level-1C (top of atmosphere); scenes served to the model are often Level-2A (surface
reflectance, atmospherically corrected). The difference is mostly path radiance: an additive
term that is largest in the blue and shrinks with wavelength (Rayleigh and aerosol scattering),
plus gain differences. On the Boadella L2A crops forest reads B02 0.017-0.029 where EuroSAT
L1C forest reads 0.083 (B08 about the same, 0.24-0.28 vs 0.27): a network that learned absolute
visible levels on L1C calls the dark L2A hills lake.

:class:`RadiometricJitter` subtracts ``h * HAZE[band]`` (one ``h ~ U(haze_min, haze_max)`` per
patch, so all bands of a patch see the same atmosphere) and multiplies each band by its own
``g ~ U(1 - gain, 1 + gain)``, then clips at zero reflectance. It is a module so it travels with
the network like dropout: identity in ``eval()`` (so the ONNX export and inference never see
it), random in ``train()``. It works in the model's input units: ``units_per_reflectance`` says
how many units one reflectance unit is per band (1 for MS, the fitted JPEG scale for RGB).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

#: typical L1C - L2A difference (path radiance) in reflectance at a clear-sky aerosol load, per
#: band; a rough Rayleigh + aerosol profile falling with wavelength, not fitted to any scene.
HAZE: dict[str, float] = {
    "B01": 0.09,
    "B02": 0.07,
    "B03": 0.045,
    "B04": 0.035,
    "B05": 0.03,
    "B06": 0.025,
    "B07": 0.02,
    "B08": 0.015,
    "B8A": 0.015,
    "B09": 0.01,
    "B10": 0.0,
    "B11": 0.005,
    "B12": 0.003,
}


class RadiometricJitter(nn.Module):
    """``x * g_band - h * haze_band`` per patch in training; identity in eval mode."""

    haze: torch.Tensor
    floor: torch.Tensor

    def __init__(
        self,
        bands: Sequence[str],
        units_per_reflectance: Sequence[float] | None = None,
        floor: Sequence[float] | None = None,
        haze_min: float = 0.0,
        haze_max: float = 1.2,
        gain: float = 0.15,
    ) -> None:
        super().__init__()
        unknown = [b for b in bands if b not in HAZE]
        if unknown:
            raise ValueError(f"no haze profile for band(s) {unknown}")
        if not 0 <= gain < 1 or haze_max < haze_min:
            raise ValueError("gain must be in [0, 1) and haze_max >= haze_min")
        units = list(units_per_reflectance or [1.0] * len(bands))
        if len(units) != len(bands):
            raise ValueError("one units_per_reflectance per band")
        haze = [HAZE[b] * u for b, u in zip(bands, units, strict=True)]
        # not persistent: the jitter is a training recipe, not part of the saved weights
        self.register_buffer(
            "haze", torch.tensor(haze, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "floor",
            torch.tensor(list(floor or [0.0] * len(bands)), dtype=torch.float32).view(1, -1, 1, 1),
            persistent=False,
        )
        self.haze_min, self.haze_max, self.gain = haze_min, haze_max, gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        n, c = x.shape[0], x.shape[1]
        h = torch.empty(n, 1, 1, 1, device=x.device).uniform_(self.haze_min, self.haze_max)
        g = torch.empty(n, c, 1, 1, device=x.device).uniform_(1 - self.gain, 1 + self.gain)
        return torch.maximum(x * g - h * self.haze, self.floor)


def jitter_for(
    bands: Sequence[str], scaling: Mapping[str, tuple[float, float]] | None = None
) -> RadiometricJitter:
    """The jitter for a band list; ``scaling[band] = (scale, offset)`` maps reflectance to the
    model's units (the ModelCard's scaling): the haze is scaled into units and the floor is
    zero reflectance in units."""
    scaling = scaling or {}
    units = [scaling.get(b, (1.0, 0.0))[0] for b in bands]
    floor = [scaling.get(b, (1.0, 0.0))[1] for b in bands]
    return RadiometricJitter(bands, units, [max(f, 0.0) for f in floor])


class CentreContext(nn.Module):
    """Teach a window classifier that its label is its centre's: in training, for a share ``p``
    of the batch, everything outside a random centre square (``min_size``..``max_size`` px) is
    replaced by another patch of the batch; the label stays the centre's. Identity in eval.

    Inference labels the centre ``stride x stride`` pixels of each 64x64 window with the
    window's class. EuroSAT patches are nearly homogeneous, so a plain EuroSAT model answers for
    the whole window: at a lake shore every window that holds some water becomes SeaLake and the
    lake grows by up to half a window (320 m) all round. With this augmentation the surround is
    context, not evidence, and the map follows the centre pixels.
    """

    def __init__(self, p: float = 0.7, min_size: int = 8, max_size: int = 32) -> None:
        super().__init__()
        if not 0 <= p <= 1 or not 1 <= min_size <= max_size:
            raise ValueError("p in [0, 1] and 1 <= min_size <= max_size")
        self.p, self.min_size, self.max_size = p, min_size, max_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] < 2:
            return x
        n, _, height, width = x.shape
        size = int(torch.randint(self.min_size, self.max_size + 1, (1,)))
        size = min(size, height, width)
        top, left = (height - size) // 2, (width - size) // 2
        chosen = torch.rand(n, device=x.device) < self.p
        if not bool(chosen.any()):
            return x
        # a derangement-free shift: every chosen patch takes its surround from another one
        donor = torch.roll(torch.arange(n, device=x.device), int(torch.randint(1, n, (1,))))
        out = torch.where(chosen.view(-1, 1, 1, 1), x[donor], x)
        rows, cols = slice(top, top + size), slice(left, left + size)
        out[:, :, rows, cols] = x[:, :, rows, cols]
        return out


class Chain(nn.Module):
    """Training-only input augmentations applied in order."""

    def __init__(self, *steps: nn.Module) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x


AUGMENTATIONS = ("radiometry", "centre")


def training_augmentation(
    names: Sequence[str],
    bands: Sequence[str],
    scaling: Mapping[str, tuple[float, float]] | None = None,
) -> nn.Module | None:
    """The training-only input augmentations ``names`` (``radiometry``, ``centre``) for a model
    taking ``bands`` (``scaling``: reflectance -> units per band), or None for none."""
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown input augmentation(s) {unknown}; choose from {AUGMENTATIONS}")
    steps: list[nn.Module] = []
    if "radiometry" in names:
        steps.append(jitter_for(bands, scaling))
    if "centre" in names:
        steps.append(CentreContext())
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else Chain(*steps)
