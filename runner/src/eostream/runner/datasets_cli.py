"""``eostream data``: download the demo's real data from its official sources, or check a folder.

Wired into the ``eostream`` command with ``app.add_typer(data_app, name="data")``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from eostream.runner.datasets import DEMO, MIRROR_ENV, default_data_dir
from eostream.runner.download import mirrored
from eostream.runner.provision import check_data, ensure_data

data_app = typer.Typer(
    help="The real data the demo needs: download it (checksummed) or check a data folder.",
    no_args_is_help=True,
)
console = Console()

MirrorOption = Annotated[
    str | None,
    typer.Option(
        envvar=MIRROR_ENV,
        help="Base URL of a mirror holding each official URL under <mirror>/<host>/<path>",
    ),
]


@data_app.command()
def fetch(
    to: Annotated[
        Path | None, typer.Option("--to", help="Folder to fill (default: the download cache)")
    ] = None,
    mirror: MirrorOption = None,
) -> None:
    """Download what is missing, verify every file's sha256, lay it out as the demo reads it."""
    target = to or default_data_dir()
    source = f"the mirror {mirror}" if mirror else "the official sources"
    console.print(
        f"data: the demo's files ({DEMO.size / 1e6:.0f} MB in all) from {source} into {target}; "
        "only what is missing or wrong is downloaded",
        soft_wrap=True,
    )
    folder = ensure_data(target, mirror=mirror)
    console.print(f"data: verified in {folder} (EOSTREAM_DATA_DIR={folder})", soft_wrap=True)


@data_app.command()
def check(
    folder: Annotated[
        Path | None,
        typer.Argument(help="Data folder (default: $EOSTREAM_DATA_DIR, else the download cache)"),
    ] = None,
) -> None:
    """Re-hash the files the demo needs in a data folder; exit status 1 if any is wrong."""
    folder = folder or Path(os.environ.get("EOSTREAM_DATA_DIR") or default_data_dir())
    results = check_data(folder)
    bad = [r for r in results if not r.ok]
    if bad:
        table = Table(title=f"wrong or missing under {folder}")
        for column in ("file", "found"):
            table.add_column(column, overflow="fold")
        for r in bad:
            table.add_row(r.name, r.detail)
        console.print(table)
        console.print(f"[red]{len(bad)} of {len(results)} wrong or missing[/red]")
        raise typer.Exit(1)
    console.print(f"{folder}: all {len(results)} entries verified")


@data_app.command()
def urls(mirror: MirrorOption = None) -> None:
    """Print every URL the download uses; a mirror serves each under <mirror>/<host>/<path>."""
    for url in DEMO.urls():
        typer.echo(mirrored(url, mirror))
