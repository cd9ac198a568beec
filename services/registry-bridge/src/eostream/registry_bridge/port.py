"""The model-registry port: what the gate and the promotions need of a model registry, in
eostream's own value objects. The MLflow adapter (:mod:`.registry`) implements it; nothing that
decides (gatekeeper, gating, promotion, the alias guard, the bridge) imports ``mlflow``.

Every method is blocking and retries transient failures itself, ending in
:class:`~eostream.registry_bridge.errors.RegistryUnavailableError`; the bridge calls them from
one worker thread per operation (see :mod:`.bridge`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from eostream.registry_bridge.holdout import Holdout
from eostream.registry_bridge.policy import Evaluation

#: images [N, C, 64, 64] float32 -> logits [N, 10]
Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class VersionInfo:
    """One registered model version as the bridge sees it."""

    name: str
    version: str
    status: str  # READY when registration finished
    run_id: str | None  # the training run that logged it (None: registered without a run)
    source: str  # where the registry loads the framework model from
    created_ms: int  # registration time, milliseconds since the epoch
    tags: Mapping[str, str] = field(default_factory=dict)
    description: str = ""  # the registry's free text (Markdown): the trainer's, then the verdict

    @property
    def ready(self) -> bool:
        return self.status == "READY"


class ModelRegistry(Protocol):
    """A model registry with versions, version and model tags, aliases and runs."""

    @property
    def tracking_uri(self) -> str: ...

    # --- reads ---
    def check(self) -> None:
        """Raise RegistryUnavailableError when the registry does not answer."""

    def get_version(self, name: str, version: str) -> VersionInfo:
        """The version; VersionNotFoundError when ``name`` has no such version."""
        ...

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name`` (none when the model is not registered)."""
        ...

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points to, None when the alias is not set."""
        ...

    def model_tags(self, name: str) -> dict[str, str]:
        """The registered model's own tags (empty when not registered)."""
        ...

    def run_metrics(self, run_id: str) -> dict[str, float]: ...

    def run_params(self, run_id: str) -> dict[str, str]: ...

    def run_href(self, run_id: str) -> str | None:
        """A browser link to the run, when the registry has a web UI."""
        ...

    def download_onnx(self, run_id: str) -> bytes | None:
        """The run's ONNX artifact, None when the run has none."""
        ...

    def download_chips(self, run_id: str, dest: Path) -> Path | None:
        """The chip dataset the run trained on (``tags.CHIPS_ARTIFACT_PATH``), downloaded into
        ``dest``: its ``chips.parquet``, or None when the run logged none."""
        ...

    def load_native(self, source: str, library: str) -> Any:
        """The framework model registered at ``source``: a torch module, or the scikit-learn
        estimator of a pixel model (``library`` is the card's)."""
        ...

    # --- writes ---
    def set_version_tags(self, name: str, version: str, values: Mapping[str, str]) -> None:
        """Write tags one by one in the mapping's order: the tag readers wait for goes last."""

    def set_version_description(self, name: str, version: str, text: str) -> None:
        """Replace the version's description with ``text``."""

    def set_model_tag(self, name: str, key: str, value: str) -> None: ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias``; nothing happens when it is not set."""

    def set_run_tags(self, run_id: str, values: Mapping[str, str]) -> None: ...

    def log_run_text(self, run_id: str, text: str, artifact_file: str) -> None: ...

    def log_run_metrics(self, run_id: str, values: Mapping[str, float]) -> None: ...

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
        """Score ``predict`` on ``holdout``, recorded as an evaluation run; (scores, run id)."""
        ...

    def ensure_webhook(self, url: str, secret: str, name: str) -> str:
        """Create or update the webhook called ``name`` (this deployment's) in the registry;
        returns its id."""
        ...
