"""Create eostream's accounts on an MLflow server that runs its authentication app.

    MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=... \\
    EOSTREAM_MLFLOW_TRAINER_USERNAME=... EOSTREAM_MLFLOW_TRAINER_PASSWORD=... \\
    EOSTREAM_MLFLOW_BRIDGE_USERNAME=... EOSTREAM_MLFLOW_BRIDGE_PASSWORD=... \\
    python deploy/mlflow/init_auth.py http://127.0.0.1:15000

The server (``mlflow server --app-name basic-auth``) creates its admin itself on first start (from
``MLFLOW_AUTH_ADMIN_PASSWORD``); this script logs in as that admin (``MLFLOW_TRACKING_*``) and makes
sure that

- the trainer's account exists, is no admin, and holds the role ``eostream-trainer``: EDIT on every
  experiment and every registered model (log runs and artifacts, register versions, also in an
  experiment or model that someone else created first);
- the registry-bridge's account exists and is an admin: MLflow's auth app lets only admins create
  or list webhooks (``CreateWebhook: sender_is_admin`` in ``mlflow/server/auth/__init__.py``), and
  the bridge registers its own. It also reads runs, logs gate evaluations and moves aliases.

Passwords are set to the given ones on every run (rotating a secret = change it, run this again).
Idempotent; deploy/local/mlflow.sh runs it on ``up``, compose and Kubernetes as a one-shot job.
Failures print one line and exit 1.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from mlflow.exceptions import MlflowException, RestException
from mlflow.server.auth.client import AuthServiceClient
from mlflow.utils.workspace_utils import DEFAULT_WORKSPACE_NAME

TRAINER_ROLE = "eostream-trainer"
#: (resource type, pattern, permission) of the trainer's role.
TRAINER_GRANTS = (("experiment", "*", "EDIT"), ("registered_model", "*", "EDIT"))


@dataclass(frozen=True)
class Account:
    what: str
    username: str
    password: str = field(repr=False)
    admin: bool = False
    role: str | None = None


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"mlflow init-auth: error: {name} is not set")
    return value


def accounts() -> list[Account]:
    return [
        Account(
            "trainer",
            _env("EOSTREAM_MLFLOW_TRAINER_USERNAME"),
            _env("EOSTREAM_MLFLOW_TRAINER_PASSWORD"),
            role=TRAINER_ROLE,
        ),
        Account(
            "registry-bridge",
            _env("EOSTREAM_MLFLOW_BRIDGE_USERNAME"),
            _env("EOSTREAM_MLFLOW_BRIDGE_PASSWORD"),
            admin=True,  # webhooks are admin-only in MLflow's auth app
        ),
    ]


def wait_healthy(uri: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=3) as resp:  # noqa: S310 - the operator's URI
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"mlflow init-auth: error: {uri} not healthy after {timeout:.0f}s")
        time.sleep(1)


def ensure_user(client: AuthServiceClient, account: Account) -> str:
    try:
        client.get_user(account.username)
    except RestException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_user(account.username, account.password)
        done = "created"
    else:
        client.update_user_password(account.username, account.password)
        done = "exists, password set"
    client.update_user_admin(account.username, account.admin)
    return done


def ensure_trainer_role(client: AuthServiceClient, username: str) -> None:
    """The role (made once, its grants kept as TRAINER_GRANTS says) and the user's membership."""
    role = next(
        (r for r in client.list_roles(DEFAULT_WORKSPACE_NAME) if r.name == TRAINER_ROLE), None
    )
    if role is None:
        role = client.create_role(
            DEFAULT_WORKSPACE_NAME, TRAINER_ROLE, "eostream trainer: runs, artifacts, versions"
        )
    have = {(p.resource_type, p.resource_pattern): p for p in client.list_role_permissions(role.id)}
    for resource_type, pattern, permission in TRAINER_GRANTS:
        found = have.get((resource_type, pattern))
        if found is None:
            client.add_role_permission(role.id, resource_type, pattern, permission)
        elif found.permission != permission:
            client.update_role_permission(found.id, permission)
    if all(r.id != role.id for r in client.list_user_roles(username)):
        client.assign_role(username, role.id)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        usage = "usage: init_auth.py TRACKING_URI   (credentials in the environment)"
        print(usage, file=sys.stderr)  # noqa: T201
        return 2
    uri = argv[0]
    _env("MLFLOW_TRACKING_USERNAME")
    _env("MLFLOW_TRACKING_PASSWORD")
    wanted = accounts()
    wait_healthy(uri, float(os.environ.get("EOSTREAM_MLFLOW_TIMEOUT", "120")))
    client = AuthServiceClient(uri)
    try:
        for account in wanted:
            done = ensure_user(client, account)
            if account.role == TRAINER_ROLE:
                ensure_trainer_role(client, account.username)
            print(f"mlflow account {account.username} ({account.what}): {done}")  # noqa: T201
    except MlflowException as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"mlflow init-auth: error: {first}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
