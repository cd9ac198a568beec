"""Sliding-window classification of a whole scene.

Strips of window rows are read by one background thread (big blocks, one read per band per
strip) while the model runs on the previous strip; windows are cut from the strip in memory as
strided views and batched. Each window labels its centre ``stride x stride`` crop (see
:mod:`eostream.inference.tiling`), so every pixel is labelled exactly once. A pixel model
(``card.task == "pixel"``) runs on a plan of 1x1 windows at stride 1: each batch is ``[N, C]``
band vectors, one per pixel, and confidence, the out-of-domain check and placement work as
for windows (:func:`plan_for`). A patch model whose card has a map output (``centre_cnn``)
labels the centre pixels of each window one by one from that output's per-pixel scores when the
stride fits in its block (the default stride does), else with the window's class. A segmentation
model (``card.task == "segmentation"``) gives a
class score for every pixel of its window: windows overlap by half (stride ``patch / 2``) and
each keeps the scores of its centre ``stride x stride`` pixels, so every pixel is labelled once,
by the window it is central in, with at least ``patch / 4`` pixels of context on every side
(the window edges, where zero padding inside the network shows, are never used: no seams).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from eostream.inference.domain import DomainCheck, SceneConfidence
from eostream.inference.model import LoadedModel
from eostream.inference.tiling import Plan, place_labels, reflect_fill
from eostream.shared import ort_session
from eostream.shared.modelcard import ModelCard

log = logging.getLogger(__name__)
NODATA = 255
#: Pixels the model does not know: top-class probability below the threshold, or a window
#: outside the training domain. Classes are 0..N-1 (N <= 254) and 255 is nodata, so the value
#: next to nodata stays clear of any class index a bigger model could add.
UNCERTAIN = 254
#: bits of the per-pixel reason map
LOW_CONFIDENCE, OUT_OF_DOMAIN = 1, 2


class StripReader(Protocol):
    height: int
    width: int

    def read_into(
        self, top: int, bottom: int, out: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.bool_]:
        """Write rows ``[top, bottom)`` in model units into ``out`` ``[C, rows, width]``;
        return the invalid mask ``[rows, width]``."""


class StripSink(Protocol):
    """Where :func:`classify_strips` puts each strip's pixels (in order, top to bottom)."""

    def write(
        self, top: int, labels: npt.NDArray[np.uint8], probabilities: npt.NDArray[np.uint8] | None
    ) -> None:
        """Rows ``[top, top + len(labels))``: labels ``[rows, width]`` and, when asked for,
        probabilities ``[classes, rows, width]`` (probability * 254, 255 = nodata)."""


#: Called after each strip with (image rows done, image rows in all, windows per second).
OnProgress = Callable[[int, int, float], None]


@dataclass
class Run:
    """What a classification did, without its pixels (those went to the sink)."""

    height: int
    width: int
    windows: int
    seconds: float
    read_wait_seconds: float
    compute_seconds: float
    confidence: SceneConfidence | None = None

    @property
    def pixels(self) -> int:
        return self.height * self.width


@dataclass
class Classification:
    labels: npt.NDArray[np.uint8]
    probabilities: npt.NDArray[np.uint8] | None
    windows: int
    seconds: float
    read_wait_seconds: float
    compute_seconds: float
    confidence: SceneConfidence | None = None

    @property
    def pixels(self) -> int:
        return int(self.labels.size)


class ArraySink:
    """Keeps the whole map in memory (small scenes, tests, evaluation)."""

    def __init__(self, height: int, width: int, classes: int, probabilities: bool) -> None:
        self.labels = np.full((height, width), NODATA, np.uint8)
        self.probabilities = np.zeros((classes, height, width), np.uint8) if probabilities else None

    def write(
        self, top: int, labels: npt.NDArray[np.uint8], probabilities: npt.NDArray[np.uint8] | None
    ) -> None:
        self.labels[top : top + len(labels)] = labels
        if self.probabilities is not None and probabilities is not None:
            self.probabilities[:, top : top + len(labels)] = probabilities


@dataclass
class _Strip:
    start: int
    stop: int
    data: npt.NDArray[np.float32]
    invalid: npt.NDArray[np.bool_]
    top: int


def window_view(strip: npt.NDArray[np.float32], plan: Plan, n_rows: int) -> npt.NDArray[np.float32]:
    """``[C, rows, cols]`` strip -> read-only view ``[n_rows, plan.cols, C, patch, patch]``."""
    c = strip.shape[0]
    s0, s1, s2 = strip.strides
    return np.lib.stride_tricks.as_strided(
        strip,
        shape=(n_rows, plan.cols, c, plan.patch, plan.patch),
        strides=(plan.stride * s1, plan.stride * s2, s0, s1, s2),
        writeable=False,
    )


def batches(view: npt.NDArray[np.float32], batch_size: int) -> list[tuple[int, int]]:
    """Split the strip's windows into near-equal batches of at most ``batch_size``."""
    total = view.shape[0] * view.shape[1]
    count = -(-total // batch_size)
    size = -(-total // count)
    return [(i, min(i + size, total)) for i in range(0, total, size)]


def gather(view: npt.NDArray[np.float32], start: int, end: int) -> npt.NDArray[np.float32]:
    """Windows ``[start, end)`` (row-major over the strip) as one contiguous batch."""
    cols = view.shape[1]
    pieces = []
    k = start
    while k < end:
        r, c = divmod(k, cols)
        e = min(end, (r + 1) * cols)
        pieces.append(view[r, c : c + (e - k)])
        k = e
    return np.concatenate(pieces) if len(pieces) > 1 else np.ascontiguousarray(pieces[0])


def plan_for(card: ModelCard, height: int, width: int, stride: int) -> Plan:
    """The window plan of a scene for ``card``'s model: ``stride`` for a patch model, every
    pixel on its own (patch 1, stride 1) for a pixel model."""
    if card.task == "pixel":
        return Plan(height, width, 1, 1)
    if card.task == "segmentation":
        return Plan(height, width, card.patch_size, segmentation_stride(card.patch_size))
    return Plan(height, width, card.patch_size, stride)


def segmentation_stride(patch: int) -> int:
    """A segmentation model's stride: about half its window, so each window's kept centre has
    ``patch // 4`` pixels of context on every side (32 -> 16, margin 8)."""
    return patch - 2 * (patch // 4)


#: windows per model call when ``INFERENCE_BATCH_SIZE`` is 0, by execution provider. On the CPU
#: a batch whose activations stay nearer the caches: a full 10980 x 10980 tile on 2 cores
#: (benchmarks/inference/bench_full_tile.py, 2026-12-04) took the int8 small_cnn 31.3 s at 64
#: against 34.3 s at 256, fp32 57.9 s against 57.2 s, and peak RSS fell from 912 to 532 MiB.
#: On a GPU (an H200, 2026-12-04) the same tile's fp32 run took 10.2, 10.8 and 9.6 s at 256, 1024
#: and 4096: the reading and writing bound it, and peak RSS grew with the batch (1136 to 1496 MiB).
PROVIDER_BATCH = {ort_session.CPU: 64}
DEFAULT_BATCH = 256


def batch_for(
    card: ModelCard, batch_size: int, pixel_batch_size: int, provider: str = ort_session.CPU
) -> int:
    """Windows per model call: ``pixel_batch_size`` band vectors for a pixel model, else
    ``batch_size`` windows, or with 0 the provider's (:data:`PROVIDER_BATCH`)."""
    if card.task == "pixel":
        return pixel_batch_size
    return batch_size or PROVIDER_BATCH.get(provider, DEFAULT_BATCH)


def strip_rows(plan: Plan, target_pixels: int = 512) -> int:
    """Window rows per strip so one read covers about ``target_pixels`` rows (COG block rows)."""
    return max(1, target_pixels // plan.stride)


def softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float32)


def _load(reader: StripReader, plan: Plan, start: int, stop: int, channels: int) -> _Strip:
    """Read a strip straight into a padded buffer, then fill its margins by reflection."""
    top, bottom = plan.strip_pixels(start, stop)
    rt, rb = max(top, 0), min(bottom, reader.height)
    m, width = plan.margin, reader.width
    padded = np.empty((channels, bottom - top, plan.padded_width()), np.float32)
    invalid = reader.read_into(rt, rb, padded[:, rt - top : rb - top, m : m + width])
    reflect_fill(padded, rt - top, bottom - rb, m, plan.padded_width() - m - width)
    return _Strip(start, stop, padded, invalid, rt)


def classify(
    reader: StripReader,
    model: LoadedModel,
    plan: Plan,
    *,
    batch_size: int = 256,
    rows_per_strip: int = 0,
    probabilities: bool = False,
    uncertain_below: float = 0.0,
    domain: DomainCheck | None = None,
) -> Classification:
    """:func:`classify_strips` into memory: the whole label map (and probabilities)."""
    sink = ArraySink(reader.height, reader.width, len(model.card.classes), probabilities)
    run = classify_strips(
        reader,
        model,
        plan,
        sink,
        batch_size=batch_size,
        rows_per_strip=rows_per_strip,
        probabilities=probabilities,
        uncertain_below=uncertain_below,
        domain=domain,
    )
    return Classification(
        sink.labels,
        sink.probabilities,
        run.windows,
        run.seconds,
        run.read_wait_seconds,
        run.compute_seconds,
        run.confidence,
    )


def classify_strips(
    reader: StripReader,
    model: LoadedModel,
    plan: Plan,
    sink: StripSink,
    *,
    batch_size: int = 256,
    rows_per_strip: int = 0,
    probabilities: bool = False,
    uncertain_below: float = 0.0,
    domain: DomainCheck | None = None,
    on_progress: OnProgress | None = None,
) -> Run:
    """Label every pixel, strip by strip, into ``sink``; windows whose top-class probability is
    below ``uncertain_below`` or that ``domain`` scores out of the training domain are labelled
    :data:`UNCERTAIN`. Memory is bounded by two strips (the one classified and the one being
    read), whatever the scene's size. Progress is logged every 10 % of the rows and passed to
    ``on_progress`` after every strip."""
    height, width, stride = reader.height, reader.width, plan.stride
    tally = _Tally()
    n_classes = len(model.card.classes)
    pixel = model.card.task == "pixel"
    if pixel and (plan.patch, plan.stride) != (1, 1):
        raise ValueError("a pixel model classifies every pixel: plan patch 1, stride 1")
    # a segmentation model labels each window's centre stride x stride pixels, one by one; so
    # does a patch model with a per-pixel map output (card.map_output) whose block holds them
    map_block = None if pixel else model.map_block_for(stride)
    cell = (stride, stride) if model.card.task == "segmentation" or map_block else ()
    inner = (map_block - stride) // 2 if map_block else plan.margin
    crop = slice(inner, inner + stride)
    strips = plan.strips(rows_per_strip or strip_rows(plan))
    started = time.perf_counter()
    wait = compute = 0.0
    done_windows, logged = 0, 0
    channels = len(model.card.bands)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scene-reader") as pool:
        pending: Future[_Strip] = pool.submit(_load, reader, plan, *strips[0], channels)
        for index in range(len(strips)):
            t0 = time.perf_counter()
            strip = pending.result()
            wait += time.perf_counter() - t0
            if index + 1 < len(strips):
                pending = pool.submit(_load, reader, plan, *strips[index + 1], channels)
            t1 = time.perf_counter()
            n_rows = strip.stop - strip.start
            view = window_view(strip.data, plan, n_rows)
            n_windows = n_rows * plan.cols
            window_labels = np.empty((n_windows, *cell), np.uint8)
            window_conf = np.empty((n_windows, *cell), np.uint8)
            window_why = np.zeros((n_windows, *cell), np.uint8)
            window_probs = (
                np.empty((n_windows, n_classes, *cell), np.uint8) if probabilities else None
            )
            for b0, b1 in batches(view, batch_size):
                batch = gather(view, b0, b1)
                if pixel:  # [N, C, 1, 1] windows of one pixel -> [N, C] band vectors
                    batch = batch.reshape(len(batch), channels)
                logits = model.run_map(batch) if map_block else model.run(batch)
                if cell:  # [N, K, P, P] (or [N, K, B, B]) -> the centre [N, K, S, S]
                    logits = logits[:, :, crop, crop]
                p = softmax(logits)
                top = p.max(axis=1)
                window_labels[b0:b1] = logits.argmax(axis=1)
                window_conf[b0:b1] = np.rint(top * 255).astype(np.uint8)
                window_why[b0:b1] |= np.where(top < uncertain_below, LOW_CONFIDENCE, 0).astype(
                    np.uint8
                )
                if domain is not None:
                    scores = domain.scores(batch)
                    tally.scores.append(scores)
                    out = np.where(scores > domain.limit, OUT_OF_DOMAIN, 0).astype(np.uint8)
                    window_why[b0:b1] |= out.reshape(len(out), *(1 for _ in cell))
                if window_probs is not None:
                    window_probs[b0:b1] = np.rint(p * 254).astype(np.uint8)
            window_labels[window_why > 0] = UNCERTAIN
            y0, y1 = strip.start * stride, min(strip.stop * stride, height)
            block = place_labels(window_labels, plan, n_rows)[: y1 - y0, :width]
            invalid = strip.invalid[y0 - strip.top : y1 - strip.top]
            valid = ~invalid
            tally.add(
                place_labels(window_conf, plan, n_rows)[: y1 - y0, :width][valid],
                place_labels(window_why, plan, n_rows)[: y1 - y0, :width][valid],
            )
            block_probs = None
            if window_probs is not None:
                block_probs = np.empty((n_classes, y1 - y0, width), np.uint8)
                for k in range(n_classes):
                    block_probs[k] = place_labels(window_probs[:, k].copy(), plan, n_rows)[
                        : y1 - y0, :width
                    ]
            sink.write(y0, np.where(invalid, NODATA, block).astype(np.uint8), block_probs)
            del strip, view, block, block_probs  # the next strip's buffers reuse this memory
            compute += time.perf_counter() - t1
            done_windows += n_rows * plan.cols
            rate = done_windows / max(time.perf_counter() - started, 1e-9)
            if on_progress is not None:
                on_progress(y1, height, rate)
            if y1 * 10 // height > logged or y1 == height:
                logged = y1 * 10 // height
                log.info(
                    "classified %d/%d rows (%d%%), %.0f windows/s",
                    y1,
                    height,
                    100 * y1 // height,
                    rate,
                )
    seconds = time.perf_counter() - started
    log.debug("classified %dx%d px in %.2fs (waited %.2fs for reads)", width, height, seconds, wait)
    return Run(
        height,
        width,
        plan.windows,
        seconds,
        wait,
        compute,
        tally.result(uncertain_below, domain),
    )


class _Tally:
    """Running sums over the valid pixels for the scene's confidence figures."""

    def __init__(self) -> None:
        self.valid = self.low = self.ood = self.uncertain = 0
        self.confidence = 0
        self.scores: list[npt.NDArray[np.float32]] = []

    def add(self, conf: npt.NDArray[np.uint8], why: npt.NDArray[np.uint8]) -> None:
        self.valid += int(conf.size)
        self.confidence += int(conf.sum(dtype=np.int64))
        self.low += int(np.count_nonzero(why & LOW_CONFIDENCE))
        self.ood += int(np.count_nonzero(why & OUT_OF_DOMAIN))
        self.uncertain += int(np.count_nonzero(why))

    def result(self, threshold: float, domain: DomainCheck | None) -> SceneConfidence:
        n = max(self.valid, 1)
        scores = np.concatenate(self.scores) if self.scores else None
        return SceneConfidence(
            mean_confidence=round(self.confidence / 255 / n, 4) if self.valid else None,
            uncertain_share=round(self.uncertain / n, 6),
            low_confidence_share=round(self.low / n, 6),
            out_of_domain_share=round(self.ood / n, 6) if domain is not None else None,
            median_domain_score=(
                round(float(np.median(scores)), 3) if scores is not None and scores.size else None
            ),
            threshold=threshold,
            domain_limit=domain.limit if domain is not None else None,
        )
