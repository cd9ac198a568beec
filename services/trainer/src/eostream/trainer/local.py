"""``eostream up --stack local``: the trainer worker against the real local stack (Kafka for
requests, the MLflow server for tracking and the registry, its artifacts in MinIO). On an MLflow
with authentication it logs in as the trainer's account (``EOSTREAM_MLFLOW_TRAINER_*``)."""

from __future__ import annotations

from eostream.shared.deployment import (
    Deployment,
    LocalStack,
    ProcessSpec,
    service_command,
    service_env,
)

SERVICE = "trainer"


def process(stack: LocalStack, deployment: Deployment, port: int) -> ProcessSpec:
    """Entry point of the ``eostream.processes`` group."""
    env = {
        **service_env("TRAINER_", stack, deployment, port, mlflow_account=stack.mlflow_trainer),
        "TRAINER_MLFLOW_TRACKING_URI": stack.mlflow_uri,
        "TRAINER_CACHE_DIR": str(deployment.home / "trainer-cache"),
        "TRAINER_DEFAULT_MODEL_NAME": deployment.model_name,
        "TRAINER_DEVICE": "auto",
    }
    return ProcessSpec(
        SERVICE,
        service_command("eostream.trainer", "run"),
        env,
        port,
        deployment.host,
        {"MLflow": stack.mlflow_uri},
    )
