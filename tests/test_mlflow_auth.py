"""The stack's MLflow runs its authentication app: no write without an account, and the trainer's
and the registry-bridge's accounts can do their work (deploy/local/mlflow.sh,
deploy/mlflow/init_auth.py). Against the MLflow that ``deploy/local/stack env`` names."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from eostream.registry_bridge.local import process as bridge_process
from eostream.shared.deployment import STACK_VARIABLES, Deployment, LocalStack, MlflowAccount
from eostream.trainer.local import process as trainer_process

API = "/api/2.0/mlflow"


def account(service: str) -> MlflowAccount:
    found = MlflowAccount.from_environ(os.environ, service)
    if found is None:
        pytest.fail(
            f"no MLflow account for the {service} in the environment (an MLflow without "
            "authentication?): `deploy/local/stack up`, then "
            '`eval "$(deploy/local/stack env)"`',
            pytrace=False,
        )
    return found


@pytest.fixture(scope="module")
def uri(mlflow_uri: str) -> str:
    return mlflow_uri.rstrip("/")


@contextmanager
def logged_in(who: MlflowAccount) -> Iterator[None]:
    """The MLflow client reads its credentials from the environment on every request."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in who.client_env().items():
            mp.setenv(name, value)
        yield


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def post(uri: str, path: str, body: dict[str, Any], auth: tuple[str, str] | None) -> int:
    return requests.post(f"{uri}{API}/{path}", json=body, auth=auth, timeout=30).status_code


def test_the_local_trainer_and_bridge_log_in_as_their_own_accounts(tmp_path: Path) -> None:
    """`stack env` -> LocalStack -> each process's environment (eostream up --stack local, e2e)."""
    addresses = {var: f"value-of-{var}" for var in STACK_VARIABLES.values()}
    accounts = {
        "EOSTREAM_MLFLOW_TRAINER_USERNAME": "eostream-trainer",
        "EOSTREAM_MLFLOW_TRAINER_PASSWORD": "trainer-pw",
        "EOSTREAM_MLFLOW_BRIDGE_USERNAME": "eostream-bridge",
        "EOSTREAM_MLFLOW_BRIDGE_PASSWORD": "bridge-pw",
    }
    deployment = Deployment(home=tmp_path)
    stack = LocalStack.from_environ({**addresses, **accounts})
    assert "trainer-pw" not in repr(stack)
    trainer = trainer_process(stack, deployment, 18001).env
    bridge = bridge_process(stack, deployment, 18002).env
    assert (trainer["MLFLOW_TRACKING_USERNAME"], trainer["MLFLOW_TRACKING_PASSWORD"]) == (
        "eostream-trainer",
        "trainer-pw",
    )
    assert (bridge["MLFLOW_TRACKING_USERNAME"], bridge["MLFLOW_TRACKING_PASSWORD"]) == (
        "eostream-bridge",
        "bridge-pw",
    )
    open_stack = LocalStack.from_environ(addresses)  # an MLflow without authentication
    assert "MLFLOW_TRACKING_USERNAME" not in trainer_process(open_stack, deployment, 18001).env


@pytest.mark.stack
def test_anonymous_writes_and_reads_are_refused(uri: str) -> None:
    name = unique("anonymous")
    assert post(uri, "experiments/create", {"name": name}, None) == 401
    assert post(uri, "registered-models/create", {"name": name}, None) == 401
    assert post(uri, "runs/create", {"experiment_id": "0"}, None) == 401
    hook = {"name": name, "url": "http://127.0.0.1:9/x", "events": []}
    assert post(uri, "webhooks", hook, None) == 401
    anonymous_read = requests.get(f"{uri}{API}/registered-models/search", timeout=30)
    assert anonymous_read.status_code == 401
    assert requests.get(f"{uri}/health", timeout=30).status_code == 200  # probes need no account


@pytest.mark.stack
def test_a_wrong_password_is_refused(uri: str) -> None:
    trainer = account("trainer")
    wrong = (trainer.username, trainer.password + "x")
    assert post(uri, "experiments/create", {"name": unique("wrong")}, wrong) == 401
    assert post(uri, "experiments/create", {"name": unique("nobody")}, ("nobody", "x")) == 401


@pytest.mark.stack
def test_the_trainer_logs_runs_and_registers_versions_but_administers_nothing(
    uri: str, tmp_path: Path
) -> None:
    trainer = account("trainer")
    # the setup runs as the operator's (admin) account, as `stack env` exports it
    assert os.environ.get("MLFLOW_TRACKING_USERNAME"), "MLFLOW_TRACKING_USERNAME is not set"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    # an experiment someone else made first (the operator): the trainer's role still lets it log
    shared_experiment = client.create_experiment(unique("auth-shared"))  # as the admin (env)
    name = unique("auth-model")
    (tmp_path / "weights.txt").write_text("not really weights")
    with logged_in(trainer):
        own = client.create_experiment(unique("auth-trainer"))
        for experiment in (own, shared_experiment):
            run = client.create_run(experiment)
            client.log_param(run.info.run_id, "lr", "0.01")
            client.log_metric(run.info.run_id, "test_accuracy", 0.9)
            client.log_artifact(run.info.run_id, str(tmp_path / "weights.txt"), "model")
            client.set_terminated(run.info.run_id)
        client.create_registered_model(name)
        source = f"runs:/{run.info.run_id}/model"
        version = client.create_model_version(name, source, run.info.run_id)
        assert version.version == "1"
        assert client.get_run(run.info.run_id).data.metrics["test_accuracy"] == 0.9
    trainer_auth = (trainer.username, trainer.password)
    user = {"username": unique("u"), "password": uuid.uuid4().hex}
    assert post(uri, "users/create", user, trainer_auth) == 403
    hook = {"name": unique("hook"), "url": "http://127.0.0.1:9/x", "events": []}
    assert post(uri, "webhooks", hook, trainer_auth) == 403


@pytest.mark.stack
def test_the_bridge_reads_runs_moves_aliases_and_registers_webhooks(
    uri: str, tmp_path: Path
) -> None:
    trainer, bridge = account("trainer"), account("bridge")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = unique("auth-bridge")
    (tmp_path / "model.onnx").write_bytes(b"onnx?")
    with logged_in(trainer):  # what the trainer leaves behind
        run = client.create_run(client.create_experiment(unique("auth-bridge")))
        client.log_metric(run.info.run_id, "test_accuracy", 0.8)
        client.log_artifact(run.info.run_id, str(tmp_path / "model.onnx"), "onnx")
        client.create_registered_model(name)
        client.create_model_version(name, f"runs:/{run.info.run_id}/onnx", run.info.run_id)
    with logged_in(bridge):
        assert client.get_run(run.info.run_id).data.metrics == {"test_accuracy": 0.8}
        got = Path(client.download_artifacts(run.info.run_id, "onnx/model.onnx", str(tmp_path)))
        assert got.read_bytes() == b"onnx?"
        client.set_tag(run.info.run_id, "eostream.gate", "passed")
        client.log_metric(run.info.run_id, "gate_accuracy", 0.81)
        client.set_model_version_tag(name, "1", "eostream.gate", "passed")
        client.set_registered_model_tag(name, "eostream.champion_history", "1")
        client.set_registered_model_alias(name, "champion", "1")
        assert client.get_model_version_by_alias(name, "champion").version == "1"
        client.delete_registered_model_alias(name, "champion")
        hook = client.create_webhook(
            unique("auth-bridge"),
            "http://127.0.0.1:9/webhooks/mlflow",
            ["model_version.created"],
            secret=uuid.uuid4().hex,
            status="DISABLED",
        )
        try:
            assert any(h.webhook_id == hook.webhook_id for h in client.list_webhooks())
        finally:
            client.delete_webhook(hook.webhook_id)
    with logged_in(trainer), pytest.raises(MlflowException, match=r"PERMISSION_DENIED|403"):
        client.list_webhooks()
