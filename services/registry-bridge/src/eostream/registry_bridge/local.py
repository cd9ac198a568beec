"""``eostream up --stack local``: the registry bridge against the real local stack. It registers
its HMAC-signed webhook in the MLflow server, so new versions reach it at once; the reconcile loop
catches up on anything a webhook missed. Its REST write routes take the deployment's promoter
credential ``operator``, whose key is kept in the deployment's home under
``secrets/bridge-operator-key``. Shipped models go to the stack's STAC API (collection
``eostream-models``). On an MLflow with authentication it logs in as the bridge's account
(``EOSTREAM_MLFLOW_BRIDGE_*``, an MLflow admin: only admins may register webhooks)."""

from __future__ import annotations

import json

from eostream.shared.deployment import (
    Deployment,
    LocalStack,
    ProcessSpec,
    service_command,
    service_env,
)

SERVICE = "registry-bridge"


def process(stack: LocalStack, deployment: Deployment, port: int) -> ProcessSpec:
    """Entry point of the ``eostream.processes`` group."""
    url = f"http://{deployment.host}:{port}"
    env = {
        **service_env("BRIDGE_", stack, deployment, port, mlflow_account=stack.mlflow_bridge),
        "BRIDGE_MLFLOW_TRACKING_URI": stack.mlflow_uri,
        "BRIDGE_MODEL_NAMES": json.dumps([deployment.model_name]),
        "BRIDGE_WEBHOOK_SECRET": deployment.secret("mlflow-webhook"),
        "BRIDGE_API_KEYS": json.dumps(
            {"operator": {"key": deployment.secret("bridge-operator-key"), "role": "promoter"}}
        ),
        "BRIDGE_WEBHOOK_URL": f"{url}/webhooks/mlflow",
        "BRIDGE_RECONCILE_INTERVAL_SECONDS": "30",
        "BRIDGE_CATALOG__STAC_API_URL": stack.stac_api_url,  # the eostream-models collection
    }
    return ProcessSpec(
        SERVICE,
        service_command("eostream.registry_bridge", "run"),
        env,
        port,
        deployment.host,
        {"REST API": url},
        job="eostream-bridge",  # the name dashboards, alert rules and compose use
    )
