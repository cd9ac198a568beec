"""Fixtures every test suite in the repo can use: the data folder and the real local stack.

The stack's addresses come from `deploy/local/stack env` (the Makefile exports them). A test that
needs the stack and finds its variable missing fails with a message saying how to start it: it
never skips silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: start the real stack with `deploy/local/stack up` and export "
            'its addresses with `eval "$(deploy/local/stack env)"` (`make test` does both)',
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(require_env("EOSTREAM_DATA_DIR"))
    if not path.is_dir():
        pytest.fail(f"EOSTREAM_DATA_DIR={path} is not a directory", pytrace=False)
    return path


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return require_env("EOSTREAM_KAFKA_BOOTSTRAP")


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    return require_env("EOSTREAM_S3_ENDPOINT")


@pytest.fixture(scope="session")
def s3_credentials() -> tuple[str, str]:
    return require_env("EOSTREAM_S3_ACCESS_KEY"), require_env("EOSTREAM_S3_SECRET_KEY")


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    return require_env("EOSTREAM_PG_DSN")


@pytest.fixture(scope="session")
def mlflow_uri() -> str:
    return require_env("EOSTREAM_MLFLOW_URI")


@pytest.fixture(scope="session")
def stac_api_url() -> str:
    return require_env("EOSTREAM_STAC_API_URL")


@pytest.fixture(scope="session")
def prometheus_url() -> str:
    return require_env("EOSTREAM_PROMETHEUS_URL")
