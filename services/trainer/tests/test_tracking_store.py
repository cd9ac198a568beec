"""A run tracked to a sqlite store keeps its artifacts beside the database, and `trainer fit`
names a run in such a store in words people can act on (it has no URL)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from eostream.shared import provenance
from eostream.shared.provenance import run_reference
from eostream.trainer.tracking import Tracker


def test_artifacts_go_beside_the_database_not_into_the_working_folder(
    sqlite_mlflow: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tracker = Tracker(sqlite_mlflow, "beside")
    tracker.configure()
    with mlflow.start_run(experiment_id=tracker.experiment_id) as run:
        mlflow.log_text("hello", "note.txt")
    assert (tmp_path / "mlartifacts" / run.info.run_id / "artifacts" / "note.txt").is_file()
    assert not (elsewhere / "mlruns").exists()
    # a second tracker (another process) finds the same experiment
    again = Tracker(sqlite_mlflow, "beside")
    assert again.configure() == tracker.experiment_id


def test_only_a_sqlite_store_gets_a_folder_chosen() -> None:
    assert provenance.artifacts_beside("http://127.0.0.1:5000") is None
    beside = provenance.artifacts_beside("sqlite:////srv/x/mlflow.db")
    assert beside == "file:///srv/x/mlartifacts"


def test_a_run_in_a_local_store_is_named_by_id_and_store() -> None:
    url = "http://127.0.0.1:5000/#/experiments/3/runs/abc"
    assert run_reference(url) == url
    local = run_reference("sqlite:///.eostream/mlflow.db/#/experiments/1/runs/4242")
    assert local == (
        "4242 (experiment 1) in sqlite:///.eostream/mlflow.db; to look at it: "
        "mlflow ui --backend-store-uri sqlite:///.eostream/mlflow.db"
    )


def test_a_run_from_a_changed_checkout_keeps_its_diff(
    sqlite_mlflow: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit alone is not the code that ran: the run is tagged dirty and keeps the diff,
    read once with the tag (`git diff HEAD` ran twice a run)."""
    reads: list[str] = []

    def changed(distribution: str, cwd: Path | None = None) -> provenance.CodeVersion:
        reads.append(distribution)
        return provenance.CodeVersion(
            distribution, "1.0", "abc", "git", dirty=True, diff="+x = 2\n"
        )

    monkeypatch.setattr(provenance, "code_version", changed)
    tracker = Tracker(sqlite_mlflow, "dirty")
    tracker.configure()
    with tracker.run(None, "dirty-run", {}) as run_id:
        pass
    run = mlflow.get_run(run_id)
    assert run.data.tags[provenance.DIRTY_TAG] == "true"
    diff = mlflow.artifacts.load_text(f"runs:/{run_id}/code/uncommitted.diff")
    assert diff == "+x = 2\n" and reads == ["eostream-trainer"]


def test_a_parameter_logged_as_typed_is_not_logged_again_in_another_spelling(
    sqlite_mlflow: str,
) -> None:
    """`mlflow run -P learning_rate=1e-3` logs "1e-3" before the trainer logs 0.001: the same
    value, so it stays as typed (MLflow refuses to change a parameter); another value is still
    refused, and new keys are logged."""
    tracker = Tracker(sqlite_mlflow, "params")
    tracker.configure()
    with mlflow.start_run(experiment_id=tracker.experiment_id) as run:
        mlflow.log_params({"learning_rate": "1e-3", "seed": "07"})
        tracker.log_params({"learning_rate": 0.001, "seed": 7, "epochs": 2})
        with pytest.raises(mlflow.exceptions.MlflowException, match="Changing param values"):
            tracker.log_params({"learning_rate": 0.01})
    params = mlflow.get_run(run.info.run_id).data.params
    assert params == {"learning_rate": "1e-3", "seed": "07", "epochs": "2"}
