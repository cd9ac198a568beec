"""Registered versions read back: naming one (``models:/NAME/VERSION`` or ``@alias``), finding the
version a request already registered, describing a version, and what a base model's run recorded
(its model and card, the patches it trained on).

These are functions of an :class:`~mlflow.tracking.MlflowClient`; :class:`.tracking.Tracker`, which
logs runs and registers their models, calls them with its own client.
"""

from __future__ import annotations

import csv
import logging
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from eostream.shared import tags
from eostream.shared.modelcard import ModelCard
from eostream.trainer.errors import BadTrainingRequestError
from eostream.trainer.models import EuroSATNet
from eostream.trainer.selection import Selection, training_keys

log = logging.getLogger(__name__)

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    tags: dict[str, str]
    #: the run's final metrics (test accuracy...), where the lookup read them
    metrics: dict[str, float] = field(default_factory=dict)


def parse_model_uri(uri: str, what: str = "base_model") -> tuple[str, str | None, str | None]:
    """``models:/NAME/VERSION`` or ``models:/NAME@alias`` -> (name, version, alias); ``what``
    names the URI in an error (the request's field, or the CLI's option)."""
    match = _MODEL_URI.match(uri)
    if match is None:
        raise BadTrainingRequestError(
            f"{what} {uri!r} is not models:/NAME/VERSION or models:/NAME@alias"
        )
    return match["name"], match["version"], match["alias"]


def filter_value(value: str) -> str:
    """``value`` as a string literal of an MLflow search filter: in single quotes, or in double
    quotes when it holds a single quote (a request id is any text: ``bob's run``, or a dataset's
    name), so no value can end the literal and add clauses. MLflow's filters have no escape for
    a literal holding both kinds: that is refused (ValueError: a dead letter, not a crash loop).
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value[:80]!r} holds both kinds of quote: MLflow cannot search for it")


def version_description(card: ModelCard, selection: Selection, test_accuracy: float) -> str:
    """The registered version's description (Markdown): what it is, what it was trained on."""
    counts = selection.counts()
    spec = selection.spec
    return "\n".join(
        [
            f"**{card.name}**: EuroSAT {card.task} classifier, {card.architecture or '?'} "
            f"({card.library}{' ' + card.library_version if card.library_version else ''}), "
            f"band set {card.band_set} ({', '.join(card.bands)}), "
            f"{len(card.classes)} classes ({', '.join(card.classes)}).",
            "",
            f"Trained on {counts.get('train', 0)} patches (validation {counts.get('val', 0)}, "
            f"test {counts.get('test', 0)}; {spec.split} split, seed {spec.seed}) of the "
            f"{selection.table.band_set} catalogue `{selection.table.path.name}` "
            f"(dataset digest `{selection.table.digest}`, selection digest "
            f"`{selection.digest}`); gate hold-out excluded: {len(spec.exclude)} files.",
            *(["", f"Started from {card.pretrained_source}."] if card.pretrained_source else []),
            "",
            f"Test accuracy {test_accuracy:.4f}.",
        ]
    )


def find_registered(
    client: MlflowClient, experiment_id: str, name: str, request_id: str
) -> RegisteredVersion | None:
    """The version of ``name`` a request already registered (redelivery after success), if any:
    a run of the experiment tagged with the request's id, and a version made from that run."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tags.REQUEST_ID}` = {filter_value(request_id)}",
    )
    for run in runs:
        for mv in client.search_model_versions(
            f"name = {filter_value(name)} and run_id = {filter_value(run.info.run_id)}"
        ):
            metrics = {k: float(v) for k, v in run.data.metrics.items()}
            return RegisteredVersion(
                mv.name, str(mv.version), run.info.run_id, dict(mv.tags), metrics
            )
    return None


def base_version(client: MlflowClient, uri: str, what: str = "base_model") -> Any:
    """The registered version ``models:/NAME/VERSION`` (or ``@alias``) names."""
    name, version, alias = parse_model_uri(uri, what)
    try:
        return (
            client.get_model_version(name, version)
            if version
            else client.get_model_version_by_alias(name, alias or "")
        )
    except MlflowException as exc:
        raise BadTrainingRequestError(f"{what} {uri}: {exc.message}") from exc


def load_base(
    client: MlflowClient, uri: str, what: str = "base_model"
) -> tuple[EuroSATNet, ModelCard]:
    """The model and card of ``models:/NAME/VERSION`` (or ``@alias``) to fine-tune from (or to
    evaluate: ``what`` names the URI in an error)."""
    import mlflow.pytorch

    mv = base_version(client, uri, what)
    if tags.MODEL_CARD not in mv.tags:
        raise BadTrainingRequestError(f"{what} {uri} has no {tags.MODEL_CARD} tag")
    model = mlflow.pytorch.load_model(f"models:/{mv.name}/{mv.version}", map_location="cpu")
    if not isinstance(model, EuroSATNet):
        raise BadTrainingRequestError(f"{what} {uri} is not an eostream EuroSATNet")
    return model, ModelCard.from_json(mv.tags[tags.MODEL_CARD])


def recorded_split(
    client: MlflowClient, tracking_uri: str, uri: str
) -> tuple[str, list[dict[str, str]] | str]:
    """The run id of the version ``uri`` and its run's ``dataset/split.csv`` rows (id, class,
    label, href, split), or why there are none (a model of chips, one made elsewhere)."""
    mv = base_version(client, uri)
    try:
        with tempfile.TemporaryDirectory(prefix="eostream-split-") as tmp:
            path = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id,
                artifact_path="dataset/split.csv",
                dst_path=tmp,
                tracking_uri=tracking_uri,
            )
            with open(path, newline="") as f:
                return str(mv.run_id), list(csv.DictReader(f))
    except (MlflowException, OSError) as exc:
        return str(mv.run_id), str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def training_keys_of(client: MlflowClient, tracking_uri: str, uri: str) -> tuple[str, ...]:
    """The EuroSAT patches the version ``uri`` trained on ("Class/file stem":
    :func:`.selection.training_keys`); () when its run recorded none, with a warning."""
    _run, rows = recorded_split(client, tracking_uri, uri)
    if isinstance(rows, str):
        log.warning(
            "%s: the patches it trained on are unknown (%s); some may be in this run's "
            "validation or test split",
            uri,
            rows,
        )
        return ()
    return training_keys(rows)
