"""The ``eostream`` command. Each service adds its own sub-commands through the
``eostream.commands`` entry-point group (a ``typer.Typer`` app each), so this library never
imports a service.

A :class:`~eostream.shared.errors.ConfigError` anywhere ends the command with one clear line on
stderr and exit status 2, not a stack trace.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer

from eostream.shared.errors import ConfigError

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


def _load_commands() -> None:
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
    """Run a typer app; a ConfigError becomes one line on stderr and exit status 2."""
    try:
        command()
    except ConfigError as exc:
        print(f"eostream: {exc}", file=sys.stderr)  # noqa: T201 - the one line a user sees
        raise SystemExit(2) from None
