"""``eostream ingest run | backfill | status``."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer

from eostream.ingest.settings import IngestSettings
from eostream.shared.errors import EostreamError
from eostream.shared.settings import configure_logging, load_settings

app = typer.Typer(
    name="ingest",
    help="Watch STAC APIs and catalogues; announce new Sentinel-2 scenes (SceneDiscovered).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _settings(**overrides: Any) -> IngestSettings:
    return load_settings(IngestSettings, **overrides)


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an RFC 3339 time (2024-04-01T00:00:00Z)"
        ) from None
    if value.tzinfo is None:
        raise typer.BadParameter(f"{text!r} has no time zone; add Z or +00:00")
    return value


@app.command()
def run() -> None:
    """Watch every configured source until SIGTERM (the poll in flight is finished)."""
    settings = _settings()  # a bad environment is reported before the slow imports
    from eostream.ingest.service import from_settings, serve
    from eostream.shared.runtime import run_service

    run_service(lambda: serve(settings, from_settings(settings)))


@app.command()
def backfill(
    source: Annotated[str, typer.Option(help="the configured source name")],
    start: Annotated[str, typer.Option(help="RFC 3339 start, e.g. 2024-04-01T00:00:00Z")],
    end: Annotated[str, typer.Option(help="RFC 3339 end")],
    replace: Annotated[
        bool, typer.Option("--replace", help="announce again items already announced")
    ] = False,
) -> None:
    """Announce the items of one source in a date range (the watermark is left alone)."""
    from eostream.ingest.service import from_settings, running, started

    begin, finish = _when(start), _when(end)
    if finish < begin:  # it scanned, found nothing and exited 0
        raise typer.BadParameter(f"--end {end} is before --start {start}")
    try:
        settings = _settings()
        configure_logging(settings.log_level)
        config = settings.source(source)
    except EostreamError as exc:
        _fail(exc)

    async def go() -> None:
        adapters = from_settings(settings)
        async with started(adapters.bus), running(settings, adapters) as watcher:
            watched = next(w for w in watcher.sources if w.config.name == config.name)
            report = await watcher.poll(
                watched, start=begin, end=finish, replace=replace, backfill=True
            )
        typer.echo(
            f"{source}: seen {report.seen}, published {report.published}, rejected "
            f"{report.rejected}, filtered {report.filtered}, already announced "
            f"{report.duplicates} in {report.seconds:.1f}s"
        )

    try:
        asyncio.run(go())
    except (EostreamError, OSError) as exc:  # a source or the bus down: one line, no traceback
        _fail(exc)


def _fail(exc: Exception) -> NoReturn:
    typer.echo(f"eostream ingest: {type(exc).__name__}: {exc}", err=True)
    raise typer.Exit(1) from None


@app.command()
def status() -> None:
    """Watermark and counts per source, from the state store."""
    from eostream.ingest.service import build_state

    settings = _settings(bus="memory")  # it reads the state store only: no Kafka settings

    async def go() -> None:
        store = build_state(settings)
        await store.open()
        try:
            rows = await store.summary()
        finally:
            await store.close()
        configured = {s.name for s in settings.sources}
        typer.echo(f"{'source':24} {'watermark':32} {'published':>9} {'rejected':>8}  last seen")
        for row in rows:
            mark = row.watermark.isoformat() if row.watermark else "-"
            last = row.last_seen_at.isoformat(timespec="seconds") if row.last_seen_at else "-"
            flag = "" if row.source in configured else "  (not configured)"
            typer.echo(
                f"{row.source:24} {mark:32} {row.published:>9} {row.rejected:>8}  {last}{flag}"
            )
        for name in sorted(configured - {r.source for r in rows}):
            typer.echo(f"{name:24} {'-':32} {0:>9} {0:>8}  never polled")

    asyncio.run(go())
