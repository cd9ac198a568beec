"""What a ``DatasetUpdated`` names, as a chip dataset the trainer trains on.

Ingest announces a label collection when its items change (``eostream.datasets.updated``, the
digest of its items). The trainer then trains on the labels as they are when it reads them: it
hashes the collection's items again (:func:`eostream.shared.label_catalog.items_digest`), cuts
chips from the labelled scenes as ``eostream labels chips`` does (inference's scene reader: the
same band mapping, radiometry and resampling as the maps; spatial split with a gap) into its
cache under that digest, and trains a patch classifier on the labels' own classes. The request
id, the chips and the model card name that digest: an announcement overtaken by newer labels
(both on the bus) trains the newer labels once, and the newer announcement reuses that version.
A class nobody labelled enough to give a chip is left out (logged); fewer than two classes with
chips is a bad dataset, dead-lettered with the reason.

A label collection on a STAC API (``<root>/collections/<id>``, what ingest announces on the
stack) is first copied into a static catalogue (:mod:`eostream.trainer.stac_labels`: the items,
their labels read from the object store with ``TRAINER_S3__*``). ``href`` may also name a chip
dataset written beforehand (its folder or ``chips.parquet``). Any other local folder (e.g. a
EuroSAT folder) keeps the old meaning: retrain the default model on EuroSAT; an href that names
none of these (a missing path, another scheme) is dead-lettered.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pystac

from eostream.shared.digest import sha256_hex
from eostream.shared.errors import EostreamError, RetryableError
from eostream.shared.events import DatasetUpdated, TrainingRequested
from eostream.shared.holdout import MS_DIR, RGB_DIR
from eostream.shared.label_catalog import (
    ALL_ITEMS,
    LabelQuery,
    StaticLabelCatalog,
    items_digest,
)
from eostream.shared.objects import local_path
from eostream.trainer import chipset, stac_labels
from eostream.trainer.errors import DatasetError
from eostream.trainer.plan import TrainingPlan, plan_for_dataset, plan_training
from eostream.trainer.pretrained import check_requested
from eostream.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

CHIPS_FOLDER = "label-chips"
#: copies of label collections served by a STAC API (:mod:`eostream.trainer.stac_labels`)
STAC_FOLDER = "label-stac"
#: what makes a folder a EuroSAT one (a DatasetUpdated naming it retrains the default model)
EUROSAT_FOLDERS = (RGB_DIR, MS_DIR)


def is_label_stac(path: Path) -> bool:
    """A STAC collection or catalog file (or a folder holding one) that declares labels."""
    if path.is_dir():
        path = next(
            (path / n for n in ("collection.json", "catalog.json") if (path / n).is_file()), path
        )
    if not path.is_file() or path.suffix != ".json":
        return False
    try:
        doc: Any = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: nested past Python's stack
        return False
    if not isinstance(doc, dict) or doc.get("type") not in ("Collection", "Catalog"):
        return False
    # a file of the wrong shape is not labels (it stopped the consumer with a TypeError)
    extensions, links = doc.get("stac_extensions"), doc.get("links")
    if isinstance(extensions, list) and any("/label/" in str(e) for e in extensions):
        return True
    return isinstance(links, list) and any(
        isinstance(link, dict) and link.get("rel") == "item" for link in links
    )


def _folder_name(name: str, key: str) -> str:
    """``<name>-<key>`` as one folder name: ``key`` (a digest, or a request id as a sender
    wrote it: ``x/../../..`` wrote chips outside the cache) is kept only when it is hex."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "labels"
    tag = key[:16] if re.fullmatch(r"[0-9a-f]{16,}", key) else sha256_hex(key.encode())[:16]
    return f"{safe}-{tag}"


def cut_chips(labels: Path, out: Path, settings: TrainerSettings, band_set: str) -> Path:
    """Chips of the label collection ``labels`` into ``out`` (written once: a folder that
    holds a dataset is reused, since its name carries the labels' digest)."""
    if (out / chipset.TABLE).is_file():
        return out
    from eostream.inference import chips as cutter  # inference's scene reader: one code path

    rules = cutter.ChipRules(size=settings.label_chip_size, block=settings.label_chip_block)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        cut = cutter.cut(str(labels), band_set=band_set, rules=rules, skip_empty=True)
        chipset.write(cut, partial, rules)
    # the labels' own problem (a link to no STAC object or to no file, an item without assets
    # or of the wrong shape): the event is dead-lettered, where pystac's errors stopped the
    # consumer for ever
    except (
        EostreamError, pystac.STACError, FileNotFoundError, KeyError, TypeError, AttributeError,
        RecursionError,
    ) as exc:  # fmt: skip
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, RetryableError):
            raise
        # the traceback too: a KeyError may be the cutter's own bug, not the labels'
        log.warning("cutting chips of %s failed", labels, exc_info=exc)
        raise DatasetError(f"labels {labels}: {type(exc).__name__}: {exc}"[:1000]) from None
    partial.replace(out)
    counts = cut.counts()
    log.info(
        "cut %d chips (%s) from %s: %s; dropped %s",
        len(cut.chips),
        ", ".join(cut.classes),
        labels,
        counts,
        dict(cut.dropped),
    )
    return out


def _is_chip_dataset(path: Path) -> bool:
    return (path / chipset.TABLE).is_file() or (path.name == chipset.TABLE and path.is_file())


def _open(
    href: str,
    name: str,
    key: str,
    settings: TrainerSettings,
    band_set: str,
    digest: str | None = None,
) -> chipset.ChipDataset | None:
    """The chip dataset ``href`` names, or the chips cut from the label collection it names
    (cached as ``<name>-<key>``; ``digest``: the one a STAC API collection's copy must have);
    None when it is neither (or not local)."""
    path = local_path(href)
    if path is None and stac_labels.collection_url(href) is not None:
        copy = settings.cache_dir / STAC_FOLDER / _folder_name(name, key)
        path = stac_labels.materialize(href, copy, settings.s3, expected=digest)
    if path is None:
        return None
    if _is_chip_dataset(path):
        return chipset.open_dataset(path)
    if is_label_stac(path):
        out = settings.cache_dir / CHIPS_FOLDER / _folder_name(name, key)
        return chipset.open_dataset(cut_chips(path, out, settings, band_set))
    return None


def labels_digest(href: str) -> str | None:
    """The digest of the items of the label collection ``href`` names, as they are now (what
    ingest announces); None when ``href`` names no label collection of a STAC API or of a static
    label catalogue (a chip dataset, a EuroSAT folder, a lone collection file)."""
    if stac_labels.collection_url(href) is not None:
        return stac_labels.digest(href)
    path = local_path(href)
    if path is None:
        return None
    if path.is_dir():
        path = path / "collection.json"
    root = path.parent.parent
    if path.name != "collection.json" or not (root / "catalog.json").is_file():
        return None
    try:
        collection = str(json.loads(path.read_text())["id"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    try:
        items = StaticLabelCatalog(root).search(LabelQuery(collection, limit=ALL_ITEMS))
    except (OSError, ValueError, KeyError, TypeError, pystac.STACError):
        return None  # a broken catalogue: the chip cutter says what is wrong with it
    return items_digest(items) if items else None


def is_eurosat_folder(path: Path) -> bool:
    """A EuroSAT data folder (``eurosat_rgb/`` or ``eurosat_ms/`` in it, as in the trainer's
    ``data_dir``) or one of those two folders itself."""
    if path.name in EUROSAT_FOLDERS:
        return path.is_dir()
    return any((path / name).is_dir() for name in EUROSAT_FOLDERS)


def dataset_plan(event: DatasetUpdated, settings: TrainerSettings) -> TrainingPlan:
    """The training a ``DatasetUpdated`` asks for (blocking: may cut chips), on the labels as
    they are now: named after their digest, which differs from the event's when newer labels
    overtook the announcement."""
    now = labels_digest(event.href)
    if now is not None and now != event.digest:
        log.warning(
            "labels %s changed since they were announced (digest %s, now %s): training them as "
            "they are now, under their digest",
            event.dataset,
            event.digest[:16],
            now[:16],
        )
        event = event.model_copy(update={"digest": now})
    data = _open(event.href, event.dataset, event.digest, settings, event.band_set, now)
    # a STAC API collection's copy was checked as it was read; a static one is cut in place
    if now is not None and local_path(event.href) is not None and labels_digest(event.href) != now:
        shutil.rmtree(settings.cache_dir / CHIPS_FOLDER / _folder_name(event.dataset, now), True)
        raise RetryableError(f"labels {event.dataset} changed while their chips were cut")
    if data is None:  # not labels: retrain the default model with defaults
        default = plan_for_dataset(
            event, event.model_name or settings.default_model_name, settings.dataset_updated_epochs
        )
        path = local_path(event.href)
        # a missing path (a typo), another scheme, or a folder of something else: /tmp, a label
        # folder without its catalog.json; each retrained the live model on EuroSAT
        if path is None or not is_eurosat_folder(path):
            raise DatasetError(
                f"dataset {event.dataset}: {event.href} is neither a label collection, a chip "
                "dataset nor a EuroSAT folder (one holding eurosat_rgb/ or eurosat_ms/, which "
                "retrains the default model)"
            )
        return default
    plan = plan_for_dataset(
        event.model_copy(update={"band_set": data.band_set}),
        event.model_name or event.dataset,
        settings.dataset_updated_epochs,
        settings.label_architecture,
        str(data.path),
        settings.label_base_model,
    )
    return replace(plan, dataset=str(data.path), classes=data.classes)


def request_plan(event: TrainingRequested, settings: TrainerSettings) -> TrainingPlan:
    """The training a ``TrainingRequested`` asks for; with ``dataset``, on those chips (cut
    first when it names a label collection; blocking)."""
    plan = plan_training(event)
    if event.pretrained is not None:
        check_requested(event.pretrained, settings.pretrained_dirs)
    if event.dataset is None:
        return plan
    problems = [
        what
        for what, bad in (
            ("the torch or sklearn family", plan.family == "keras"),
            ("no pretrained checkpoint (a base_model may start it)", event.pretrained is not None),
        )
        if bad
    ]
    if problems:
        raise DatasetError(f"a dataset model: use {', '.join(problems)}")
    path = Path(event.dataset)
    name = path.parent.name if path.suffix == ".json" else path.name
    data = _open(event.dataset, name, event.request_id, settings, event.band_set)
    if data is None:
        raise DatasetError(
            f"dataset {event.dataset}: neither a chip dataset (chips.parquet) nor a label "
            "collection of a static catalogue"
        )
    return replace(plan, dataset=str(data.path), classes=data.classes, band_set=data.band_set)
