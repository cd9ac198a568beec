"""``eostream bridge run`` and ``eostream models promote|rollback|list|audit``.

``models promote|rollback`` act through the library with the operator's own MLflow and object
store access (no REST credential): they record ``--by``, by default the OS user, and write the
same audit entries as the REST API (via ``cli``).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from eostream.registry_bridge.settings import BridgeSettings
from eostream.shared.redaction import redact_urls
from eostream.shared.settings import configure_logging, load_settings

if TYPE_CHECKING:
    from eostream.registry_bridge.audit import AuditEntry, AuditLog

app = typer.Typer(
    name="bridge", help="registry-bridge: gate, promote and ship models.", no_args_is_help=True
)
models_app = typer.Typer(
    name="models", help="Promote, roll back and list model versions.", no_args_is_help=True
)


def _settings(*, reading: bool = False) -> BridgeSettings:
    """The bridge's settings; ``reading``: a command that publishes nothing (``list``,
    ``audit``) asks for no broker settings (the in-process bus stands in, unused)."""
    settings = load_settings(BridgeSettings, **({"bus": "memory"} if reading else {}))
    configure_logging(settings.log_level)
    return settings


@app.command("run")
def run_bridge() -> None:
    """Run the webhook server, the reconcile loop and the ModelVersionRegistered consumer."""
    # a bad environment is reported before the slow imports, and what they log before logging
    # is configured stays out of the service's log (as it did when they came first)
    settings = load_settings(BridgeSettings)
    from eostream.registry_bridge.service import run
    from eostream.shared.runtime import run_service

    configure_logging(settings.log_level)
    run_service(lambda: run(settings))


async def _with_bridge(action: str, **kwargs: str | bool) -> str:
    from eostream.registry_bridge.service import standalone_bridge
    from eostream.shared.deployment import mlflow_client_defaults

    mlflow_client_defaults()
    bridge = standalone_bridge(_settings())
    await bridge.bus.start()
    try:
        if action == "promote":
            event = await bridge.promote(
                str(kwargs["name"]),
                str(kwargs["version"]),
                by=str(kwargs["by"]),
                reason=str(kwargs["reason"]),
                force=bool(kwargs["force"]),
                via="cli",
            )
        else:
            event = await bridge.rollback(
                str(kwargs["name"]), by=str(kwargs["by"]), reason=str(kwargs["reason"]), via="cli"
            )
    finally:
        await bridge.bus.close()
    return (
        f"{event.name} v{event.version} is champion ({event.artifact_uri}, sha256 {event.sha256})"
    )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "cli"


def _fail(exc: Exception) -> NoReturn:
    typer.echo(f"eostream: {redact_urls(str(exc))}", err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def _one_line() -> Iterator[None]:
    """What the registry or MLflow refuses (an outage after its retries, a 401, a 403): one
    line and exit status 1, not MLflow's traceback."""
    from mlflow.exceptions import MlflowException

    from eostream.registry_bridge.errors import PromotionError, RegistryUnavailableError

    try:
        yield
    except (PromotionError, RegistryUnavailableError) as exc:
        _fail(exc)
    except MlflowException as exc:
        _fail(Exception(f"MLflow refused: {exc.message}"))


def _check(name: str, version: str | None = None) -> None:
    """A name (and version) of the safe form, or one line and exit 1 (nothing reaches MLflow)."""
    from eostream.registry_bridge.registry import InvalidNameError, check_model_name, check_version

    try:
        check_model_name(name)
        if version is not None:
            check_version(version)
    except InvalidNameError as exc:
        _fail(exc)


@models_app.command("promote")
def promote(
    name: str,
    version: str,
    reason: Annotated[str, typer.Option("--reason", help="why")],
    by: Annotated[str | None, typer.Option("--by", help="who promotes [the OS user]")] = None,
    force: Annotated[bool, typer.Option(help="promote even if the gate failed")] = False,
) -> None:
    """Make VERSION of NAME the champion: ship it and announce ModelPromoted."""
    _check(name, version)

    with _one_line():
        typer.echo(
            asyncio.run(
                _with_bridge(
                    "promote",
                    name=name,
                    version=version,
                    by=by or _os_user(),
                    reason=reason,
                    force=force,
                )
            )
        )


@models_app.command("rollback")
def rollback(
    name: str,
    by: Annotated[str | None, typer.Option("--by", help="who rolls back [the OS user]")] = None,
    reason: Annotated[str, typer.Option("--reason", help="why")] = "manual rollback",
) -> None:
    """Make the previous champion of NAME live again."""
    _check(name)

    with _one_line():
        typer.echo(
            asyncio.run(_with_bridge("rollback", name=name, by=by or _os_user(), reason=reason))
        )


@models_app.command("list")
def list_versions(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """List NAME's versions: aliases, gate verdict, accuracy, stage, shipped."""
    from rich.console import Console
    from rich.table import Table

    from eostream.registry_bridge.api import describe_versions
    from eostream.registry_bridge.registry import build_registry
    from eostream.shared.deployment import mlflow_client_defaults

    _check(name)
    mlflow_client_defaults()
    with _one_line():
        settings = _settings(reading=True)
        registry = build_registry(settings)
        log = _audit_log(settings)  # the verdicts as the bridge recorded them
        read: list[int] = []

        def entries() -> list[AuditEntry]:
            found = _audit_entries(log, name)
            read.append(len(found))
            return found

        rows = [r.model_dump(mode="json") for r in describe_versions(registry, name, entries)]
    if read == [0] and any(row["gate_tag"] for row in rows):
        typer.echo(
            f"eostream: no audit entries of {name!r} in {settings.store} store "
            f"{_store_where(settings)}: is it the bridge's? Verdicts there are shown unverified",
            err=True,
        )
    if not rows:  # an unknown name (a typo) printed an empty table and exited 0
        typer.echo(f"eostream: no registered versions of model {name!r} in MLflow", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=name)
    for column in ("version", "aliases", "gate", "accuracy", "stage", "shipped", "promoted_by"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(
                ", ".join(v) if isinstance(v, list) else str(v or "")
                for v in (
                    row["version"],
                    row["aliases"],
                    f"{row['gate']} (tag: {row['gate_tag']})" if row["gate_tag"] else row["gate"],
                    row["accuracy"],
                    row["stage"],
                    "yes" if row["shipped"] else "",
                    row["promoted_by"],
                )
            )
        )
    Console().print(table)


def _audit_entries(log: AuditLog, name: str) -> list[AuditEntry]:
    """The model's audit entries, or one line and exit 1 when the store cannot be read."""
    try:
        return log.entries(name)
    except Exception as exc:  # the store down after its retries, a bucket or key refused
        _fail(Exception(f"the audit log cannot be read ({exc})"))


def _store_where(settings: BridgeSettings) -> str:
    if settings.store == "local":
        return str(settings.local_store_root)
    return f"bucket {settings.bucket}"


def _audit_log(settings: BridgeSettings) -> AuditLog:
    """The bridge's audit log, read with the bridge's store settings and retries."""
    from eostream.registry_bridge.audit import AuditLog
    from eostream.shared.storage import build_object_store

    return AuditLog(
        build_object_store(settings),
        settings.audit_prefix,
        attempts=settings.retry_attempts,
        backoff=settings.retry_backoff_seconds,
        backoff_max=settings.retry_backoff_max_seconds,
    )


@models_app.command("audit")
def audit(name: str) -> None:
    """Print NAME's audit log (JSON lines, oldest first)."""
    _check(name)
    log = _audit_log(_settings(reading=True))
    found = 0
    for entry in _audit_entries(log, name):
        typer.echo(entry.model_dump_json())
        found += 1
    if not found:  # an unknown name (a typo) printed nothing and exited 0
        typer.echo(f"eostream: no audit entries for model {name!r}", err=True)
        raise typer.Exit(1)
