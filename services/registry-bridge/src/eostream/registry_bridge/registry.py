"""The MLflow adapter of the model-registry port (:class:`.port.ModelRegistry`): the only module,
with evaluation.py, that talks to MLflow. It answers in eostream's value objects
(:class:`.port.VersionInfo`); calls are retried with exponential backoff when MLflow does not
answer."""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.entities.webhook import WebhookEvent, WebhookEventStr
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from eostream.registry_bridge import evaluation
from eostream.registry_bridge.errors import RegistryUnavailableError, VersionNotFoundError
from eostream.registry_bridge.holdout import Holdout
from eostream.registry_bridge.policy import Evaluation
from eostream.registry_bridge.port import Predictor, VersionInfo
from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared import tags
from eostream.shared.errors import is_transient
from eostream.shared.redaction import redact_urls, without_userinfo

log = logging.getLogger(__name__)
T = TypeVar("T")

WEBHOOK_NAME = "eostream-registry-bridge"
WEBHOOK_EVENTS: tuple[WebhookEventStr, ...] = (
    "model_version.created",
    "model_version_alias.created",
)


#: A model name the bridge accepts (REST path, CLI argument, MLflow search filter): a letter or
#: digit, then letters, digits and ``_ . -``; at most 256 characters. No quotes, ``:`` or ``/``,
#: so a name can never change the meaning of a filter, a ``models:/`` URI or a store key.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,255}$"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
#: A model version: MLflow numbers them 1, 2, 3, ...
VERSION_PATTERN = r"^[1-9][0-9]{0,17}$"
_VERSION = re.compile(VERSION_PATTERN)


class InvalidNameError(ValueError):
    """A model name or version that is not of the safe form (:data:`MODEL_NAME_PATTERN`)."""


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.fullmatch(name):
        raise InvalidNameError(
            f"{name[:80]!r} is not a model name: use 1 to 256 letters, digits and _ . - "
            "(starting with a letter or digit)"
        )
    return name


def check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise InvalidNameError(f"{version[:40]!r} is not a model version: a positive integer")
    return version


def name_filter(name: str) -> str:
    """MLflow's search filter for the versions of ``name``: built only from a checked name."""
    return f"name = '{check_model_name(name)}'"


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def alias_missing(exc: BaseException) -> bool:
    """MLflow's answer for a model without that alias: INVALID_PARAMETER_VALUE, "Registered
    model alias champion not found." (a server that cannot be reached names the alias route in
    its error too, so the text alone does not tell: that one is INTERNAL_ERROR, and retried)."""
    return (
        isinstance(exc, MlflowException)
        and exc.error_code == "INVALID_PARAMETER_VALUE"
        and "alias" in str(exc).lower()
        and "not found" in str(exc).lower()
    )


def version_info(mv: ModelVersion) -> VersionInfo:
    return VersionInfo(
        name=str(mv.name),
        version=str(mv.version),
        status=str(mv.status),
        run_id=str(mv.run_id) if mv.run_id else None,
        source=str(mv.source),
        created_ms=int(mv.creation_timestamp or 0),
        tags=dict(mv.tags or {}),
        description=str(mv.description or ""),
    )


def build_registry(settings: BridgeSettings) -> MlflowRegistry:
    """The MLflow adapter the settings name (``BRIDGE_MLFLOW_TRACKING_URI``, retry policy)."""
    return MlflowRegistry(
        settings.mlflow_tracking_uri,
        attempts=settings.retry_attempts,
        backoff=settings.retry_backoff_seconds,
        backoff_max=settings.retry_backoff_max_seconds,
    )


class MlflowRegistry:
    """The model-registry port on an MLflow tracking server or database."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        backoff_max: float = 15.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        #: what messages and logs name: the URI without its user and password
        self.shown_uri = redact_urls(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)  # mlflow.models.evaluate logs to the global URI
        mlflow.set_registry_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._attempts = attempts
        self._backoff = backoff
        self._backoff_max = backoff_max

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries on transient failures; RegistryUnavailableError at the end."""
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._backoff, max=self._backoff_max),
            retry=retry_if_exception(is_transient),
            reraise=False,
            before_sleep=lambda state: log.warning(
                "MLflow %s failed (attempt %d of %d), retrying: %s",
                what,
                state.attempt_number,
                self._attempts,
                redact_urls(str(state.outcome.exception())) if state.outcome else "?",
            ),
        )
        try:
            return retrying(fn)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            # from None: the cause's own message names the URI with its password (MLflow's
            # "API request to http://user:password@..."); its redacted text is in ours
            raise RegistryUnavailableError(
                f"MLflow at {self.shown_uri} did not answer ({what}): {redact_urls(str(cause))}"
            ) from None

    # --- reads ---
    def check(self) -> None:
        self.call("search", lambda: self.client.search_registered_models(max_results=1))

    def get_version(self, name: str, version: str) -> VersionInfo:
        try:
            mv = self.call("get version", lambda: self.client.get_model_version(name, version))
        except MlflowException as exc:
            if is_not_found(exc):
                raise VersionNotFoundError(f"{name} has no version {version}") from None
            raise
        return version_info(mv)

    def versions(self, name: str) -> list[VersionInfo]:
        where = name_filter(name)

        def fetch() -> list[VersionInfo]:
            found: list[VersionInfo] = []
            token: str | None = None
            while True:
                page = self.client.search_model_versions(
                    filter_string=where, max_results=200, page_token=token
                )
                found.extend(version_info(mv) for mv in page)
                token = page.token
                if not token:
                    return found

        return self.call("search versions", fetch)

    def alias_version(self, name: str, alias: str) -> str | None:
        def fetch() -> str | None:
            try:
                return str(self.client.get_model_version_by_alias(name, alias).version)
            except MlflowException as exc:
                if is_not_found(exc) or alias_missing(exc):
                    return None
                raise

        return self.call("get alias", fetch)

    def model_tags(self, name: str) -> dict[str, str]:
        def fetch() -> dict[str, str]:
            try:
                return dict(self.client.get_registered_model(name).tags)
            except MlflowException as exc:
                if is_not_found(exc):
                    return {}
                raise

        return self.call("get model", fetch)

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return self.call("get run", lambda: dict(self.client.get_run(run_id).data.metrics))

    def run_params(self, run_id: str) -> dict[str, str]:
        return self.call("get run", lambda: dict(self.client.get_run(run_id).data.params))

    def run_href(self, run_id: str) -> str | None:
        uri = without_userinfo(self.tracking_uri)  # the link is public (STAC item)
        if not uri.startswith(("http://", "https://")):
            return None
        run = self.call("get run", lambda: self.client.get_run(run_id))
        return f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"

    def download_onnx(self, run_id: str) -> bytes | None:
        """The run's ``onnx/model.onnx`` artifact, or None when the run has none."""

        def fetch() -> bytes | None:
            with tempfile.TemporaryDirectory(prefix="eostream-bridge-") as tmp:
                try:
                    local = self.client.download_artifacts(run_id, tags.ONNX_ARTIFACT_PATH, tmp)
                except (MlflowException, OSError) as exc:
                    if is_transient(exc):
                        raise
                    log.info(
                        "run %s has no %s: %s",
                        run_id,
                        tags.ONNX_ARTIFACT_PATH,
                        redact_urls(str(exc)),
                    )
                    return None
                path = Path(local)
                return path.read_bytes() if path.is_file() else None

        return self.call("download ONNX", fetch)

    def download_chips(self, run_id: str, dest: Path) -> Path | None:
        def fetch() -> Path | None:
            try:
                local = self.client.download_artifacts(run_id, tags.CHIPS_ARTIFACT_PATH, str(dest))
            except (MlflowException, OSError) as exc:
                if is_transient(exc):
                    raise
                log.info(
                    "run %s has no %s: %s", run_id, tags.CHIPS_ARTIFACT_PATH, redact_urls(str(exc))
                )
                return None
            table = Path(local) / "chips.parquet"
            return table if table.is_file() else None

        return self.call("download chips", fetch)

    def load_native(self, source: str, library: str) -> Any:
        """The version's model in the library it was trained with: a scikit-learn estimator, a
        torch module, or a Keras 3 model (the trainer's keras family, on keras' torch backend a
        torch module too): whichever flavour the version's MLmodel names."""
        if library == "scikit-learn":
            import mlflow.sklearn

            return self.call("load sklearn model", lambda: mlflow.sklearn.load_model(source))
        import mlflow.models
        import mlflow.pytorch

        def load() -> Any:
            if "keras" in mlflow.models.get_model_info(source).flavors:
                return load_keras(source)
            return mlflow.pytorch.load_model(source)

        return self.call("load torch model", load)

    # --- writes ---
    def set_version_tags(self, name: str, version: str, values: Mapping[str, str]) -> None:
        """Write tags one by one, in the mapping's order: put the tag readers wait for last."""

        def write() -> None:
            for key, value in values.items():
                self.client.set_model_version_tag(name, version, key, value)

        self.call("set version tags", write)

    def set_version_description(self, name: str, version: str, text: str) -> None:
        self.call(
            "set version description",
            lambda: self.client.update_model_version(name, version, description=text),
        )

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self.call("set model tag", lambda: self.client.set_registered_model_tag(name, key, value))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.call("set alias", lambda: self.client.set_registered_model_alias(name, alias, version))

    def delete_alias(self, name: str, alias: str) -> None:
        def write() -> None:
            try:
                self.client.delete_registered_model_alias(name, alias)
            except MlflowException as exc:
                if not is_not_found(exc):
                    raise

        self.call("delete alias", write)

    def set_run_tags(self, run_id: str, values: Mapping[str, str]) -> None:
        def write() -> None:
            for key, value in values.items():
                self.client.set_tag(run_id, key, value)

        self.call("set run tags", write)

    def log_run_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.call("log text", lambda: self.client.log_text(run_id, text, artifact_file))

    def log_run_metrics(self, run_id: str, values: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, 0) for key, value in values.items()]
        self.call("log metrics", lambda: self.client.log_batch(run_id, metrics=batch))

    def evaluate(
        self,
        predict: Predictor,
        holdout: Holdout,
        *,
        experiment: str,
        run_name: str,
        params: Mapping[str, str],
        tags: Mapping[str, str],
    ) -> tuple[Evaluation, str]:
        """``mlflow.models.evaluate`` on the held-out set, as a run (not retried: a half-logged
        evaluation run is not repeated blindly)."""
        return evaluation.evaluate(
            predict, holdout, experiment=experiment, run_name=run_name, params=params, tags=tags
        )

    def webhooks(self) -> list[Any]:
        """Every webhook of the MLflow server, all pages."""
        found: list[Any] = []
        token: str | None = None
        while True:
            page = self.client.list_webhooks(page_token=token)
            found += list(page)
            token = page.token
            if not token:
                return found

    def ensure_webhook(self, url: str, secret: str, name: str = WEBHOOK_NAME) -> str:
        """Create (or update) the webhook called ``name`` (``BRIDGE_WEBHOOK_NAME``: one per
        deployment sharing this MLflow) in MLflow; returns its id."""

        events: list[WebhookEvent | Any] = [WebhookEvent.from_str(e) for e in WEBHOOK_EVENTS]

        def write() -> str:
            existing = [w for w in self.webhooks() if w.name == name]
            if existing:
                hook = self.client.update_webhook(
                    existing[0].webhook_id,
                    url=url,
                    events=events,
                    secret=secret,
                    status="ACTIVE",
                )
            else:
                hook = self.client.create_webhook(
                    name=name,
                    url=url,
                    events=events,
                    secret=secret,
                    description="eostream registry-bridge: gate, promote and ship new versions",
                )
            return str(hook.webhook_id)

        return self.call("ensure webhook", write)


def load_keras(source: str) -> Any:
    """A Keras 3 model on its torch backend. Keras picks its backend at its first import, from
    KERAS_BACKEND, and defaults to TensorFlow, which eostream does not install: so torch unless
    the process chose already."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import mlflow.keras

    if keras.backend.backend() != "torch":
        raise RuntimeError(f"keras runs on {keras.backend.backend()}; the bridge needs torch")
    return mlflow.keras.load_model(source)
