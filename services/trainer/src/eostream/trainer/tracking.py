"""Runs in MLflow: what each run logs, and its registered version (:mod:`.registered` reads
registered versions back; with it, the only modules of the trainer that use mlflow).

One experiment per task (the settings name it). A run records the request's parameters, one
metric row per epoch, per-class precision/recall, the confusion matrix as a PNG, the selected
training data as a dataset input (the stac-geoparquet table and its digest), the package version
and git commit (:mod:`eostream.shared.provenance`), the compute used and the run time, the epoch
curves as TensorBoard event files under ``tensorboard/``; then the model (pickled, with a signature
and a batch-2 input example), the ONNX export under ``onnx/`` and the same file as an
``mlflow.onnx`` model (``onnx_model``: pyfunc, ``mlflow models serve``), and finally a registered
model version whose tags carry the ModelCard and whose description says what it is and what it was
trained on. Registration is the last step and one call (version and tags together), so a crash
leaves no half-registered version (the description follows it at once).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from eostream.shared import errors, provenance, tags
from eostream.shared.modelcard import INPUT_NAME, OUTPUT_NAME, ModelCard
from eostream.shared.redaction import redact_urls
from eostream.trainer import registered
from eostream.trainer.figures import confusion_figure
from eostream.trainer.models import EuroSATNet
from eostream.trainer.registered import RegisteredVersion
from eostream.trainer.selection import Selection

log = logging.getLogger(__name__)

#: The distribution whose version every run records (with the commit: eostream.shared.provenance)
PACKAGE = "eostream-trainer"
#: Run artifact folders: TensorBoard event files, and the ONNX file as an mlflow.onnx model
TENSORBOARD_ARTIFACT = "tensorboard"
ONNX_MODEL_NAME = "onnx_model"


def is_transient(exc: BaseException) -> bool:
    """Whether an MLflow failure looks like a server that is down or slow (worth retrying): the
    rule the registry-bridge uses too (:func:`eostream.shared.errors.is_transient`)."""
    return errors.is_transient(exc)


def same_param(held: str, value: str) -> bool:
    """Whether a logged parameter and a new one are the same value: the same text, or the same
    number written otherwise (``1e-3`` and ``0.001``, ``07`` and ``7``)."""
    if held == value:
        return True
    try:
        return float(held) == float(value)
    except ValueError:
        return False


def code_version() -> provenance.CodeVersion:
    """The package version and git commit every run records (the image's baked commit where
    there is no checkout), and the checkout's uncommitted diff."""
    return provenance.code_version(PACKAGE)


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
        self._board: Any = None  # the active run's SummaryWriter (torch.utils.tensorboard)
        self._board_dir: Path | None = None

    def configure(self) -> str:
        project_run = os.environ.get("MLFLOW_RUN_ID")  # set by `mlflow run` (MLproject)
        if project_run:  # read before set_tracking_uri, which sets MLFLOW_TRACKING_URI
            self._follow_project(project_run, os.environ.get("MLFLOW_TRACKING_URI"))
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        if project_run:  # its run, and so its experiment, is the one to use
            experiment_id = self.client.get_run(project_run).info.experiment_id
            experiment = mlflow.set_experiment(experiment_id=experiment_id)
        else:
            self._create_beside_store()
            experiment = mlflow.set_experiment(self.experiment_name)
        self.experiment_id = str(experiment.experiment_id)
        return self.experiment_id

    def _create_beside_store(self) -> None:
        """A new experiment in a sqlite store keeps its artifacts beside the database file
        (``mlartifacts/``, as the embedded MLflow server does), not in ``./mlruns`` of whatever
        folder the first run happened to start in."""
        root = provenance.artifacts_beside(self.tracking_uri)
        if root is None or mlflow.get_experiment_by_name(self.experiment_name) is not None:
            return
        try:
            mlflow.create_experiment(self.experiment_name, artifact_location=root)
        except MlflowException as exc:  # another trainer made it first
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def _follow_project(self, run_id: str, project_uri: str | None) -> None:
        """Under ``mlflow run`` the project's run is in the tracking server MLflow was given
        (``MLFLOW_TRACKING_URI``): track there, not in ``TRAINER_MLFLOW_TRACKING_URI``'s (its
        default, a sqlite file in the working folder, answered "Run ... not found")."""
        if not project_uri or project_uri == self.tracking_uri:
            return
        log.warning(
            "under `mlflow run` (run %s): tracking to its MLflow %s, not %s",
            run_id,
            redact_urls(project_uri),
            redact_urls(self.tracking_uri),
        )
        if self.registry_uri == self.tracking_uri:
            self.registry_uri = project_uri
        if self.ui_url == self.tracking_uri.rstrip("/"):
            self.ui_url = project_uri.rstrip("/")
        self.tracking_uri = project_uri

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri, self.registry_uri)

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{self.experiment_id}/runs/{run_id}"

    @contextmanager
    def run(self, run_id: str | None, run_name: str, tags: Mapping[str, str]) -> Iterator[str]:
        """Start (or resume, when ``run_id`` is given) a run tagged with ``tags`` and the code
        version (:func:`code_version`; with tracked files changed since the commit, their diff
        as ``code/uncommitted.diff``); yields its id. Epoch scalars go to TensorBoard event files
        in a temporary folder, logged as ``tensorboard/`` before registration (or at the end)."""
        code = code_version()
        with (
            tempfile.TemporaryDirectory(prefix="eostream-tensorboard-") as board,
            mlflow.start_run(
                run_id=run_id,
                run_name=None if run_id else run_name,
                experiment_id=self.experiment_id,
                tags={**dict(tags), **code.run_tags()},
            ) as active,
        ):
            self._board_dir = Path(board)
            if code.diff:  # the commit is not all the code that ran
                mlflow.log_text(code.diff, "code/uncommitted.diff")
            try:
                yield str(active.info.run_id)
                self.log_tensorboard()
            finally:
                if self._board is not None:
                    self._board.close()
                self._board = self._board_dir = None

    def find_registered(self, name: str, request_id: str) -> RegisteredVersion | None:
        """The version a request already registered (redelivery after success), if any."""
        return registered.find_registered(self.client, self.experiment_id, name, request_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log ``params``, less those the run already holds with the same value: ``mlflow run``
        logs the MLproject's parameters as they were typed (``-P learning_rate=1e-3``) before
        the trainer logs its own (``0.001``), and MLflow refuses to change a parameter."""
        values = {k: str(v)[:6000] for k, v in params.items()}
        active = mlflow.active_run()
        held = self.client.get_run(active.info.run_id).data.params if active else {}
        fresh = {k: v for k, v in values.items() if k not in held or not same_param(held[k], v)}
        if fresh:
            mlflow.log_params(fresh)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """One epoch's metrics: to MLflow (step ``epoch``) and to the run's TensorBoard events."""
        self.log_metrics(metrics, step=epoch)
        if self._board_dir is None:
            return
        if self._board is None:
            from torch.utils.tensorboard import SummaryWriter

            self._board = SummaryWriter(log_dir=str(self._board_dir))
        for key, value in metrics.items():  # train_loss -> train/loss: TensorBoard's groups
            split, _, rest = key.partition("_")
            tag = f"{split}/{rest}" if split in ("train", "val") and rest else key
            self._board.add_scalar(tag, float(value), epoch)

    def log_tensorboard(self) -> None:
        """Log the event files written so far as ``tensorboard/`` (once; a no-op without any)."""
        if self._board is None or self._board_dir is None:
            return
        self._board.close()
        self._board = None
        mlflow.log_artifacts(str(self._board_dir), TENSORBOARD_ARTIFACT)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        mlflow.set_tags(dict(tags))

    def log_dataset(self, selection: Selection, name: str | None = None) -> None:
        """The selected patches (or chips) as the run's training input, named ``name``
        (default: ``eurosat-<band set>``), and their split as ``dataset/split.csv``."""
        from mlflow.data.pandas_dataset import from_pandas

        frame = _patches_frame(selection.patches)
        dataset = from_pandas(
            frame,
            source=str(selection.table.path),
            targets="label",
            name=name or f"eurosat-{selection.spec.band_set}",
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

    def log_evaluated(self, patches: Sequence[Any], band_set: str, source: str) -> None:
        """What an evaluation run (``trainer evaluate`` under ``mlflow run -e evaluate``) scored:
        the patches (:class:`.selection.Patch`) as its dataset input, ``source`` the folder
        they were read from; and the code version, as a training run records it."""
        from mlflow.data.pandas_dataset import from_pandas

        dataset = from_pandas(
            _patches_frame(patches),
            source=source,
            targets="label",
            name=f"eurosat-{band_set}-evaluated",
        )
        mlflow.log_input(dataset, context="evaluation")
        mlflow.set_tags(code_version().run_tags())

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
        # the counts too, to add up over runs or plot otherwise (rows: truth, columns: predicted)
        mlflow.log_dict(
            {"classes": list(classes), "matrix": np.asarray(result["confusion"]).tolist()},
            f"evaluation/{prefix}_confusion_matrix.json",
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
    def keras_autolog(self) -> Iterator[None]:
        """MLflow's Keras 3 autologging (``mlflow.keras.autolog``) around one ``model.fit`` in the
        active run: per-epoch loss/accuracy and val_* metrics, the fit's arguments, the optimizer
        configuration and the model summary. Off again afterwards (it patches ``keras.Model.fit``
        process-wide). The model and data are logged by the trainer itself (:meth:`log_dataset`,
        :meth:`log_keras_model`), so autolog logs neither. Only :mod:`eostream.trainer.keras_family`
        calls this: it has set ``KERAS_BACKEND=torch`` before keras (and so mlflow.keras) loads."""
        import mlflow.keras

        mlflow.keras.autolog(log_models=False, log_datasets=False, silent=True)
        try:
            yield
        finally:
            mlflow.keras.autolog(disable=True)

    def log_keras_model(self, model: Any, example: np.ndarray, requirements: list[str]) -> str:
        """A Keras 3 model as the run's ``model`` (the ``.keras`` format), like :meth:`log_model`
        for torch, with a signature (of a batch-2 example); returns its URI for :meth:`register`."""
        import mlflow.keras
        from mlflow.models import infer_signature

        output = np.asarray(model.predict(example, verbose=0))
        info = mlflow.keras.log_model(
            model,
            name="model",
            # no input_example: mlflow 3.17's keras flavour writes it before the model folder
            # exists (FileNotFoundError); the signature still says the shapes and types
            signature=infer_signature(example, output),
            pip_requirements=requirements,
        )
        return str(info.model_uri)

    def log_onnx_model(self, onnx_path: Path, example: np.ndarray) -> str:
        """The ONNX file, byte for byte, as an ``mlflow.onnx`` model named ``onnx_model``
        (pyfunc, ``mlflow models serve``): signature ``input`` [-1, C, P, P] float32 ->
        ``logits`` [-1, classes] (and a ``centre_cnn``'s per-pixel map output
        ``pixel_logits`` [-1, classes, B, B], which pyfunc also returns), a batch-2 input
        example, CPU execution."""
        from importlib.metadata import version

        import mlflow.onnx
        import onnx
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema, TensorSpec

        proto = onnx.load(str(onnx_path))
        example = example.astype(np.float32)
        classes = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
        outputs: list[ColSpec | TensorSpec] = [
            TensorSpec(np.dtype(np.float32), (-1, classes), OUTPUT_NAME)
        ]
        for extra in proto.graph.output[1:]:  # the map output, per pixel of the central block
            dims = tuple(d.dim_value for d in extra.type.tensor_type.shape.dim[1:])
            outputs.append(TensorSpec(np.dtype(np.float32), (-1, *dims), extra.name))
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]), INPUT_NAME)]),
            outputs=Schema(outputs),
        )
        info = mlflow.onnx.log_model(
            proto,
            name=ONNX_MODEL_NAME,
            signature=signature,
            input_example={INPUT_NAME: example},
            onnx_execution_providers=["CPUExecutionProvider"],
            save_as_external_data=False,  # one file, the same bytes as onnx/model.onnx
            # what serving it needs (else MLflow exports the whole uv workspace's lock)
            pip_requirements=[
                f"onnx=={version('onnx')}",
                f"onnxruntime=={version('onnxruntime')}",
                f"numpy=={version('numpy')}",
            ],
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

    def log_chips(self, table: Path) -> None:
        """The chip dataset a run trains on (``table``: its ``chips.parquet``; the table, its
        ``dataset.json`` and the arrays it names) under :data:`tags.CHIPS_ARTIFACT_PATH`: the
        bridge gates the model on its test chips from there when the trainer's disk is not its."""
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        folder = table.parent
        hrefs = {
            str(a["image"]["href"])
            for a in pq.read_table(table, columns=["assets"])["assets"].to_pylist()
        }
        for name in (table.name, "dataset.json"):
            if (folder / name).is_file():
                mlflow.log_artifact(str(folder / name), tags.CHIPS_ARTIFACT_PATH)
        for href in sorted(hrefs):
            sub = Path(href).parent.as_posix()
            path = f"{tags.CHIPS_ARTIFACT_PATH}/{sub}" if sub != "." else tags.CHIPS_ARTIFACT_PATH
            mlflow.log_artifact(str(folder / href), path)

    def register(
        self,
        model_uri: str,
        name: str,
        tags: Mapping[str, str],
        description: str | None = None,
    ) -> RegisteredVersion:
        """Register ``model_uri`` with ``tags`` (one call), after logging what the run still has
        pending (its TensorBoard events); then set the version's ``description``."""
        self.log_tensorboard()
        mv = mlflow.register_model(model_uri, name, tags=dict(tags))
        if description:
            self.client.update_model_version(name, str(mv.version), description=description)
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

    def load_base(self, uri: str, what: str = "base_model") -> tuple[EuroSATNet, ModelCard]:
        """The model and card of ``models:/NAME/VERSION`` (or ``@alias``) to fine-tune from."""
        return registered.load_base(self.client, uri, what)

    def resolve_version(self, uri: str) -> str:
        """``models:/NAME@alias`` as the ``models:/NAME/VERSION`` it names now."""
        mv = registered.base_version(self.client, uri)
        return f"models:/{mv.name}/{mv.version}"

    def recorded_split(self, uri: str) -> tuple[str, list[dict[str, str]] | str]:
        """The run id of the version ``uri`` and its run's ``dataset/split.csv`` rows."""
        return registered.recorded_split(self.client, self.tracking_uri, uri)

    def training_keys_of(self, uri: str) -> tuple[str, ...]:
        """The EuroSAT patches the version ``uri`` trained on (() when unknown)."""
        return registered.training_keys_of(self.client, self.tracking_uri, uri)


def _patches_frame(patches: Sequence[Any]) -> Any:
    """Patches (:class:`.selection.Patch`) as the table a run's dataset input and
    ``dataset/split.csv`` hold: id, class, label, href, split."""
    import pandas as pd  # type: ignore[import-untyped]

    return pd.DataFrame(
        [(p.item_id, p.class_name, p.label, p.href, p.split) for p in patches],
        columns=["id", "class", "label", "href", "split"],
    )
