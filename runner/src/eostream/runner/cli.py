"""The ``eostream`` command. Each service adds its own sub-commands through the
``eostream.commands`` entry-point group (a ``typer.Typer`` app each), so this library never
imports a service.

A :class:`~eostream.shared.errors.ConfigError` anywhere ends the command with one clear line on
stderr and exit status 2, not a stack trace.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer

from eostream.shared.errors import ConfigError, EostreamError
from eostream.shared.redaction import redact_urls

app = typer.Typer(
    name="eostream",
    help="eostream: event-driven MLOps for Earth observation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def root() -> None:
    """eostream: event-driven MLOps for Earth observation."""


@app.command()
def version() -> None:
    """Print the installed eostream packages and their versions."""
    from importlib.metadata import distributions

    for dist in sorted(distributions(), key=lambda d: d.metadata["Name"]):
        if dist.metadata["Name"].startswith("eostream"):
            typer.echo(f"{dist.metadata['Name']} {dist.version}")


HomeOption = Annotated[
    Path, typer.Option(envvar="EOSTREAM_HOME", help="Where the embedded mode keeps its state")
]
MlflowPortOption = Annotated[
    int,
    typer.Option(
        envvar="EOSTREAM_EMBEDDED_MLFLOW_PORT",
        min=0,
        max=65535,
        help="Embedded mode: its MLflow server's port when it is free (else any free one); 0: "
        "any free one, for several embedded systems starting at once on one host",
    ),
]
DataOption = Annotated[
    Path | None,
    typer.Option(envvar="EOSTREAM_DATA_DIR", help="The real data folder (EuroSAT, scenes)"),
]


StackOption = Annotated[
    str,
    typer.Option(
        "--stack",
        help="embedded: every service in this process, no server needed; local: each service "
        "its own process against the real local stack (deploy/local/stack)",
    ),
]


@app.command()
def up(
    home: HomeOption = Path(".eostream"),
    data_dir: DataOption = None,
    stack: StackOption = "embedded",
    topic_prefix: Annotated[
        str, typer.Option(help="--stack local: namespace of this deployment's topics and groups")
    ] = "",
    mlflow_port: MlflowPortOption = 5000,
    ready_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, help="--stack local: seconds each service has to answer /livez when it starts"
        ),
    ] = 240.0,
    env_of: Annotated[
        str | None,
        typer.Option(
            "--env",
            metavar="SERVICE",
            help="--stack local: start nothing, print the settings SERVICE would run with "
            "(export lines: eval them, then run it by hand, e.g. `eostream trainer run`)",
        ),
    ] = None,
) -> None:
    """Run the whole system until Ctrl-C: in this process, or one process per service."""
    from eostream.shared.settings import configure_logging

    if env_of is not None:
        if stack != "local":
            raise ConfigError("--env SERVICE is for --stack local (the embedded mode has none)")
        print_service_env(env_of, home, data_dir, topic_prefix)
        return
    configure_logging("INFO")
    if stack == "local":
        up_local(home, data_dir, topic_prefix, ready_timeout=ready_timeout)
        return
    if stack != "embedded":
        raise ConfigError(f"--stack must be 'embedded' or 'local', not {stack!r}")
    from eostream.runner.demo import run as run_embedded
    from eostream.shared.runtime import run_service

    run_service(lambda: run_embedded(home, data_dir, demo=False, mlflow_port=mlflow_port))


def print_service_env(service: str, home: Path, data_dir: Path | None, topic_prefix: str) -> None:
    """``up --stack local --env SERVICE``: the ``export`` lines of the settings ``up --stack
    local`` runs SERVICE with (its variables read the stack's addresses: ``stack env``'s names
    are not the services' own), for a newcomer running one service by hand."""
    import os
    import shlex

    from eostream.runner.processes import (
        discover_process_factories,
        free_port,
        stack_from_script,
    )
    from eostream.shared.deployment import Deployment, LocalStack

    factories = discover_process_factories()
    if service not in factories:
        raise ConfigError(f"unknown service {service!r}; known: {', '.join(sorted(factories))}")
    script = Path("deploy/local/stack")
    if os.environ.get("EOSTREAM_KAFKA_BOOTSTRAP") or not script.exists():
        local = LocalStack.from_environ()
    else:  # in a checkout: the addresses the stack's script prints (it starts nothing here)
        local = stack_from_script(script, start=False)
    deployment = Deployment(
        home=home.resolve() / "local", data_dir=data_dir, topic_prefix=topic_prefix
    )
    spec = factories[service](local, deployment, free_port(deployment.host))
    for name, value in sorted(spec.env.items()):
        typer.echo(f"export {name}={shlex.quote(value)}")


def up_local(
    home: Path, data_dir: Path | None, topic_prefix: str, *, ready_timeout: float = 240.0
) -> None:
    """``eostream up --stack local``: the four services as processes, supervised. Ctrl-C or
    SIGTERM at any time stops what started; a service that fails to start is one line (ConfigError)
    naming it and its log."""
    import logging
    import os
    import signal
    import threading

    from rich.console import Console
    from rich.table import Table

    from eostream.runner.processes import (
        NotReady,
        ProcessGroup,
        StartInterrupted,
        stack_from_script,
    )
    from eostream.shared.deployment import Deployment, LocalStack

    log = logging.getLogger(__name__)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # from here on: no KeyboardInterrupt
        signal.signal(sig, lambda *_: stopping.set())
    script = Path("deploy/local/stack")
    try:
        if os.environ.get("EOSTREAM_KAFKA_BOOTSTRAP") or not script.exists():
            local = LocalStack.from_environ()
        else:  # in a checkout: start the stack (idempotent) and read its addresses
            local = stack_from_script(script)
    except ConfigError:
        if stopping.is_set():  # Ctrl-C reaches `stack up` too, which then fails
            log.info("stopped before the stack was up")
            return
        raise
    if stopping.is_set():
        return
    deployment = Deployment(
        home=home.resolve() / "local", data_dir=data_dir, topic_prefix=topic_prefix
    )
    group = ProcessGroup(local, deployment)
    try:  # a failure or a stop here has stopped every process started
        group.start(ready_timeout=ready_timeout, stop=stopping.is_set)
    except StartInterrupted:
        log.info("stopped before every service was ready")
        return
    except NotReady as exc:
        if stopping.is_set():  # the child ended because the Ctrl-C reached it too
            log.info("stopped before every service was ready")
            return
        raise ConfigError(exc.summary) from None
    table = Table(title="eostream: one process per service on the local stack")
    for column in ("service", "pid", "/metrics", "addresses", "log"):
        table.add_column(column)
    for name, process in group.processes.items():
        urls = "\n".join(f"{k}: {v}" for k, v in process.spec.urls.items())
        table.add_row(
            name, str(process.pid), f"{process.ops_url}/metrics", urls, str(process.log_path)
        )
    console = Console()
    console.print(table)
    console.print(f"MLflow {local.mlflow_uri}   Prometheus {local.prometheus_url or '-'}")
    console.print("Ctrl-C stops every service (SIGTERM: each drains its work first).")
    try:
        group.supervise(stopping.is_set)
    finally:
        group.stop()


@app.command()
def demo(
    home: HomeOption = Path(".eostream"),
    data_dir: DataOption = None,
    train_timeout: Annotated[float, typer.Option(help="Seconds to wait for a model")] = 900,
    exit_after: Annotated[
        bool,
        typer.Option(
            "--exit",
            envvar="EOSTREAM_DEMO_EXIT",
            help="Stop once the results and the map's accuracy are printed (scripts, tests); "
            "by default the REST APIs and the MLflow UI stay up until Ctrl-C",
        ),
    ] = False,
    mlflow_port: MlflowPortOption = 5000,
) -> None:
    """Train and promote a first model, map a real scene, score the map; serve until Ctrl-C.

    The map is scored against the scene's hand-made water labels, beside NDWI > 0."""
    from eostream.runner.demo import run as run_embedded
    from eostream.shared.runtime import run_service

    quiet_for_people()
    run_service(
        lambda: run_embedded(
            home,
            data_dir,
            demo=True,
            exit_after=exit_after,
            train_timeout=train_timeout,
            mlflow_port=mlflow_port,
        )
    )


def quiet_for_people() -> None:
    """Warnings and the progress lines a person watches (training epochs with rates), no chatter."""
    import logging
    import os
    import warnings

    from eostream.shared.settings import configure_logging

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    configure_logging("WARNING")
    for progress in ("eostream.trainer.task", "eostream.trainer.catalog"):
        logging.getLogger(progress).setLevel(logging.INFO)


def full_app() -> typer.Typer:
    """The ``eostream`` app with every service's commands, e.g. for typer's ``CliRunner`` in a
    notebook (loaded once per process)."""
    if not any(group.name == "data" for group in app.registered_groups):
        _load_commands()
    return app


def _load_commands() -> None:
    from eostream.runner.datasets_cli import data_app
    from eostream.runner.dlq_cli import dlq_app

    app.add_typer(data_app, name="data")
    app.add_typer(dlq_app, name="dlq")
    for ep in sorted(entry_points(group="eostream.commands"), key=lambda e: e.name):
        try:
            sub = ep.load()
        except Exception as exc:  # one broken service must not take every command down
            print(  # noqa: T201
                f"eostream: the '{ep.name}' commands are unavailable ({type(exc).__name__}: {exc})",
                file=sys.stderr,
            )
            continue
        if isinstance(sub, typer.Typer):
            app.add_typer(sub, name=ep.name)
        else:
            app.command(name=ep.name)(sub)


def main() -> None:
    _load_commands()
    run(app)


def run(command: typer.Typer) -> None:
    """Run a typer app; a ConfigError becomes one line on stderr and exit status 2, any other
    of eostream's own errors a command let through (a model that does not load, a scene that
    is not an item, a server down after its retries: their messages are for people) one line
    and exit status 1, its traceback logged at debug level."""
    try:
        command()
    except EostreamError as exc:
        # the one line a user sees, without a URL's credentials
        print(f"eostream: {redact_urls(str(exc))}", file=sys.stderr)  # noqa: T201
        if not isinstance(exc, ConfigError):
            logging.getLogger("eostream").debug("the command failed", exc_info=exc)
        raise SystemExit(2 if isinstance(exc, ConfigError) else 1) from None
