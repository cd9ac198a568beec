"""Pretrained checkpoint files a training run can start from: the registry and the cache.

``eostream data checkpoint NAME`` downloads one once (its checksum checked, through the data
mirror if one is set) into :func:`checkpoint_path`; the trainer reads it from there and never
from a hub at run time. A request names a checkpoint of :data:`CHECKPOINTS` or a local file.

torchvision publishes only the first 8 hex digits of each weight file's sha256 (in the file
name; ``torch.hub`` checks exactly that prefix). The full sha256 of ``resnet18-f37072fd.pth``
could not be established here (no internet), so its entry holds the prefix and the check is
torchvision's own; an entry with a full ``sha256`` is checked on all 64 digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eostream.shared.settings import cache_root


@dataclass(frozen=True)
class Checkpoint:
    """One published weight file: a torchvision-format state dict for ``architecture``."""

    name: str
    url: str
    filename: str
    architecture: str
    description: str
    sha256_prefix: str
    sha256: str | None = None  # the full digest, where the publisher gives it

    def accepts(self, digest: str) -> bool:
        """Whether a file whose sha256 is ``digest`` is this checkpoint."""
        if self.sha256 is not None:
            return digest == self.sha256
        return digest.startswith(self.sha256_prefix)

    @property
    def expected(self) -> str:
        return self.sha256 or f"{self.sha256_prefix}... (torchvision's 8-digit prefix)"


CHECKPOINTS = {
    c.name: c
    for c in (
        Checkpoint(
            name="resnet18-imagenet",
            url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
            filename="resnet18-f37072fd.pth",
            architecture="resnet18",
            description="torchvision ResNet18_Weights.IMAGENET1K_V1 (ImageNet-1k, 69.8 % top-1)",
            sha256_prefix="f37072fd",
        ),
    )
}


def checkpoint_dir() -> Path:
    """``${EOSTREAM_CACHE:-~/.cache/eostream}/checkpoints``: outside any clone."""
    return cache_root() / "checkpoints"


def checkpoint_path(checkpoint: Checkpoint) -> Path:
    return checkpoint_dir() / checkpoint.filename
