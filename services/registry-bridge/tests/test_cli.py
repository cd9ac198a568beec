"""`eostream models promote|rollback|list` against a sqlite MLflow and the local store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
from typer.testing import CliRunner

from eostream.registry_bridge.cli import models_app

NAME = "eurosat-landcover"


def test_promote_rollback_list(
    register: Any,
    models: Any,
    tracking_uri: str,
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in {
        "BRIDGE_BUS": "memory",
        "BRIDGE_STORE": "local",
        "BRIDGE_LOCAL_STORE_ROOT": str(tmp_path / "objects"),
        "BRIDGE_MLFLOW_TRACKING_URI": tracking_uri,
        "EOSTREAM_DATA_DIR": str(data_dir),
        "BRIDGE_HOLDOUT__PER_CLASS": "10",
        "BRIDGE_GATE__MIN_ACCURACY": "0.2",
        "BRIDGE_GATE__MAX_CLASS_DROP": "0.5",
        "BRIDGE_REGISTRATION_GRACE_SECONDS": "0",
    }.items():
        monkeypatch.setenv(key, value)
    v1, v2, v3 = register(models.better), register(models.better), register(models.worse)
    runner = CliRunner()

    def champion() -> str:
        return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version)

    result = runner.invoke(models_app, ["promote", NAME, v1, "--by", "alice", "--reason", "first"])
    assert result.exit_code == 0, result.output
    assert f"{NAME} v{v1} is champion" in result.output and champion() == v1
    result = runner.invoke(models_app, ["promote", NAME, v2, "--by", "bob", "--reason", "newer"])
    assert result.exit_code == 0, result.output
    assert champion() == v2

    result = runner.invoke(models_app, ["promote", NAME, v3, "--by", "eve", "--reason", "why not"])
    assert result.exit_code == 1 and "failed the gate" in result.output
    assert champion() == v2

    result = runner.invoke(models_app, ["rollback", NAME, "--by", "carol", "--reason", "drill"])
    assert result.exit_code == 0, result.output
    assert champion() == v1
    t1 = mlflow.MlflowClient().get_model_version(NAME, v1).tags
    assert t1["eostream.promoted_by"] == "carol" and "drill" in t1["eostream.promoted_reason"]

    result = runner.invoke(models_app, ["list", NAME, "--json"])
    rows = {row["version"]: row for row in json.loads(result.output)}
    assert rows[v1]["aliases"] == ["champion"] and rows[v2]["stage"] == "Archived"
    assert rows[v3]["gate"] == "failed" and not rows[v3]["shipped"]

    result = runner.invoke(models_app, ["audit", NAME])  # the operators' names, via the CLI
    assert result.exit_code == 0, result.output
    audit = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(e["version"], e["verdict"]) for e in audit if e["action"] == "gated"} >= {
        (v1, "passed"),
        (v3, "failed"),
    }
    audit = [e for e in audit if e["action"] != "gated"]
    assert [
        (e["action"], e["from_version"], e["to_version"], e["by"], e["via"]) for e in audit
    ] == [
        ("promote", None, v1, "alice", "cli"),
        ("promote", v1, v2, "bob", "cli"),
        ("rollback", v2, v1, "carol", "cli"),
    ]
    # reading commands need no broker (they asked for BRIDGE_KAFKA__BOOTSTRAP_SERVERS)
    monkeypatch.setenv("BRIDGE_BUS", "kafka")
    monkeypatch.delenv("BRIDGE_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    result = runner.invoke(models_app, ["audit", NAME])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 6, result.output
    result = runner.invoke(models_app, ["audit", f"{NAME}-typo"])  # printed nothing, exit 0
    assert result.exit_code == 1
    assert result.stderr.strip() == f"eostream: no audit entries for model '{NAME}-typo'"
    result = runner.invoke(models_app, ["list", f"{NAME}-typo"])  # an empty table, exit 0
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"eostream: no registered versions of model '{NAME}-typo' in MLflow"
    )

    # a tag rewritten in MLflow: the list shows the verdict on record, and the tag beside it
    mlflow.MlflowClient().set_model_version_tag(NAME, v3, "eostream.gate", "passed")
    result = runner.invoke(models_app, ["list", NAME, "--json"])
    rows = {row["version"]: row for row in json.loads(result.stdout)}
    assert (rows[v3]["gate"], rows[v3]["gate_tag"]) == ("failed", "passed")
    assert (rows[v1]["gate"], rows[v1]["gate_tag"]) == ("passed", None)
    result = runner.invoke(models_app, ["list", NAME])
    assert "(tag:" in result.stdout  # the table (wrapped to the terminal) shows the tag too
    # pointed at another store (no audit log there): every verdict unverified, and a line says
    # where it looked
    monkeypatch.setenv("BRIDGE_LOCAL_STORE_ROOT", str(tmp_path / "elsewhere"))
    result = runner.invoke(models_app, ["list", NAME, "--json"])
    assert result.exit_code == 0, result.output
    assert {row["gate"] for row in json.loads(result.stdout)} == {"unverified"}
    assert "no audit entries of 'eurosat-landcover' in local store" in result.stderr


def test_mlflow_refusing_the_caller_is_one_line(
    mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The stack's MLflow (basic auth) asked without credentials answers 401: ``models list``,
    ``promote`` and ``rollback`` printed about 120 lines of MLflow's traceback."""
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {
        "BRIDGE_BUS": "memory",
        "BRIDGE_STORE": "local",
        "BRIDGE_LOCAL_STORE_ROOT": str(tmp_path / "objects"),
        "BRIDGE_MLFLOW_TRACKING_URI": mlflow_uri,
    }.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    for args in (["list", NAME], ["rollback", NAME, "--by", "carol"]):
        result = runner.invoke(models_app, args)
        assert result.exit_code == 1, (args, result.output)
        last = result.output.strip().splitlines()[-1]  # below the bridge's own log lines
        assert last.startswith("eostream: MLflow refused: ") and "401" in last, result.output
        assert "Traceback" not in result.output
