"""Image chips (and per-pixel masks) cut from labelled real scenes, read the way inference reads
them: the training set of a patch classifier on the labels' own classes.

The scenes of the label items (their ``source`` links) are read as one
:mod:`~eostream.inference.scenecube` cube, i.e. through inference's
:class:`~eostream.inference.scene.SceneReader`: the same band mapping (to the model's band set,
e.g. ms13 with B10 filled as inference fills it), DN-to-reflectance rule and resampling to 10 m.
The labels are rasterised, and clouds / nodata screened, exactly as
:mod:`~eostream.inference.sampling` does for per-pixel models (one code path).

Chips are ``size`` x ``size`` windows every ``stride`` pixels of the grid, on every labelled
date. Each window is kept or dropped *on purpose*, and every reason is counted:

- ``nodata_or_cloud``: more than ``max_invalid`` of its pixels are nodata, SCL cloud or bright
  in blue (:func:`sampling.clear_pixels`);
- ``unlabelled``: less than ``min_share`` of its pixels are labelled (outside the labelled area,
  or outside the drawn shapes of a *partial* label item, whose other pixels are unknown);
- ``mixed``: no class covers ``min_share`` of the window (it straddles a label boundary);
- ``class_not_asked``: its class is not one of the requested classes;
- ``split_gap``: it touches a chip of another split (see below).

A kept chip's class is the class covering at least ``min_share`` of its pixels; its mask holds
every pixel's class index (255: unknown or invalid) for segmentation later.

Splits are spatial by default: the grid is cut into blocks of ``block`` x ``block`` chips
(``block * size`` px), each block goes whole to train, val or test (on every date alike), and a
train chip that touches (overlaps or shares an edge with) a val or test chip, or a val chip that
touches a test chip, is dropped: no training chip touches a test chip. ``split_by="date"`` puts
whole dates in one split instead (the same places then appear in several splits). Either way the
split is stratified by class where the groups allow: a class found in three blocks (dates) or
more gets a group in train, val and test (water in one corner of a scene no longer leaves
validation without water), and the splits' sizes follow the fractions as near as whole blocks
allow (:func:`_split_of`). A class a split still lacks after the gap drops is logged.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from eostream.inference import sampling, scenecube
from eostream.inference.errors import BadInputError
from eostream.inference.evaluation import rasterize_labels, scene_href
from eostream.shared import sentinel2
from eostream.shared.bus.base import heartbeat
from eostream.shared.labels import MASK_UNKNOWN
from eostream.shared.modelcard import BAND_SETS

log = logging.getLogger(__name__)

UNKNOWN = MASK_UNKNOWN
SPLITS = ("train", "val", "test")
REASONS = ("nodata_or_cloud", "unlabelled", "mixed", "class_not_asked", "split_gap")


@dataclass(frozen=True)
class ChipRules:
    """How windows become chips and chips become splits."""

    size: int = 64
    stride: int | None = None  # default: size (chips tile the grid)
    min_share: float = 0.75
    max_invalid: float = 0.05
    block: int = 4
    split_by: Literal["space", "date"] = "space"
    train_fraction: float = 0.6
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 1024:  # what the trainer takes (its TRAINER_LABEL_CHIP_SIZE)
            raise BadInputError(f"--size {self.size}: chips of 8 to 1024 px")
        if self.stride is not None and self.stride < 1:
            raise BadInputError("--stride must be at least 1 px")
        if not 0.5 < self.min_share <= 1:
            raise BadInputError("the class share must lie in (0.5, 1]")
        if not 0 <= self.max_invalid < 1:
            raise BadInputError("the invalid share must lie in [0, 1)")
        if self.block < 1:
            raise BadInputError("--block must be at least 1 chip")
        if not (0 < self.train_fraction < 1 and 0 < self.val_fraction < 1) or (
            self.train_fraction + self.val_fraction >= 1
        ):
            raise BadInputError("train and val fractions must be in (0, 1) and leave a test share")

    @property
    def step(self) -> int:
        return self.stride or self.size


@dataclass(frozen=True)
class Chip:
    """One kept chip: where (grid pixels, EPSG:4326 footprint), when, its class and split."""

    scene_id: str
    datetime: str
    row: int
    col: int
    class_name: str
    class_index: int
    share: float
    split: str
    bbox: tuple[float, float, float, float]
    index: int  # position in its scene's array file


@dataclass
class ChipSet:
    """What :func:`cut` produced: the chips, their arrays per scene, and the drop counts."""

    classes: tuple[str, ...]
    bands: tuple[str, ...]
    size: int
    processing_level: str
    chips: list[Chip]
    arrays: dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]]
    dropped: Counter[str] = field(default_factory=Counter)
    labels_href: str = ""

    def counts(self) -> dict[str, dict[str, int]]:
        """Chips per split and class."""
        out: dict[str, dict[str, int]] = {s: dict.fromkeys(self.classes, 0) for s in SPLITS}
        for c in self.chips:
            out[c.split][c.class_name] += 1
        return out

    def write_arrays(self, folder: Path) -> dict[str, str]:
        """One ``<scene>.npz`` per scene (``x`` [n, bands, size, size] float32 reflectance,
        ``mask`` [n, size, size] uint8 class indices, 255 unknown); scene id -> file name."""
        folder.mkdir(parents=True, exist_ok=True)
        names = {}
        for scene_id, (x, mask) in self.arrays.items():
            name = f"{scene_id}.npz"
            np.savez_compressed(folder / name, x=x, mask=mask)
            names[scene_id] = name
        return names


def _label_scenes(href: str) -> list[scenecube.Scene]:
    """The scenes the label items of ``href`` name through their ``source`` links."""
    root = sampling.labels_root(href)
    hrefs = sorted(
        {scene_href(i) for i in root.get_items(recursive=True) if "label:type" in i.properties}
    )
    scenes = [s for h in hrefs for s in scenecube.scenes_in(h)]
    return sorted({s.id: s for s in scenes}.values(), key=lambda s: (s.datetime, s.id))


def dataset_classes(
    labels: sampling.LabelSet,
    classes: Sequence[str] | None,
    background: str | None,
    class_list: Sequence[str] = (),
) -> tuple[sampling.LabelSet, tuple[str, ...]]:
    """The label set with ``background`` as its background class, and the dataset's classes:
    ``classes`` in the order given (each must be a label class, the background or in
    ``class_list``, e.g. a labelling tool's ``labels.json``), else the label set's classes."""
    if background is not None and background != labels.classes[-1]:
        names = [c for c in labels.classes[:-1] if c != background]
        labels = sampling.LabelSet(labels.items, (*names, background))
    if classes is None:
        return labels, labels.classes
    known = [*labels.classes, *(c for c in class_list if c not in labels.classes)]
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise BadInputError(
            f"unknown class {', '.join(unknown)}: the labels name {', '.join(known)}"
        )
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise BadInputError("--classes needs at least two distinct classes")
    return labels, tuple(classes)


def _split_of(groups: Mapping[str, Counter[int]], rules: ChipRules, what: str) -> dict[str, str]:
    """Whole groups (blocks or dates) to splits, stratified by class where the groups allow.

    First, for each class from the rarest, in at least three groups: test, then val, each take the
    first of its free groups in MD5(key:seed) order (the seed's draw) that gives them no more than
    their fraction of the class's chips (else its smallest group), and train the next one, if
    they lack the class. A class whose groups were all taken by rarer classes may miss a split.
    Then the other groups go one by one (rarest class first, then the draw) to the split they
    bring closest to the wanted shares: the train/val/test fractions of every class's chips and of
    all chips (least squares). A split still empty when as many groups remain as empty splits
    takes the next one, so each split gets one at least."""
    n = len(groups)
    if n < 3:
        raise BadInputError(
            f"too few chips to split: they lie in {n} {what}(s); train, val and test need 3 "
            f"at least (use a smaller --size or --block, or label more)"
        )
    want = {"train": rules.train_fraction, "val": rules.val_fraction}
    want["test"] = 1 - want["train"] - want["val"]
    total: Counter[int] = Counter()
    for counts in groups.values():
        total.update(counts)
    everything = -1  # a "class" of all chips: the splits' sizes follow the fractions too
    total[everything] = sum(total.values())

    def draw(key: str) -> bytes:
        return hashlib.md5(f"{key}:{rules.seed}".encode(), usedforsecurity=False).digest()

    def rarest(key: str) -> int:
        return min((total[k] for k, m in groups[key].items() if m), default=0)

    have = {s: Counter[int]() for s in SPLITS}
    out: dict[str, str] = {}
    classes = sorted(total)  # a fixed order: sums of floats that tie, tie alike

    def miss(key: str, split: str) -> float:
        """How far from the wanted shares the splits are with ``key`` given to ``split``."""
        extra = Counter(groups[key])
        extra[everything] = sum(groups[key].values())
        return sum(
            ((have[s][k] + (extra[k] if s == split else 0)) / total[k] - want[s]) ** 2
            for k in classes
            for s in SPLITS
        )

    def suiting(candidates: list[str], split: str, k: int) -> str:
        """The first group in the draw that gives ``split`` no more than its share of class
        ``k``'s chips (else the one that gives least): val and test get the class, and train,
        which learns it from few labels, keeps the most of it."""
        share = want[split] * total[k]
        fitting = [g for g in candidates if have[split][k] + groups[g][k] <= share]
        return fitting[0] if fitting else min(candidates, key=lambda g: groups[g][k])

    def give(key: str, split: str) -> None:
        have[split].update(groups[key])
        have[split][everything] += sum(groups[key].values())
        out[key] = split

    drawn = sorted(groups, key=draw)
    for k in sorted((k for k in classes if k != everything), key=lambda k: (total[k], k)):
        holders = [g for g in drawn if groups[g][k]]
        if len(holders) < len(SPLITS):
            continue
        for split in ("test", "val", "train"):
            free = [g for g in holders if g not in out]
            if free and not have[split][k]:
                give(free[0] if split == "train" else suiting(free, split, k), split)
    rest = sorted((g for g in groups if g not in out), key=lambda g: (rarest(g), draw(g)))
    for i, key in enumerate(rest):
        empty = [s for s in ("test", "val", "train") if not have[s][everything]]
        chosen = empty[0] if len(empty) >= len(rest) - i else min(SPLITS, key=partial(miss, key))
        give(key, chosen)
    return out


def _footprint(grid: Any, row: int, col: int, size: int) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    t = grid.transform
    x0, y0 = t.c + t.a * col + t.b * row, t.f + t.d * col + t.e * row
    x1, y1 = x0 + t.a * size + t.b * size, y0 + t.d * size + t.e * size
    box = transform_bounds(
        grid.crs, "EPSG:4326", min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)
    )
    return (round(box[0], 7), round(box[1], 7), round(box[2], 7), round(box[3], 7))


def cut(
    labels_href: str,
    *,
    classes: Sequence[str] | None = None,
    background: str | None = None,
    class_list: Sequence[str] = (),
    band_set: str = "ms13",
    rules: ChipRules | None = None,
    skip_empty: bool = False,
) -> ChipSet:
    """Chips of the labelled scenes of ``labels_href`` (a labels collection or catalog).

    A class with no chip is an error, unless ``skip_empty``: then the dataset leaves it out
    (the cut runs again without it; at least two classes must keep chips), as the trainer does
    for label collections announced on the bus, where nobody chose the classes."""
    rules = rules or ChipRules()
    if band_set not in BAND_SETS:
        raise BadInputError(f"unknown band set {band_set!r}; choose one of {sorted(BAND_SETS)}")
    bands = BAND_SETS[band_set]
    labels, wanted = dataset_classes(
        sampling.load_labels(labels_href), classes, background, class_list
    )
    scenes = _label_scenes(labels_href)
    level = sentinel2.processing_level(scenes[0].item) or "L2A"
    cube = scenecube.build(scenes, bands)
    grid = scenecube.grid_of(cube)
    if grid.height < rules.size or grid.width < rules.size:
        raise BadInputError(f"the scenes ({grid.width}x{grid.height} px) are smaller than a chip")
    label_index = {c: i for i, c in enumerate(labels.classes)}
    to_wanted = np.full(len(labels.classes), UNKNOWN, np.uint8)
    for name, i in label_index.items():
        if name in wanted:
            to_wanted[i] = wanted.index(name)
    s, area = rules.size, float(rules.size * rules.size)
    dropped: Counter[str] = Counter()
    found: list[tuple[str, str, int, int, int, float, npt.NDArray[Any], npt.NDArray[Any]]] = []
    for item in sorted(labels.items, key=lambda i: (i.time is None, i.time, i.item_id)):
        heartbeat()  # cut inside a bus handler (the trainer's): still moving
        t = sampling.time_index(cube, item)
        truth, in_area = rasterize_labels(
            item.shapes,
            item.area,
            label_index,
            labels.background,
            (grid.height, grid.width),
            grid.transform,
            grid.crs,
        )
        plane = np.asarray(cube[scenecube.VARIABLE].isel(time=t).values, np.float32)
        clear = sampling.clear_pixels(plane, bands)
        labelled = in_area & clear
        if item.partial:  # outside the drawn shapes is unknown, never background
            labelled &= truth != labels.background
        mask = np.where(labelled, to_wanted[truth.clip(0)], UNKNOWN).astype(np.uint8)
        when = str(np.datetime_as_string(cube["time"].values[t], unit="s")) + "Z"
        scene = str(cube["scene_id"].values[t])
        for r in range(0, grid.height - s + 1, rules.step):
            for c in range(0, grid.width - s + 1, rules.step):
                if 1 - clear[r : r + s, c : c + s].mean() > rules.max_invalid:
                    dropped["nodata_or_cloud"] += 1
                    continue
                win = labelled[r : r + s, c : c + s]
                if win.sum() / area < rules.min_share:
                    dropped["unlabelled"] += 1
                    continue
                counts = np.bincount(truth[r : r + s, c : c + s][win], minlength=len(label_index))
                top = int(counts.argmax())
                share = float(counts[top]) / area
                if share < rules.min_share:
                    dropped["mixed"] += 1
                    continue
                if to_wanted[top] == UNKNOWN:
                    dropped["class_not_asked"] += 1
                    continue
                x = np.nan_to_num(plane[:, r : r + s, c : c + s], nan=0.0)
                found.append(
                    (scene, when, r, c, int(to_wanted[top]), share, x, mask[r : r + s, c : c + s])
                )
    chips, arrays = _split(found, wanted, rules, grid, dropped)
    empty = [c for c in wanted if not any(ch.class_name == c for ch in chips)]
    kept = [c for c in wanted if c not in empty]
    if empty and skip_empty and len(kept) >= 2:
        log.info("classes without chips left out of the dataset: %s", ", ".join(empty))
        return cut(labels_href, classes=kept, background=background, class_list=class_list,
                   band_set=band_set, rules=rules)  # fmt: skip
    if empty:
        raise BadInputError(
            f"class {', '.join(empty)} has no chips (no labelled window is "
            f"{rules.min_share:.0%} {empty[0]}); drop it from --classes or label it"
        )
    return ChipSet(wanted, bands, s, level, chips, arrays, dropped, labels_href)


def _split(
    found: list[tuple[str, str, int, int, int, float, npt.NDArray[Any], npt.NDArray[Any]]],
    wanted: tuple[str, ...],
    rules: ChipRules,
    grid: Any,
    dropped: Counter[str],
) -> tuple[list[Chip], dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]]]:
    if not found:
        raise BadInputError("too few chips to split: no window passed the chip rules")
    s, edge = rules.size, rules.block * rules.size
    if rules.split_by == "date":
        by_date: dict[str, Counter[int]] = {}
        for f in found:
            by_date.setdefault(f[1], Counter())[f[4]] += 1
        split = _split_of(by_date, rules, "date")
        where = {(f[1], f[2], f[3]): split[f[1]] for f in found}
    else:
        places = sorted({(f[2], f[3]) for f in found})
        by_block: dict[str, Counter[int]] = {}
        for f in found:
            by_block.setdefault(f"{f[2] // edge}:{f[3] // edge}", Counter())[f[4]] += 1
        split = _split_of(by_block, rules, "block")
        at = {(r, c): split[f"{r // edge}:{c // edge}"] for r, c in places}
        rank = {"train": 0, "val": 1, "test": 2}
        reach = range(-(s // rules.step), s // rules.step + 1)  # the chips a chip touches
        keep = {
            p: not any(
                rank[at.get((p[0] + i * rules.step, p[1] + j * rules.step), "train")] > rank[at[p]]
                for i in reach
                for j in reach
            )
            for p in places
        }
        where = {(f[1], f[2], f[3]): at[(f[2], f[3])] if keep[(f[2], f[3])] else "" for f in found}
    chips: list[Chip] = []
    xs: dict[str, list[npt.NDArray[Any]]] = {}
    masks: dict[str, list[npt.NDArray[Any]]] = {}
    for scene, when, r, c, k, share, x, mask in found:
        name = where[(when, r, c)]
        if not name:
            dropped["split_gap"] += 1
            continue
        xs.setdefault(scene, []).append(x)
        masks.setdefault(scene, []).append(mask)
        chips.append(
            Chip(scene, when, r, c, wanted[k], k, share, name, _footprint(grid, r, c, s),
                 len(xs[scene]) - 1)
        )  # fmt: skip
    per_split = Counter(c.split for c in chips)
    lacking = [
        f"{name} in {split}"
        for name in wanted
        if any(c.class_name == name for c in chips)
        for split in SPLITS
        if not any(c.class_name == name and c.split == split for c in chips)
    ]
    if lacking:
        log.warning("the split leaves no chip of %s (too few blocks or dates)", ", ".join(lacking))
    missing = [n for n in SPLITS if not per_split[n]]
    if missing:
        raise BadInputError(
            f"too few chips to split: {len(chips)} chips leave {', '.join(missing)} empty "
            f"({dict(per_split)}); use a smaller --size or --block, or label more"
        )
    arrays = {
        scene: (np.stack(xs[scene]).astype(np.float32), np.stack(masks[scene]).astype(np.uint8))
        for scene in xs
    }
    return chips, arrays
