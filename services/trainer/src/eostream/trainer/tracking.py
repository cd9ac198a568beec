"""Everything MLflow: the only module of the trainer that imports mlflow.

One experiment per task (the settings name it). A run records the request's parameters, one
metric row per epoch, per-class precision/recall, the confusion matrix as a PNG, the selected
training data as a dataset input (the stac-geoparquet table and its digest), the git commit, the
compute used and the run time; then the model (pickled, with a signature and a batch-2 input
example), the ONNX export under ``onnx/``, and finally a registered model version whose tags
carry the ModelCard. Registration is the last step and one call (version and tags together), so
a crash leaves no half-registered version.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from eostream.shared import errors, tags
from eostream.shared.modelcard import ModelCard
from eostream.trainer.errors import BadTrainingRequestError
from eostream.trainer.models import EuroSATNet
from eostream.trainer.selection import Selection

log = logging.getLogger(__name__)

#: Tag names shared with the registry-bridge that reads them (``eostream.shared.tags``).
REQUEST_TAG = tags.REQUEST_ID
CARD_TAG = tags.MODEL_CARD
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    tags: dict[str, str]


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME/VERSION`` or ``models:/NAME@alias`` -> (name, version, alias)."""
    match = _MODEL_URI.match(uri)
    if match is None:
        raise BadTrainingRequestError(
            f"base_model {uri!r} is not models:/NAME/VERSION or models:/NAME@alias"
        )
    return match["name"], match["version"], match["alias"]


def is_transient(exc: BaseException) -> bool:
    """Whether an MLflow failure looks like a server that is down or slow (worth retrying): the
    rule the registry-bridge uses too (:func:`eostream.shared.errors.is_transient`)."""
    return errors.is_transient(exc)


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],  # noqa: S607 - git from PATH, fixed arguments
            capture_output=True,
            text=True,
            timeout=5,
            cwd=cwd or Path(__file__).parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


class Tracker:
    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        registry_uri: str | None = None,
        ui_url: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.experiment_name = experiment_name
        self.ui_url = (ui_url or tracking_uri).rstrip("/")
        self.experiment_id = ""

    def configure(self) -> str:
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        project_run = os.environ.get("MLFLOW_RUN_ID")  # set by `mlflow run` (MLproject)
        if project_run:  # its run, and so its experiment, is the one to use
            experiment_id = self.client.get_run(project_run).info.experiment_id
            experiment = mlflow.set_experiment(experiment_id=experiment_id)
        else:
            experiment = mlflow.set_experiment(self.experiment_name)
        self.experiment_id = str(experiment.experiment_id)
        return self.experiment_id

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri, self.registry_uri)

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{self.experiment_id}/runs/{run_id}"

    @contextmanager
    def run(self, run_id: str | None, run_name: str, tags: Mapping[str, str]) -> Iterator[str]:
        """Start (or resume, when ``run_id`` is given) a run; yields its id."""
        with mlflow.start_run(
            run_id=run_id,
            run_name=None if run_id else run_name,
            experiment_id=self.experiment_id,
            tags=dict(tags),
        ) as active:
            yield str(active.info.run_id)

    def find_registered(self, name: str, request_id: str) -> RegisteredVersion | None:
        """The version a request already registered (redelivery after success), if any."""
        client = self.client
        runs = client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{REQUEST_TAG}` = '{request_id}'"
        )
        for run in runs:
            for mv in client.search_model_versions(
                f"name = '{name}' and run_id = '{run.info.run_id}'"
            ):
                return RegisteredVersion(mv.name, str(mv.version), run.info.run_id, dict(mv.tags))
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        mlflow.set_tags(dict(tags))

    def log_dataset(self, selection: Selection) -> None:
        import pandas as pd  # type: ignore[import-untyped]
        from mlflow.data.pandas_dataset import from_pandas

        frame = pd.DataFrame(
            [(p.item_id, p.class_name, p.label, p.href, p.split) for p in selection.patches],
            columns=["id", "class", "label", "href", "split"],
        )
        dataset = from_pandas(
            frame,
            source=str(selection.table.path),
            targets="label",
            name=f"eurosat-{selection.spec.band_set}",
            digest=selection.digest[:32],
        )
        mlflow.log_input(dataset, context="training")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "split.csv"
            frame.to_csv(path, index=False)
            mlflow.log_artifact(str(path), "dataset")
            query = Path(tmp) / "selection.sql"
            query.write_text(selection.sql)
            mlflow.log_artifact(str(query), "dataset")

    def log_evaluation(
        self, prefix: str, result: Mapping[str, Any], classes: Sequence[str]
    ) -> None:
        metrics = {f"{prefix}_accuracy": result["accuracy"], f"{prefix}_loss": result["loss"]}
        for i, name in enumerate(classes):
            metrics[f"{prefix}_precision_{name}"] = float(result["precision"][i])
            metrics[f"{prefix}_recall_{name}"] = float(result["recall"][i])
        self.log_metrics(metrics)
        mlflow.log_figure(
            confusion_figure(result["confusion"], classes, prefix),
            f"evaluation/{prefix}_confusion_matrix.png",
        )

    def log_model(self, model: EuroSATNet, example: np.ndarray) -> str:
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        model = model.cpu().eval()
        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example, output),
            input_example=example,
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
        return str(info.model_uri)

    @contextmanager
    def sklearn_autolog(self) -> Iterator[None]:
        """MLflow's scikit-learn autologging (parameters, training metrics) for the fits inside;
        the model is logged by :meth:`log_sklearn_model`, with a signature, so its URI is known."""
        import mlflow.sklearn

        mlflow.sklearn.autolog(log_models=False, log_datasets=False, silent=True)
        try:
            yield
        finally:
            mlflow.sklearn.autolog(disable=True)

    def log_sklearn_model(
        self, estimator: Any, example: np.ndarray, trusted: Sequence[str] = ()
    ) -> str:
        """Log a pixel model's estimator (fitted on bands + spectral indices); returns its URI."""
        import mlflow.sklearn
        import sklearn
        from mlflow.models import infer_signature

        info = mlflow.sklearn.log_model(
            estimator,
            name="model",
            signature=infer_signature(example, estimator.predict_proba(example)),
            input_example=example,
            pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
            skops_trusted_types=list(trusted),  # our own estimator's classes (skops format)
        )
        return str(info.model_uri)

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        mlflow.log_artifact(str(path), artifact_path)

    def register(self, model_uri: str, name: str, tags: Mapping[str, str]) -> RegisteredVersion:
        mv = mlflow.register_model(model_uri, name, tags=dict(tags))
        return RegisteredVersion(mv.name, str(mv.version), str(mv.run_id), dict(tags))

    def download_artifact(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        """Fetch one artifact of a run (through the server's artifact proxy when there is one)."""
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path=artifact_path,
            dst_path=str(dst),
            tracking_uri=self.tracking_uri,
        )
        return Path(local)

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(name, version).tags)

    def load_base(self, uri: str) -> tuple[EuroSATNet, ModelCard]:
        """The model and card of ``models:/NAME/VERSION`` (or ``@alias``) to fine-tune from."""
        import mlflow.pytorch
        from mlflow.exceptions import MlflowException

        name, version, alias = parse_model_uri(uri)
        client = self.client
        try:
            mv = (
                client.get_model_version(name, version)
                if version
                else client.get_model_version_by_alias(name, alias or "")
            )
        except MlflowException as exc:
            raise BadTrainingRequestError(f"base_model {uri}: {exc.message}") from exc
        if CARD_TAG not in mv.tags:
            raise BadTrainingRequestError(f"base_model {uri} has no {CARD_TAG} tag")
        model = mlflow.pytorch.load_model(f"models:/{name}/{mv.version}", map_location="cpu")
        if not isinstance(model, EuroSATNet):
            raise BadTrainingRequestError(f"base_model {uri} is not an eostream EuroSATNet")
        return model, ModelCard.from_json(mv.tags[CARD_TAG])


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({title})")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value > matrix.max() / 2 else "black",
        )
    fig.tight_layout()
    plt.close(fig)
    return fig
