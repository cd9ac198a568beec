"""Starting a ResNet-18 from a pretrained checkpoint file (ImageNet weights in torchvision form).

:func:`resolve_pretrained` turns a request's ``pretrained`` (a name of
:data:`eostream.shared.checkpoints.CHECKPOINTS`, downloaded beforehand with ``eostream data
checkpoint NAME``, or a local file) into a checked file and its sha256; nothing is downloaded
here. :func:`load_pretrained` copies the checkpoint's tensors into the model's backbone:

* every tensor but ``fc`` (the 1000-class head; ours is new, for the request's classes) must be
  there with the backbone's shape, else the request is refused (a state dict that does not fit);
* ``conv1`` is adapted to the bands: the RGB filters go to B04/B03/B02 (ImageNet channel order
  R, G, B); any other band gets the mean of the three, and with other than three bands every
  filter is scaled by 3/bands so the first layer's output keeps its size. A 3x3 stem
  (``resnet18``, ``resnet18_stride2``) does not fit the 7x7 ImageNet filters and is refused: use
  ``resnet18_imagenet``.

:func:`freeze_loaded` stops the gradients of what was loaded (everything but the head); the
lower backbone learning rate is :attr:`eostream.trainer.task.TrainConfig.backbone_lr_scale`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from eostream.shared.checkpoints import CHECKPOINTS, checkpoint_path
from eostream.shared.digest import file_sha256_hex as file_sha256
from eostream.trainer.errors import BadTrainingRequestError
from eostream.trainer.models import EuroSATNet

log = logging.getLogger(__name__)

#: ImageNet's input channels, as Sentinel-2 bands
RGB_CHANNELS = {"B04": 0, "B03": 1, "B02": 2}
PRETRAINED_ARCHITECTURES = ("resnet18_imagenet",)
HEAD = "fc."


@dataclass(frozen=True)
class PretrainedSource:
    label: str  # the registry name, or the file's path
    path: Path
    sha256: str

    @property
    def description(self) -> str:
        """What the run, the card and the MLM item record: ``label sha256:<hex>``."""
        return f"{self.label} sha256:{self.sha256}"


def resolve_pretrained(source: str) -> PretrainedSource:
    """The checkpoint file ``source`` names, checked; refuses with one line what is not one."""
    entry = CHECKPOINTS.get(source)
    if entry is not None:
        path = checkpoint_path(entry)
        if not path.is_file():
            raise BadTrainingRequestError(
                f"pretrained {source!r} is not downloaded; run `eostream data checkpoint {source}`"
            )
        digest = file_sha256(path)
        if not entry.accepts(digest):
            raise BadTrainingRequestError(
                f"pretrained {source!r}: {path} has sha256 {digest}, expected {entry.expected}; "
                f"delete it and run `eostream data checkpoint {source}` again"
            )
        return PretrainedSource(source, path, digest)
    path = Path(source).expanduser()
    if not path.is_file():
        raise BadTrainingRequestError(
            f"pretrained {source!r} is neither a known checkpoint ({sorted(CHECKPOINTS)}) "
            "nor an existing file"
        )
    try:
        digest = file_sha256(path)
    except OSError as exc:  # a file that cannot be read through (/proc/self/mem: EIO)
        raise BadTrainingRequestError(f"pretrained {source!r}: cannot be read ({exc})") from None
    return PretrainedSource(str(path.resolve()), path, digest)


def check_requested(source: str, folders: Sequence[Path]) -> None:
    """Refuse a requested ``pretrained`` file outside ``folders``: a request off the bus must not
    make the trainer read (and record the digest of) any file its machine holds. A name of
    :data:`CHECKPOINTS` is always allowed."""
    if source in CHECKPOINTS:
        return
    real = Path(os.path.realpath(Path(source).expanduser()))
    if not any(real.is_relative_to(os.path.realpath(folder)) for folder in folders):
        raise BadTrainingRequestError(
            f"pretrained {source!r}: a requested checkpoint file must lie in "
            f"{', '.join(str(f) for f in folders) or '(no folder)'} (TRAINER_PRETRAINED_DIRS), "
            f"or name one of {sorted(CHECKPOINTS)}"
        )


def read_state_dict(source: PretrainedSource) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (``weights_only``: a checkpoint file runs no code)."""
    try:
        state = torch.load(source.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise BadTrainingRequestError(
            f"pretrained {source.label}: not a torch state dict ({type(exc).__name__})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise BadTrainingRequestError(
            f"pretrained {source.label}: not a state dict of named tensors"
        )
    return state


def adapt_first_conv(weight: torch.Tensor, bands: tuple[str, ...]) -> torch.Tensor:
    """``[out, 3, k, k]`` RGB filters as ``[out, len(bands), k, k]`` (see the module doc)."""
    mean = weight.mean(dim=1)
    channels = [weight[:, RGB_CHANNELS[b]] if b in RGB_CHANNELS else mean for b in bands]
    adapted = torch.stack(channels, dim=1)
    return adapted if len(bands) == 3 else adapted * (3.0 / len(bands))


def load_pretrained(model: EuroSATNet, source: PretrainedSource) -> list[str]:
    """Copy ``source``'s tensors into ``model.backbone`` in place; the loaded names (without
    ``fc``). Refuses a checkpoint that does not fit the architecture."""
    if model.architecture not in PRETRAINED_ARCHITECTURES:
        raise BadTrainingRequestError(
            f"pretrained checkpoints fit {list(PRETRAINED_ARCHITECTURES)} (the 7x7 ImageNet "
            f"stem), not {model.architecture!r}"
        )
    state = read_state_dict(source)
    target = model.backbone.state_dict()
    problems: list[str] = []
    merged = dict(target)
    for key, tensor in target.items():
        if key.startswith(HEAD):
            continue
        if key not in state:
            problems.append(f"{key} missing")
            continue
        value = state[key]
        if key == "conv1.weight" and value.ndim == 4 and value.shape[1] == 3:
            value = adapt_first_conv(value, model.bands)
        if value.shape != tensor.shape:
            problems.append(f"{key} is {tuple(value.shape)}, expected {tuple(tensor.shape)}")
            continue
        merged[key] = value.to(tensor.dtype)
    extra = sorted(k for k in state if k not in target and not k.startswith(HEAD))
    if extra:
        problems.append(f"unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}")
    if problems:
        raise BadTrainingRequestError(
            f"pretrained {source.label} does not fit {model.architecture}: "
            + "; ".join(problems[:3])
            + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        )
    model.backbone.load_state_dict(merged)
    loaded = [k for k in target if not k.startswith(HEAD)]
    log.info("loaded %d tensors from %s", len(loaded), source.description)
    return loaded


def freeze_loaded(model: EuroSATNet) -> None:
    """Only the head trains: every backbone parameter but ``fc`` stops its gradient."""
    for name, parameter in model.backbone.named_parameters():
        if not name.startswith(HEAD):
            parameter.requires_grad_(False)
