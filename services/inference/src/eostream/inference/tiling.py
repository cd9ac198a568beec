"""The window planner (pure): cover every pixel of a scene with model windows.

Windows of ``patch`` pixels step by ``stride``; each window labels only its centre
``stride x stride`` crop, so every pixel is labelled by exactly one window and overlapping
windows give the model context without any accumulation buffer. The image is reflect-padded by
``margin = (patch - stride) / 2`` on every side and rounded up to a whole number of strides, so
the last partial strip (10980 = 171 * 64 + 36) is classified too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Plan:
    height: int
    width: int
    patch: int
    stride: int

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError("the scene must have at least one pixel")
        if not 1 <= self.stride <= self.patch:
            raise ValueError("stride must be between 1 and the patch size")
        if (self.patch - self.stride) % 2:
            raise ValueError("patch - stride must be even so the centre crop is centred")

    @property
    def margin(self) -> int:
        return (self.patch - self.stride) // 2

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.stride)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.stride)

    @property
    def windows(self) -> int:
        return self.rows * self.cols

    def strips(self, rows_per_strip: int) -> list[tuple[int, int]]:
        """Window-row ranges ``[start, stop)`` processed together (one read each)."""
        step = max(1, rows_per_strip)
        return [(r, min(r + step, self.rows)) for r in range(0, self.rows, step)]

    def strip_pixels(self, start: int, stop: int) -> tuple[int, int]:
        """Source rows ``[top, bottom)`` a strip needs, before padding (may exceed the image)."""
        return start * self.stride - self.margin, stop * self.stride + self.margin

    def padded_width(self) -> int:
        return self.cols * self.stride + 2 * self.margin


def pad_block(
    block: npt.NDArray[np.float32], top: int, bottom: int, left: int, right: int
) -> npt.NDArray[np.float32]:
    """Reflect-pad the last two axes (edge-pad where the block is too small to reflect)."""
    if not (top or bottom or left or right):
        return block
    widths = [(0, 0)] * (block.ndim - 2) + [(top, bottom), (left, right)]
    h, w = block.shape[-2:]
    if max(top, bottom) < h and max(left, right) < w:
        return np.pad(block, widths, mode="reflect")
    return np.pad(block, widths, mode="edge")


def _reflect_index(pad: int, start: int, size: int, before: bool) -> npt.NDArray[np.intp]:
    """Indices (in the padded axis) that ``pad`` padded positions copy, reflecting (np.pad's
    "reflect") or repeating the edge when the data is too short to reflect."""
    j = np.arange(pad)
    if before:
        return start + (j[::-1] + 1 if pad < size else np.zeros(pad, np.intp))
    end = start + size
    return end - 2 - j if pad < size else np.full(pad, end - 1)


def reflect_fill(
    block: npt.NDArray[np.float32], top: int, bottom: int, left: int, right: int
) -> None:
    """Fill the pad margins of ``block`` in place from its interior, like :func:`pad_block`."""
    h = block.shape[-2] - top - bottom
    w = block.shape[-1] - left - right
    rows = slice(top, top + h)
    if left:
        block[..., rows, :left] = block[..., rows, _reflect_index(left, left, w, True)]
    if right:
        block[..., rows, left + w :] = block[..., rows, _reflect_index(right, left, w, False)]
    if top:
        block[..., :top, :] = block[..., _reflect_index(top, top, h, True), :]
    if bottom:
        block[..., top + h :, :] = block[..., _reflect_index(bottom, top, h, False), :]


def place_labels(labels: npt.NDArray[np.uint8], plan: Plan, n_rows: int) -> npt.NDArray[np.uint8]:
    """Per-window labels ``[n_rows*cols]`` -> pixel labels ``[n_rows*stride, cols*stride]``;
    per-window blocks of pixel labels ``[n_rows*cols, stride, stride]`` (a segmentation model's
    centres) are laid side by side into the same shape."""
    s = plan.stride
    if labels.ndim == 3:
        blocks = labels.reshape(n_rows, plan.cols, s, s)
        return np.ascontiguousarray(blocks.transpose(0, 2, 1, 3)).reshape(n_rows * s, -1)
    grid = labels.reshape(n_rows, plan.cols)
    return np.repeat(np.repeat(grid, s, axis=0), s, axis=1)
