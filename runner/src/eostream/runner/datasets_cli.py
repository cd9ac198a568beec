"""``eostream data``: download the demo's real data from its official sources, or check a folder.

Wired into the ``eostream`` command with ``app.add_typer(data_app, name="data")``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from eostream.runner.datasets import DEMO, MIRROR_ENV, default_data_dir
from eostream.runner.download import DataFetchError, download, file_digest, mirrored
from eostream.runner.provision import check_data, ensure_data
from eostream.shared.checkpoints import CHECKPOINTS, Checkpoint, checkpoint_path

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
    if not folder.is_dir():  # not a table of every file missing
        console.print(f"[red]{folder} is not a folder[/red]", soft_wrap=True)
        raise typer.Exit(1)
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


def fetch_checkpoint(
    entry: Checkpoint, mirror: str | None = None, client: httpx.Client | None = None
) -> Path:
    """Download ``entry`` once into the checkpoint cache, checked against its registry digest
    (a mismatch deletes the download); a file already there and right is kept."""
    final = checkpoint_path(entry)
    if final.is_file() and entry.accepts(file_digest(final)):
        return final
    url = mirrored(entry.url, mirror)
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    http = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60, connect=20))
    try:
        download(http, url, part, lambda _n: None)
    finally:
        if client is None:
            http.close()
    digest = file_digest(part)
    if not entry.accepts(digest):
        part.unlink()
        raise DataFetchError(
            f"{url}: sha256 {digest} but {entry.name} is {entry.expected}; the download was "
            "deleted (a changed or corrupted source, or a wrong mirror)"
        )
    part.replace(final)
    return final


@data_app.command()
def checkpoint(
    name: Annotated[str, typer.Argument(help=f"one of {', '.join(sorted(CHECKPOINTS))}")],
    mirror: MirrorOption = None,
) -> None:
    """Download a pretrained checkpoint once (checksummed) for `trainer fit --pretrained NAME`."""
    entry = CHECKPOINTS.get(name)
    if entry is None:
        raise DataFetchError(f"checkpoint {name!r} is unknown; use one of {sorted(CHECKPOINTS)}")
    console.print(f"checkpoint: {entry.description} from {mirrored(entry.url, mirror)}")
    path = fetch_checkpoint(entry, mirror)
    console.print(f"checkpoint: verified {path} (trainer fit --pretrained {name})", soft_wrap=True)


@data_app.command()
def urls(mirror: MirrorOption = None) -> None:
    """Print every URL the download uses; a mirror serves each under <mirror>/<host>/<path>."""
    lines = [
        mirrored(url, mirror) for url in [*DEMO.urls(), *(c.url for c in CHECKPOINTS.values())]
    ]
    try:
        for line in lines:
            typer.echo(line)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
