"""Evaluate a model on the held-out set with ``mlflow.models.evaluate``, as an MLflow run.

The evaluation dataset is a table of held-out file names (relative to the data folder) and
labels, logged with its digest; the "model" is a callable that looks each file's pixels up in
the preloaded held-out tensor and runs the ONNX session. So the run records exactly which files
were used without a 12,288-column (or 53,248-column) table of pixels. Per-class recall comes
from an extra metric (``recall/<Class>``); the default classifier evaluator adds accuracy, F1,
precision and the confusion matrix.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import mlflow

# Imported here, at start-up and on the main thread, not lazily by mlflow.models.evaluate in a
# worker thread: a lazy import of the evaluators (sklearn, scipy) on one thread while another
# thread makes an MLflow REST call deadlocks on MLflow's import-hook lock (seen in the embedded
# mode: the reconcile loop's search_model_versions against the gate's evaluate). The evaluator
# registry too: its import runs a post-import hook that imports the evaluators while holding that
# lock, and a thread importing anything then (every MLflow REST call tries to import Databricks'
# `dbruntime`) holds the interpreter's import lock and waits for MLflow's (seen: a gate's first
# evaluate against the trainer's log_params).
import mlflow.models.evaluation.base
import mlflow.models.evaluation.default_evaluator
import mlflow.models.evaluation.evaluator_registry
import mlflow.models.evaluation.evaluators.classifier
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
from mlflow.data.pandas_dataset import from_pandas
from mlflow.metrics import MetricValue
from mlflow.models import make_metric

from eostream.registry_bridge.holdout import Holdout
from eostream.registry_bridge.policy import Evaluation
from eostream.shared import provenance
from eostream.shared.labels import MASK_UNKNOWN as UNKNOWN
from eostream.shared.modelcard import EUROSAT_CLASSES

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _no_flavor_autologging(enable_tracing: bool = True) -> Iterator[None]:
    del enable_tracing
    yield


# Around each evaluation MLflow reconfigures the autologging of every flavor whose library is
# loaded, inside its import-hook lock: it imports mlflow.pytorch and tries lightning and
# pytorch_lightning (absent: tried again every time). An import on any other thread meanwhile
# (the trainer's, or the `dbruntime` import every MLflow REST call tries) holds the interpreter's
# import lock and waits for MLflow's: the process hangs (seen in the embedded mode). The gate's
# model is a plain function, so there is no flavor autologging to configure.
_base: Any = mlflow.models.evaluation.base
_base.configure_autologging_for_evaluation = _no_flavor_autologging

Predictor = Callable[[np.ndarray], np.ndarray]  # images -> logits


def per_class_recall(
    predicted: list[str], actual: list[str], classes: tuple[str, ...] = EUROSAT_CLASSES
) -> dict[str, float]:
    p, t = np.asarray(predicted), np.asarray(actual)
    result: dict[str, float] = {}
    for cls in classes:
        mask = t == cls
        if mask.any():
            result[cls] = float((p[mask] == cls).mean())
    return result


def _recall_metric(predictions: pd.Series, targets: pd.Series, metrics: Any) -> MetricValue:
    # MLflow maps the parameters by name: these three names are part of its API
    del metrics
    classes = tuple(sorted({*map(str, targets), *map(str, predictions)}))
    return MetricValue(
        aggregate_results=per_class_recall(list(predictions), list(targets), classes)
    )


def _pixel_rows(
    predict: Predictor, holdout: Holdout, positions: Mapping[str, int]
) -> tuple[pd.DataFrame, Callable[[pd.DataFrame], np.ndarray]]:
    """The rows of a per-pixel evaluation (chip, pixel, its class) and the model that labels
    them: the predictor's per-pixel scores ``[N, classes, H, W]``, run once."""
    if holdout.masks is None:
        raise ValueError("a per-pixel evaluation needs the hold-out's masks")
    classes = np.asarray(holdout.classes)
    flat = holdout.masks.reshape(len(holdout.masks), -1)
    chip, pixel = np.nonzero(flat != UNKNOWN)
    frame = pd.DataFrame(
        {
            "file": np.asarray(holdout.files)[chip],
            "pixel": pixel,
            "label": classes[flat[chip, pixel]],
        }
    )
    predicted: list[np.ndarray] = []

    def model(rows: pd.DataFrame) -> np.ndarray:
        if not predicted:
            scores = predict(holdout.images)
            if scores.ndim != 4:
                raise ValueError(f"a per-pixel hold-out needs [N, classes, H, W] scores, got "
                                 f"{scores.shape}")  # fmt: skip
            predicted.append(scores.argmax(axis=1).reshape(len(scores), -1))
        index = np.asarray([positions[name] for name in rows["file"]])
        return np.asarray(classes[predicted[0][index, rows["pixel"].to_numpy()]])

    return frame, model


def evaluate(
    predict: Predictor,
    holdout: Holdout,
    *,
    experiment: str,
    run_name: str,
    params: Mapping[str, str],
    tags: Mapping[str, str],
) -> tuple[Evaluation, str]:
    """Evaluate, log an evaluation run, and return the scores and the run id. A hold-out with
    masks (a segmentation model's) is scored on every labelled pixel: a row per pixel."""
    positions = {name: i for i, name in enumerate(holdout.files)}
    classes = np.asarray(holdout.classes)  # EuroSAT's, or a chip dataset's own

    def per_image(frame: pd.DataFrame) -> np.ndarray:
        index = [positions[name] for name in frame["file"]]
        return np.asarray(classes[np.argmax(predict(holdout.images[index]), axis=1)])

    model: Callable[[pd.DataFrame], np.ndarray] = per_image
    if holdout.masks is None:
        frame = pd.DataFrame({"file": list(holdout.files), "label": holdout.label_names})
    else:
        frame, model = _pixel_rows(predict, holdout, positions)
    dataset = from_pandas(
        frame,
        source=holdout.source,
        targets="label",
        name=(
            f"eurosat-{holdout.band_set}-holdout-{holdout.digest[:12]}"
            if holdout.classes == EUROSAT_CLASSES
            else f"chips-{holdout.band_set}-holdout-{holdout.digest[:12]}"
        ),
    )
    _set_experiment(experiment)
    code = provenance.code_version("eostream-registry-bridge").run_tags()  # package, commit
    with (
        mlflow.start_run(run_name=run_name, tags={**code, **tags}) as run,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        mlflow.log_params(
            {
                **params,
                "holdout_digest": holdout.digest,
                "holdout_size": len(frame),
                "holdout_unit": "image" if holdout.masks is None else "pixel",
            }
        )
        result = mlflow.models.evaluate(  # type: ignore[no-untyped-call]
            model,
            dataset,
            model_type="classifier",
            evaluators="default",
            extra_metrics=[
                make_metric(  # type: ignore[no-untyped-call]
                    eval_fn=_recall_metric, greater_is_better=True, name="recall"
                )
            ],
            evaluator_config={
                "log_model_explainability": False,
                "label_list": list(holdout.classes),
            },
        )
    metrics = result.metrics
    recall = {
        cls: float(metrics[f"recall/{cls}"])
        for cls in holdout.classes
        if f"recall/{cls}" in metrics
    }
    evaluation = Evaluation(
        accuracy=float(metrics["accuracy_score"]),
        per_class_recall=recall,
        samples=int(metrics.get("example_count", len(frame))),
        dataset_digest=holdout.digest,
    )
    log.info("%s: accuracy %.4f on %d held-out images", run_name, evaluation.accuracy, len(frame))
    return evaluation, run.info.run_id


def _set_experiment(name: str) -> None:
    """``name`` as the active experiment; made new in a sqlite store, its artifacts beside the
    database (the gate's runs wrote ``./mlruns`` of whatever folder the bridge ran in)."""
    root = provenance.artifacts_beside(mlflow.get_tracking_uri())
    if root is not None and mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=root)
        except mlflow.exceptions.MlflowException as exc:  # another bridge made it first
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    mlflow.set_experiment(name)
