"""Models other than the live one: which model a request names, and a bounded cache of their
sessions.

A process execution may name its model (:func:`parse_ref`): an MLM item href, ``models:/NAME@
ALIAS``, ``models:/NAME/VERSION`` or a bare version. :class:`ModelResolver` turns the reference
into the artifact to load, from what this service knows without the registry: the live model,
the deployment records of the results index (every promotion it has seen), the shipped MLM items
in the object store (``<models_prefix>/<name>/<version>/item.json``), or the MLM item named.

:class:`ModelCache` keeps up to ``model_cache_size`` such models loaded, least recently used
first out. They are loaded by :func:`~eostream.inference.model.load_model`, the champion's loader
with its checksum and contract checks, and never touch the live model's holder: running an old
version swaps nothing. An evicted model is freed when its last lease ends.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

from eostream.inference import fetch
from eostream.inference.deployment import ModelDeployment
from eostream.inference.errors import BadInputError, NoModelError, ResultNotFoundError
from eostream.inference.model import (
    Artifact,
    LoadedModel,
    ModelInfo,
    info_from_item,
    int8_artifact,
)
from eostream.inference.session import release_free_memory
from eostream.shared.errors import ObjectNotFoundError
from eostream.shared.sources_policy import SourcePolicy
from eostream.shared.storage import ObjectStore

log = logging.getLogger(__name__)
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}"
_ALIAS = re.compile(rf"^models:/({_NAME})@([A-Za-z0-9_-]{{1,100}})$")
_VERSION = re.compile(rf"^models:/({_NAME})/([0-9]{{1,9}})$")
_BARE = re.compile(r"^[0-9]{1,9}$")


class UnknownModelError(ResultNotFoundError):
    """The model a request names is not known to this service (404)."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: ``kind`` is champion, alias, version or item."""

    kind: str
    name: str | None = None
    alias: str | None = None
    version: str | None = None
    href: str | None = None


def parse_ref(text: str | None) -> ModelRef:
    """The reference a request gave (pure); None or ``champion`` means the live model."""
    if text is None or text.strip() in ("", "champion"):
        return ModelRef("champion")
    text = text.strip()
    if m := _ALIAS.match(text):
        return ModelRef("alias", name=m[1], alias=m[2])
    if m := _VERSION.match(text):
        return ModelRef("version", name=m[1], version=m[2])
    if _BARE.match(text):
        return ModelRef("version", version=text)
    if text.startswith("models:"):
        raise BadInputError(
            f"model {text!r}: use models:/NAME@ALIAS, models:/NAME/VERSION, a version number "
            "or an MLM item href"
        )
    return ModelRef("item", href=text)


@dataclass(frozen=True)
class Resolved:
    """The model to run: the live one when it was resolved (``live``), or an artifact to load.

    A model named by a REST user's MLM item carries the ``policy`` its files are read through
    and the ``int8`` file its item named, both checked when it was resolved ("item": a model
    this service knows, whose int8 file its own MLM item names)."""

    info: ModelInfo
    live: bool = False
    int8: Artifact | Literal["item"] | None = field(default="item", compare=False)
    policy: SourcePolicy | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.info.name, self.info.version, self.info.sha256)


class ModelResolver:
    def __init__(
        self, deployment: ModelDeployment, store: ObjectStore, models_prefix: str = "models"
    ) -> None:
        self.deployment = deployment
        self.settings = deployment.settings
        self.store = store
        self.prefix = models_prefix.strip("/")

    def resolve(self, ref: ModelRef) -> Resolved:
        live = self.deployment.current
        if ref.kind == "item":
            return self._from_item_href(str(ref.href))
        if live is None and ref.kind == "champion":
            raise NoModelError("no model is deployed yet; promote one (ModelPromoted)")
        name = ref.name or (live.info.name if live else self.settings.model_name)
        if name is None:
            raise UnknownModelError("no model is live: name it as models:/NAME/VERSION")
        if live is not None and self._is_live(ref, name, live.info):
            return Resolved(live.info, live=True)
        for row in self.deployment.results.deployments(500, name):
            if row["status"] != "live" or not row["artifact_uri"]:
                continue
            if (ref.kind == "alias" and row["alias"] == ref.alias) or (
                ref.kind == "version" and row["version"] == ref.version
            ):
                return Resolved(_info(row))
        if ref.kind == "version":
            shipped = self._shipped(name, str(ref.version))
            if shipped is not None:
                return shipped
            raise UnknownModelError(
                f"model {name} version {ref.version} is not known here: it was never deployed "
                f"and {self.prefix}/{name}/{ref.version}/item.json does not exist"
            )
        raise UnknownModelError(
            f"alias {ref.alias!r} of model {name} is not known here (this service learns aliases "
            "from promotions); name a version: models:/NAME/VERSION"
        )

    @staticmethod
    def _is_live(ref: ModelRef, name: str, info: ModelInfo) -> bool:
        if ref.kind == "champion":
            return True
        if info.name != name:
            return False
        if ref.kind == "alias":
            return ref.alias == info.alias
        return ref.version == info.version

    def _shipped(self, name: str, version: str) -> Resolved | None:
        key = f"{self.prefix}/{name}/{version}/item.json"
        try:
            data = self.store.get_bytes(key)
        except ObjectNotFoundError:
            return None
        return Resolved(info_from_item(data, self.store.uri(key)))

    def _from_item_href(self, href: str) -> Resolved:
        s = self.settings
        policy = fetch.source_policy(s)
        data = fetch.read_bytes(href, s3=s.s3, max_bytes=s.max_item_bytes, policy=policy)
        named = info_from_item(data, href)
        # every file the item names that would be read: the fp32 file and the int8 one
        int8 = int8_artifact(json.loads(data), href)
        fetch.check_source(named.artifact_uri, policy)
        if int8 is not None:
            fetch.check_source(int8.uri, policy)
        resolved = Resolved(named, int8=int8, policy=policy)
        live = self.deployment.current
        if live is not None and resolved.key == (
            live.info.name,
            live.info.version,
            live.info.sha256,
        ):
            return Resolved(live.info, live=True)
        return resolved


def _key(info: ModelInfo) -> tuple[str, str, str]:
    return (info.name, info.version, info.sha256)


def _info(row: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        name=row["name"],
        version=row["version"],
        alias=row["alias"],
        run_id=row["run_id"],
        sha256=row["sha256"] or "",
        artifact_uri=row["artifact_uri"],
        mlm_item_href=row["mlm_item_href"],
    )


class _Entry:
    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.leases = 0
        self.evicted = False


class ModelCache:
    """Loaded models other than the live one, at most ``size``; an evicted model is freed as
    soon as no job uses it. ``size`` 0: each lease loads its own model and frees it after."""

    def __init__(self, deployment: ModelDeployment, size: int) -> None:
        self.deployment = deployment
        self.size = size
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one load at a time; live traffic never waits on it
        self._entries: OrderedDict[tuple[str, str, str], _Entry] = OrderedDict()
        self.loads = 0
        self.freed = 0

    def __len__(self) -> int:
        return len(self._entries)

    def cached(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(e.model.info.name, e.model.info.version) for e in self._entries.values()]

    def lease(self, resolved: Resolved) -> AbstractContextManager[LoadedModel]:
        """The model to run for one job: the one it resolved, whatever is live when it runs.
        The live model leased from the deployment while it is still the one resolved, else
        (promoted over meanwhile) a cached or freshly loaded one, as any other version."""
        if resolved.live:
            return self._live_or_loaded(resolved)
        return self._lease(resolved)

    @contextmanager
    def _live_or_loaded(self, resolved: Resolved) -> Iterator[LoadedModel]:
        with ExitStack() as stack:
            model: LoadedModel | None = None
            if self.deployment.current is not None:
                model = stack.enter_context(self.deployment.lease())
                if _key(model.info) != resolved.key:
                    stack.close()  # promoted over since: not the model this job resolved
                    model = None
            if model is None:
                log.info(
                    "%s v%s is no longer live: loading it for a job that resolved it",
                    resolved.info.name,
                    resolved.info.version,
                )
                model = stack.enter_context(self._lease(resolved))
            yield model

    @contextmanager
    def _lease(self, resolved: Resolved) -> Iterator[LoadedModel]:
        entry = self._acquire(resolved)
        try:
            yield entry.model
        finally:
            self._release(entry)

    def _acquire(self, resolved: Resolved) -> _Entry:
        key = resolved.key
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.leases += 1
                return entry
        with self._loading:
            with self._lock:  # loaded by another job while this one waited
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    entry.leases += 1
                    return entry
            entry = _Entry(self._load(resolved))
        evicted: list[_Entry] = []
        with self._lock:
            entry.leases = 1
            if self.size > 0:
                self._entries[key] = entry
                while len(self._entries) > self.size:
                    _, old = self._entries.popitem(last=False)
                    old.evicted = True
                    if old.leases == 0:
                        evicted.append(old)
            else:
                entry.evicted = True
        for old in evicted:
            self._free(old)
        return entry

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.leases -= 1
            free = entry.evicted and entry.leases == 0
        if free:
            self._free(entry)

    def _load(self, resolved: Resolved) -> LoadedModel:
        # the deployment's loader: its checks and its precision choice (int8 on CPU); a model
        # a REST user named is read through the source policy, with the int8 file checked
        info = resolved.info
        model = self.deployment.load(
            info,
            info.artifact_uri,
            info.sha256 or None,
            int8=resolved.int8,
            policy=resolved.policy,
        )
        self.loads += 1
        log.info(
            "loaded %s v%s (%s) beside the live model (cache)",
            info.name,
            info.version,
            model.precision,
        )
        return model

    def _free(self, entry: _Entry) -> None:
        info = entry.model.info
        log.info("freeing cached model %s v%s", info.name, info.version)
        entry.model.close()
        self.freed += 1
        gc.collect()
        release_free_memory()

    def clear(self) -> None:
        """Evict everything (service stop); models in use are freed when their jobs end."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            idle = []
            for e in entries:
                e.evicted = True
                if e.leases == 0:
                    idle.append(e)
        for e in idle:
            self._free(e)


class Pinned:
    """A :class:`~eostream.inference.pipeline.LiveModel` that always hands out one resolved
    model, for a pipeline that runs a job with the model the request named."""

    def __init__(self, model: LoadedModel) -> None:
        self._model = model

    @property
    def current(self) -> LoadedModel | None:
        return self._model

    def lease(self) -> AbstractContextManager[LoadedModel]:
        return nullcontext(self._model)


__all__ = [
    "ModelCache",
    "ModelRef",
    "ModelResolver",
    "Pinned",
    "Resolved",
    "UnknownModelError",
    "parse_ref",
]
