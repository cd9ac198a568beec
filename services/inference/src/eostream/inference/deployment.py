"""Model deployment: which model is live, and how a new one becomes live.

:class:`ModelDeployment` fetches a promoted model through a :class:`ModelSource`, verifies,
builds and warms it beside the live one, swaps it in (:class:`~eostream.inference.session.
ModelHolder`: in-flight requests finish on the model they started with), and writes every
attempt to the results index's deployment records. At start it makes the initial model live:
``INFERENCE_INITIAL_MODEL_URI``, else the last live deployment of the served model.

On the CPU provider a model whose MLM item ships an int8 file that passed its check runs that
file (:meth:`ModelDeployment.load`; ``INFERENCE_INT8_ON_CPU=false`` turns it off), checked
against the item's checksum; when it cannot be read or loaded, the fp32 file runs.

The scene pipeline never deploys: it leases whatever model this hands it (``lease()``).
Methods block; async callers run them in a thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Literal, Protocol

from eostream.inference import fetch, metrics
from eostream.inference.errors import BadInputError, ModelLoadError, SourceNotAllowedError
from eostream.inference.model import (
    Artifact,
    LoadedModel,
    ModelInfo,
    int8_artifact,
    int8_wanted,
    load_model,
)
from eostream.inference.results import ResultsStore
from eostream.inference.session import ModelHolder
from eostream.inference.settings import InferenceSettings
from eostream.shared import sources_policy
from eostream.shared.errors import InvalidEventError
from eostream.shared.events import ModelPromoted
from eostream.shared.settings import S3Settings
from eostream.shared.sources_policy import SourcePolicy

log = logging.getLogger(__name__)


class ModelSource(Protocol):
    """Where model artifacts come from: the bytes of the ONNX file an artifact URI names."""

    def read(self, uri: str) -> bytes: ...


class FetchedModels:
    """The default :class:`ModelSource`: paths, ``file://``, ``s3://`` and ``https://`` URIs,
    read with the service's S3 settings and size limit."""

    def __init__(self, s3: S3Settings | None, max_bytes: int) -> None:
        self._s3 = s3
        self._max_bytes = max_bytes

    @classmethod
    def from_settings(cls, settings: InferenceSettings) -> FetchedModels:
        return cls(settings.s3, settings.max_model_bytes)

    def read(self, uri: str) -> bytes:
        return fetch.read_bytes(uri, s3=self._s3, max_bytes=self._max_bytes)


def info_of(event: ModelPromoted) -> ModelInfo:
    return ModelInfo(
        name=event.name,
        version=event.version,
        alias=event.alias,
        run_id=event.run_id,
        sha256=event.sha256,
        artifact_uri=event.artifact_uri,
        mlm_item_href=event.mlm_item_href,
        promoted_at=event.time,
    )


class ModelDeployment:
    """The live model of one service, its hot swap and its deployment records."""

    def __init__(
        self,
        settings: InferenceSettings,
        results: ResultsStore,
        source: ModelSource,
        holder: ModelHolder | None = None,
        store_root: str | None = None,
    ) -> None:
        """``store_root``: the root of the object store the service writes to, where the
        registry-bridge ships models (:func:`fetch.store_root`); else the settings' store."""
        self.settings = settings
        self.results = results
        self.source = source
        self.holder = holder or ModelHolder()
        self.store_root = store_root

    # -- what the pipeline and the probes read -------------------------------------------
    @property
    def current(self) -> LoadedModel | None:
        return self.holder.current

    @contextmanager
    def lease(self) -> Iterator[LoadedModel]:
        """The live model for one whole request; a swap meanwhile does not take it away."""
        with self.holder.lease() as model:
            yield model

    @property
    def swaps(self) -> int:
        return self.holder.swaps

    # -- promotions ---------------------------------------------------------------------
    def serves(self, event: ModelPromoted) -> bool:
        """Whether this service serves the promoted model (``MODEL_NAME`` / ``MODEL_ALIAS``)."""
        s = self.settings
        return not (
            (s.model_name and event.name != s.model_name)
            or (s.model_alias and event.alias != s.model_alias)
        )

    def is_live(self, event: ModelPromoted) -> bool:
        model = self.holder.current
        return model is not None and (
            model.info.name,
            model.info.version,
            model.info.sha256,
        ) == (event.name, event.version, event.sha256)

    def promote(self, event: ModelPromoted) -> LoadedModel | None:
        """Deploy a promotion this service serves and that is not live yet; else nothing."""
        if not self.serves(event):
            s = self.settings
            log.info(
                "ignoring promotion of %s v%s@%s: this service serves %s@%s",
                event.name,
                event.version,
                event.alias,
                s.model_name or "*",
                s.model_alias or "*",
            )
            return None
        if self.is_live(event):
            log.info("model %s v%s is already live; nothing to do", event.name, event.version)
            return None
        live = self.holder.current
        since = live.info.promoted_at if live is not None else None
        if live is not None and since is not None and event.time < since:
            # a dead letter replayed, or a late delivery: it must not undo a later promotion
            # (a rollback made after it); the newest promotion wins
            log.warning(
                "ignoring promotion of %s v%s made at %s: the live %s was promoted later, at %s",
                event.name, event.version, event.time.isoformat(), live.info.label,
                since.isoformat(),
            )  # fmt: skip
            return None
        return self.deploy(event)

    def deploy(self, event: ModelPromoted) -> LoadedModel:
        """Fetch, verify, build and warm the promoted model beside the live one, then swap. Its
        file must lie where the registry-bridge ships (:func:`fetch.promotion_policy`): the
        checksum comes with the event, so it proves nothing about who chose the file."""
        info = info_of(event)
        try:
            fetch.check_promoted(event.artifact_uri, self.settings, self.store_root)
        except sources_policy.SourceNotAllowedError as exc:
            reason = (
                f"its file {event.artifact_uri} is outside this service's model store and "
                f"INFERENCE_MODEL_ROOTS ({exc.reason})"
            )
            metrics.MODEL_SWAPS.labels("failed").inc()
            self._record(info, "failed", reason, None)
            raise ModelLoadError(f"cannot load model {info.label}: {reason}") from None
        return self.deploy_uri(info, event.artifact_uri, event.sha256, promoted=True)

    def load(
        self,
        info: ModelInfo,
        uri: str,
        sha256: str | None,
        *,
        int8: Artifact | Literal["item"] | None = "item",
        policy: SourcePolicy | None = None,
        promoted: bool = False,
    ) -> LoadedModel:
        """Load ``info``'s model: its int8 file when there is one to run, else (or when that
        fails) the fp32 file at ``uri`` with ``sha256``.

        ``int8``: ``"item"`` finds the int8 file in ``info``'s MLM item (:meth:`int8_of`); a
        model a REST user named passes the one found (and checked) when its item was read, or
        None. ``policy``: the sources a REST user may name; given, every file is read through it
        (redirects only to the same host, each hop allowed) and a refusal is never an fp32
        fallback but the user's error."""
        s = self.settings
        if isinstance(int8, str):
            int8 = self.int8_of(info, promoted=promoted)
        elif not int8_wanted(s.providers, s.int8_on_cpu):
            int8 = None
        if int8 is not None:
            try:
                return load_model(
                    self._read(int8.uri, policy),
                    info,
                    expected_sha256=int8.sha256,
                    providers=s.providers,
                    intra_op_threads=s.intra_op_threads,
                    precision="int8",
                )
            except SourceNotAllowedError:
                raise
            except Exception as exc:  # the fp32 file is always there to fall back on
                log.warning("int8 file of %s not loaded, running fp32: %s", info.label, exc)
        return load_model(
            self._read(uri, policy),
            info,
            expected_sha256=sha256,
            providers=s.providers,
            intra_op_threads=s.intra_op_threads,
        )

    def _read(self, uri: str, policy: SourcePolicy | None) -> bytes:
        if policy is None:
            return self.source.read(uri)
        s = self.settings
        return fetch.read_bytes(uri, s3=s.s3, max_bytes=s.max_model_bytes, policy=policy)

    def int8_of(self, info: ModelInfo, *, promoted: bool = False) -> Artifact | None:
        """The int8 file to run for ``info``: on the CPU provider, with int8 allowed, when its
        MLM item ships one that passed its check; else None. ``promoted``: a promotion on the
        bus named it, so the item and its int8 file must lie where models ship too (a model an
        operator named, e.g. ``maps evaluate``'s, is read where it is)."""
        s = self.settings
        if not info.mlm_item_href or not int8_wanted(s.providers, s.int8_on_cpu):
            return None
        try:
            if promoted:
                fetch.check_promoted(info.mlm_item_href, s, self.store_root)
            item = json.loads(self.source.read(info.mlm_item_href))
            found = int8_artifact(item, info.mlm_item_href)
            if found is not None and promoted:
                fetch.check_promoted(found.uri, s, self.store_root)
            return found
        except Exception as exc:  # no item, not one, or not where models ship: run fp32
            log.warning("MLM item %s not used (%s); running fp32", info.mlm_item_href, exc)
            return None

    def deploy_uri(
        self,
        info: ModelInfo,
        uri: str,
        sha256: str | None,
        *,
        record: bool = True,
        promoted: bool = False,
    ) -> LoadedModel:
        """Load the model at ``uri`` and make it live. ``record=False`` (the CLI's one-off
        classification) keeps it out of the results index's deployments, so a service on that
        index never reloads it as its last live model. ``promoted``: a promotion on the bus
        named it (:meth:`int8_of`)."""
        try:
            model = self.load(info, uri, sha256, promoted=promoted)
        except BadInputError as exc:
            metrics.MODEL_SWAPS.labels("failed").inc()
            self._record(info, "failed", str(exc), None, record=record)
            raise ModelLoadError(f"cannot load model {info.label}: {exc}") from exc
        except ModelLoadError as exc:
            metrics.MODEL_SWAPS.labels("failed").inc()
            self._record(info, "failed", str(exc), None, record=record)
            raise
        except Exception:  # e.g. the store unreachable: retried, and the old model serves meanwhile
            metrics.MODEL_SWAPS.labels("failed").inc()
            raise
        self.holder.swap(model)
        self._record(model.info, "live", "", model.provider, record=record)  # a file: named now
        return model

    def _record(
        self,
        info: ModelInfo,
        status: str,
        detail: str,
        provider: str | None,
        *,
        record: bool = True,
    ) -> None:
        if not record:
            return
        if not info.version:  # a file that did not load (ModelInfo.of_file): named by its path
            info = replace(info, name=info.artifact_uri.rsplit("/", 1)[-1] or "file", version="-")
        self.results.record_deployment(
            name=info.name,
            version=info.version,
            alias=info.alias,
            run_id=info.run_id,
            sha256=info.sha256,
            artifact_uri=info.artifact_uri,
            mlm_item_href=info.mlm_item_href,
            provider=provider,
            status=status,
            detail=detail[:2000],
        )

    # -- start --------------------------------------------------------------------------
    def load_initial(self) -> LoadedModel | None:
        """Make the initial model live: ``INITIAL_MODEL_URI`` (a failure raises), else the last
        live deployment of the served model in the results index (a failure is logged)."""
        s = self.settings
        if s.initial_model_uri:
            info = ModelInfo.of_file(s.initial_model_uri, s.initial_model_sha256)
            return self.deploy_uri(info, s.initial_model_uri, s.initial_model_sha256)
        row = self._last_live()
        if row is None:
            return None
        info = ModelInfo(
            name=row["name"],
            version=row["version"],
            alias=row["alias"],
            run_id=row["run_id"],
            sha256=row["sha256"] or "",
            artifact_uri=row["artifact_uri"],
            mlm_item_href=row["mlm_item_href"],
        )
        try:
            return self.deploy_uri(info, row["artifact_uri"], row["sha256"])
        except InvalidEventError as exc:
            log.warning("could not reload the last live model: %s", exc)
            return None

    def _last_live(self) -> dict[str, Any] | None:
        """The newest deployment record of the served model that went live."""
        s = self.settings
        for row in self.results.deployments(50, s.model_name):
            if (s.model_name and row["name"] != s.model_name) or (
                s.model_alias and row["alias"] != s.model_alias
            ):
                continue  # another deployment's model, in a results index it shares
            if row["status"] == "live" and row["artifact_uri"]:
                return row
        return None

    # -- reporting ----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The live model (``GET /models``); empty when none is live."""
        model = self.holder.current
        if model is None:
            return {}
        i = model.info
        return {
            "name": i.name,
            "version": i.version,
            "alias": i.alias,
            "run_id": i.run_id,
            "sha256": i.sha256,
            "artifact_uri": i.artifact_uri,
            "mlm_item_href": i.mlm_item_href,
            "provider": model.provider,
            "precision": model.precision,
            "bands": list(model.card.bands),
            "classes": list(model.card.classes),
            "processing_level": model.card.processing_level,
            "swaps": self.holder.swaps,
        }
