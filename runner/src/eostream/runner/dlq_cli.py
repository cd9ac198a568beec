"""``eostream dlq list | show | replay``: the dead-letter topic for operators.

Settings (``EOSTREAM_`` prefix, as every service's bus settings): ``EOSTREAM_BUS`` (kafka),
``EOSTREAM_KAFKA__BOOTSTRAP_SERVERS`` (else the local stack's ``EOSTREAM_KAFKA_BOOTSTRAP``),
``EOSTREAM_KAFKA__TOPIC_PREFIX`` (a deployment's namespace), ``EOSTREAM_KAFKA__DEAD_LETTER_TOPIC``;
``--bootstrap-servers`` and ``--topic-prefix`` override them. ``--home HOME`` reads (and replays
onto) the embedded system's bus instead: the durable log ``HOME/bus.sqlite`` of ``eostream up
--home HOME``, while it runs or after.

Every error ends the command with one line on stderr (status 2 for a bad selection or setting,
1 for a failure on the way), never a traceback.

Wired into the ``eostream`` command with ``app.add_typer(dlq_app, name="dlq")``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic_settings import SettingsConfigDict
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from eostream.shared import deadletters as dl
from eostream.shared import deadletters_bus as dlb
from eostream.shared.bus.base import Bus
from eostream.shared.errors import ConfigError
from eostream.shared.settings import ServiceSettings, configure_logging, load_settings

dlq_app = typer.Typer(
    help="Dead letters: list them, show one, replay them onto their original topic.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

EMBEDDED = (
    "EOSTREAM_BUS=memory is a bus inside one process: for the embedded system (`eostream up`), "
    "name its home: `eostream dlq list --home HOME` (its bus is HOME/bus.sqlite)"
)
T = TypeVar("T")


class DlqSettings(ServiceSettings):
    """The bus the tool reads: ``EOSTREAM_BUS``, ``EOSTREAM_KAFKA__*``."""

    model_config = SettingsConfigDict(
        env_prefix="EOSTREAM_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )


def load_dlq_settings(
    bootstrap_servers: str | None = None, topic_prefix: str | None = None
) -> DlqSettings:
    kafka: dict[str, Any] = {}
    stack = os.environ.get("EOSTREAM_KAFKA_BOOTSTRAP")
    if bootstrap_servers:
        kafka["bootstrap_servers"] = bootstrap_servers
    elif stack and not os.environ.get("EOSTREAM_KAFKA__BOOTSTRAP_SERVERS"):
        kafka["bootstrap_servers"] = stack
    if topic_prefix is not None:
        kafka["topic_prefix"] = topic_prefix
    settings = load_settings(DlqSettings, **({"kafka": kafka} if kafka else {}))
    if settings.bus == "memory":
        raise ConfigError(EMBEDDED)
    return settings


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"eostream dlq: {message}", err=True)
    return typer.Exit(code)


def _bus_of(home: Path | None, bootstrap_servers: str | None, topic_prefix: str | None) -> Bus:
    """The embedded system's log at ``home``, else the Kafka the settings and options name."""
    from eostream.shared.bus import build_bus
    from eostream.shared.embedded import BUS_FILE, embedded_bus

    if home is None:
        return build_bus(load_dlq_settings(bootstrap_servers, topic_prefix), service="dlq")
    if bootstrap_servers or topic_prefix is not None:
        raise ConfigError("--home reads the embedded system's bus: no Kafka options beside it")
    if not (home / BUS_FILE).is_file():
        raise ConfigError(f"--home {home}: no embedded bus ({BUS_FILE}) there")
    return embedded_bus(home, service="dlq")


def _run(bus_of: Callable[[], Bus], work: Callable[[Bus], Awaitable[T]]) -> T:
    """Build the bus, run ``work`` on it, close it; any error is one line."""
    configure_logging("WARNING")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # our own line says it once

    async def go() -> T:
        bus = bus_of()
        await bus.start()
        try:
            return await work(bus)
        finally:
            await bus.close()

    try:
        return asyncio.run(go())
    except (ConfigError, dl.DeadLetterQueryError) as exc:
        raise _fail(str(exc), 2) from None
    except Exception as exc:  # the operator's tool: one line, never a traceback
        raise _fail(f"{type(exc).__name__}: {exc}", 1) from None


def _filter(
    topic: str | None,
    reason: str | None,
    since: str | None,
    letter: str | None,
    service: str | None,
) -> dl.LetterFilter:
    try:
        where = dl.LetterFilter(
            topic=topic,
            reason=reason,
            since=dl.parse_since(since, datetime.now(UTC)) if since else None,
            id=letter,
            service=service,
        )
        if letter is not None:
            dl.check_id(letter)
    except dl.DeadLetterQueryError as exc:
        raise _fail(str(exc), 2) from None
    return where


TopicOpt = Annotated[
    str | None,
    typer.Option("--topic", help="original topic, exactly or as a pattern (stac:*)"),
]
ReasonOpt = Annotated[
    str | None, typer.Option("--reason", help="a substring of the reason, or a regex")
]
SinceOpt = Annotated[
    str | None,
    typer.Option("--since", help="dead-lettered since: ISO time (UTC if none given) or 30m/2h/7d"),
]
IdOpt = Annotated[
    str | None, typer.Option("--id", help="a letter id as `list` shows it (or a unique prefix)")
]
ServiceOpt = Annotated[str | None, typer.Option("--service", help="the service that wrote it")]
BootstrapOpt = Annotated[
    str | None,
    typer.Option("--bootstrap-servers", help="Kafka host:port (default: EOSTREAM_KAFKA__...)"),
]
PrefixOpt = Annotated[
    str | None, typer.Option("--topic-prefix", help="the deployment's topic namespace")
]
HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="the embedded system's home (`eostream up --home`): its bus"),
]


def _cells(*values: str) -> list[Text]:
    """Table cells as plain text: reasons and keys may hold brackets rich would read as markup."""
    return [Text(v) for v in values]


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _origin(item: dl.Letter) -> str:
    letter = item.letter
    if letter.original_partition is None and letter.original_offset is None:
        return letter.original_topic
    return f"{letter.original_topic}[{letter.original_partition}]@{letter.original_offset}"


@dlq_app.command("list")
def list_letters(
    topic: TopicOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    letter: IdOpt = None,
    service: ServiceOpt = None,
    limit: Annotated[int, typer.Option(help="show at most this many (newest)")] = 200,
    bootstrap_servers: BootstrapOpt = None,
    topic_prefix: PrefixOpt = None,
    home: HomeOpt = None,
) -> None:
    """A table of the dead letters that match, oldest first, with whether each was replayed."""
    where = _filter(topic, reason, since, letter, service)

    async def work(bus: Bus) -> tuple[list[dl.Letter], int, dict[str, dl.ReplayMark]]:
        found = await dlb.read_letters(bus)
        return dl.select(found, where), len(found), await dlb.read_marks(bus)

    chosen, total, marks = _run(lambda: _bus_of(home, bootstrap_servers, topic_prefix), work)
    table = Table(title=f"dead letters: {len(chosen)} of {total} match", title_justify="left")
    for name, wrap in (
        ("id", False),
        ("time (UTC)", False),
        ("service", False),
        ("error", False),
        ("original topic", True),
        ("key", True),
        ("reason", True),
        ("replayed", True),
    ):
        table.add_column(name, no_wrap=not wrap, overflow="fold")
    for item in chosen[-limit:] if limit > 0 else chosen:
        letter_ = item.letter
        mark = marks.get(item.id)
        table.add_row(
            *_cells(
                item.id,
                _when(letter_.time),
                letter_.service,
                letter_.error_type,
                _origin(item),
                letter_.original_key or "",
                letter_.reason[:300],
                f"{_when(mark.time)} -> {mark.topic}" if mark else "",
            )
        )
    Console(soft_wrap=False).print(table)


@dlq_app.command("show")
def show(
    letter: IdOpt = None,
    topic: TopicOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    service: ServiceOpt = None,
    full: Annotated[bool, typer.Option("--full", help="the whole value, however long")] = False,
    bootstrap_servers: BootstrapOpt = None,
    topic_prefix: PrefixOpt = None,
    home: HomeOpt = None,
) -> None:
    """One letter: where it came from, why, its headers and its value."""
    where = _filter(topic, reason, since, letter, service)

    async def work(bus: Bus) -> tuple[dl.Letter, dl.ReplayMark | None]:
        item = dl.pick(await dlb.read_letters(bus), where)
        return item, (await dlb.read_marks(bus)).get(item.id)

    item, mark = _run(lambda: _bus_of(home, bootstrap_servers, topic_prefix), work)
    letter_ = item.letter
    console = Console(soft_wrap=True, highlight=False)
    rows = [
        ("id", item.id),
        ("time", letter_.time.isoformat()),
        ("service", letter_.service),
        ("error type", letter_.error_type),
        ("reason", letter_.reason),
        ("original topic", _origin(item)),
        ("key", letter_.original_key or ""),
        ("attempts", str(letter_.attempts)),
        ("replay of", item.replayed_from or ""),
        ("replayed", f"{mark.time.isoformat()} to {mark.topic} by {mark.by}" if mark else "no"),
    ]
    for name, value in rows:
        console.print(f"[bold]{name:>15}[/bold]  {escape(value)}", markup=True)
    for name, value in sorted(letter_.original_headers.items()):
        console.print(f"{'header ' + name:>15}  {value}", markup=False)
    console.print(f"{'value':>15}  ({len(letter_.original_value)} bytes)", markup=False)
    console.print(_value_text(letter_.original_value, full), markup=False)


def _value_text(value: bytes, full: bool) -> str:
    try:
        text = json.dumps(json.loads(value), indent=2, ensure_ascii=False)
    except ValueError:
        text = value.decode("utf-8", errors="replace")
    if not full and len(text) > 4000:
        return text[:4000] + f"\n... ({len(text) - 4000} more characters: --full)"
    return text


@dlq_app.command("replay")
def replay(
    letter: IdOpt = None,
    topic: TopicOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    service: ServiceOpt = None,
    every: Annotated[
        bool, typer.Option("--all", help="every letter not replayed yet (no filter needed)")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="say what would be replayed, publish nothing")
    ] = False,
    bootstrap_servers: BootstrapOpt = None,
    topic_prefix: PrefixOpt = None,
    home: HomeOpt = None,
) -> None:
    """Publish the matching letters again, once each: bus records to their original topic (key,
    value and headers as they were, plus dlq_replayed_from), rejected STAC items to ingest, which
    reads them again from their source."""
    where = _filter(topic, reason, since, letter, service)
    if where.empty and not every:
        raise _fail("say which letters: --id, --topic, --reason, --since, --service or --all", 2)

    async def work(bus: Bus) -> list[dlb.ReplayOutcome]:
        chosen = dl.select(await dlb.read_letters(bus), where)
        if letter is not None and len(chosen) != 1:
            dl.pick(chosen, where)  # raises: none, or an ambiguous prefix
        return await dlb.replay(bus, chosen, dry_run=dry_run, requested_by=_who())

    outcomes = _run(lambda: _bus_of(home, bootstrap_servers, topic_prefix), work)
    table = Table(title="dead letters" + (" (dry run)" if dry_run else ""), title_justify="left")
    for name in ("id", "original topic", "key", "outcome", "to"):
        table.add_column(name, overflow="fold", no_wrap=name == "id")
    for o in outcomes:
        note = o.topic
        if o.mark is not None:
            note = f"{o.topic} at {_when(o.mark.time)} by {o.mark.by}"
        elif o.detail:
            note = o.detail
        table.add_row(
            *_cells(
                o.letter.id, _origin(o.letter), o.letter.letter.original_key or "", o.action, note
            )
        )
    console = Console(soft_wrap=False)
    console.print(table)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.action] = counts.get(o.action, 0) + 1
    console.print(", ".join(f"{n} {a}" for a, n in counts.items()) or "nothing matched")
    if "cannot replay" in counts:
        raise typer.Exit(1)


def _who() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
