"""``eostream up --stack local``: the inference API and consumers against the real local stack
(results index in PostgreSQL, maps in MinIO). Writing endpoints take the deployment's API key,
kept in its home under ``secrets/inference-api-key``."""

from __future__ import annotations

from eostream.shared.deployment import (
    Deployment,
    LocalStack,
    ProcessSpec,
    service_command,
    service_env,
)

SERVICE = "inference"


def process(stack: LocalStack, deployment: Deployment, port: int) -> ProcessSpec:
    """Entry point of the ``eostream.processes`` group."""
    url = f"http://{deployment.host}:{port}"
    env = {
        **service_env("INFERENCE_", stack, deployment, port),
        "INFERENCE_API_KEY": deployment.secret("inference-api-key"),
        "INFERENCE_RESULTS_DB": stack.pg_dsn.rstrip("/") + "/results",
        "INFERENCE_MODEL_NAME": deployment.model_name,
        "INFERENCE_MODEL_ALIAS": "champion",
        "INFERENCE_MODELS_GROUP": f"inference-models-{deployment.name}",
        "INFERENCE_DEFER_SCENES_UNTIL_MODEL": "true",
        # the local stack's scenes are the 29RKH tile at 100 m: classify, marked coarse
        "INFERENCE_ALLOW_COARSE_SCENES": "true",
        # result items go to the stack's STAC API too, with asset hrefs of this process
        "INFERENCE_CATALOG__STAC_API_URL": stack.stac_api_url,
        "INFERENCE_PUBLIC_URL": url,
    }
    return ProcessSpec(
        SERVICE,
        service_command("eostream.inference", "serve"),
        env,
        port,
        deployment.host,
        {"REST API": url, "API docs": f"{url}/docs"},
    )
