"""A :class:`LocalStack` is printed in logs and test reports: its secrets must not be."""

from __future__ import annotations

from eostream.shared.deployment import LocalStack, MlflowAccount

S3_SECRET = "s3-secret-of-this-stack"  # noqa: S105 - a test fixture
PG_PASSWORD = "pg-password-of-this-stack"  # noqa: S105 - a test fixture


def test_the_repr_of_a_stack_names_its_servers_not_its_secrets() -> None:
    stack = LocalStack(
        kafka_bootstrap="127.0.0.1:19092",
        s3_endpoint="127.0.0.1:19000",
        s3_access_key="eostream",
        s3_secret_key=S3_SECRET,
        pg_dsn=f"postgresql://eostream:{PG_PASSWORD}@127.0.0.1:15432/eostream",
        mlflow_uri="http://127.0.0.1:15000",
        stac_api_url="http://127.0.0.1:18082",
        mlflow_trainer=MlflowAccount("trainer", "mlflow-password-of-this-stack"),
    )
    shown = repr(stack)
    assert "127.0.0.1:19092" in shown and "trainer" in shown
    for secret in (S3_SECRET, PG_PASSWORD, "mlflow-password-of-this-stack"):
        assert secret not in shown
    assert stack.s3_settings().secret_key.get_secret_value() == S3_SECRET  # still there to use
