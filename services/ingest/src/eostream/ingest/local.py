"""``eostream up --stack local``: the ingest process against the real local stack.

By default it watches the stack's STAC API (collection ``sentinel-2-l2a``, every 10 s) and keeps
its seen-set in the stack's PostgreSQL, in a schema of its own per deployment.
"""

from __future__ import annotations

import json
import re

from eostream.shared.deployment import (
    Deployment,
    LocalStack,
    ProcessSpec,
    service_command,
    service_env,
)

SERVICE = "ingest"
COLLECTION = "sentinel-2-l2a"


def state_schema(deployment: Deployment) -> str:
    return "ingest_" + re.sub(r"[^a-z0-9_]", "_", deployment.name.lower())


def process(stack: LocalStack, deployment: Deployment, port: int) -> ProcessSpec:
    """Entry point of the ``eostream.processes`` group."""
    source = {
        "kind": "stac_api",
        "name": "local-stac-api",
        "url": stack.stac_api_url,
        "filter": {"collections": [COLLECTION]},
        "overlap_seconds": 30,
    }
    env = {
        **service_env("INGEST_", stack, deployment, port),
        "INGEST_SOURCES": json.dumps([source]),
        "INGEST_STATE": "postgres",
        "INGEST_PG_DSN": stack.pg_dsn,
        "INGEST_PG_SCHEMA": state_schema(deployment),
        "INGEST_POLL_INTERVAL_SECONDS": "10",
    }
    return ProcessSpec(
        SERVICE, service_command("eostream.ingest", "run"), env, port, deployment.host
    )
