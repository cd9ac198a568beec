"""`eostream dlq`: list, show and replay dead letters, in process and as the installed command
(the dead-letter store itself is tested in shared/tests/test_deadletters.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eostream.runner.dlq_cli import dlq_app
from eostream.shared import deadletters as dl
from eostream.shared import deadletters_bus as dlb
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import encode
from eostream.shared.embedded import embedded_bus
from eostream.shared.testing import letter_of, scene

pytestmark = pytest.mark.timeout(180)


# -- the command ---------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_a_bad_since_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EOSTREAM_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    result = CliRunner().invoke(dlq_app, ["list", "--since", "yesterdayish"])
    assert result.exit_code == 2
    line = _one_line(result.stderr)
    assert line.startswith("eostream dlq: --since 'yesterdayish' is neither an ISO time")


def test_the_embedded_bus_is_said_to_be_out_of_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EOSTREAM_BUS", "memory")
    result = CliRunner().invoke(dlq_app, ["list"])
    assert result.exit_code == 2
    assert "name its home: `eostream dlq list --home HOME`" in _one_line(result.stderr)


def test_the_embedded_systems_letters_are_listed_and_replayed_through_its_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded system's dead letters (its durable log, HOME/bus.sqlite) were out of the
    tool's reach; the advice named an in-process bus it has not used since ADR 0014."""
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.delenv("EOSTREAM_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    bus = embedded_bus(home, service="ingest")
    original = encode(scene("EMBEDDED"))

    async def dead_letter() -> None:
        await bus.start()
        await bus.publish_raw(bus.dead_letter_topic, letter_of(original, reason="bad scene"))
        await bus.close()

    asyncio.run(dead_letter())
    runner = CliRunner()
    listed = runner.invoke(dlq_app, ["list", "--home", str(home)])
    assert listed.exit_code == 0, listed.output
    assert "dead letters: 1 of 1 match" in listed.stdout and "bad scene" in listed.stdout
    replayed = runner.invoke(dlq_app, ["replay", "--all", "--home", str(home)])
    assert replayed.exit_code == 0 and "1 replayed" in replayed.stdout, replayed.output
    again = embedded_bus(home, service="check")
    assert [(r.key, r.value) for r in again.records("eostream.scenes.discovered")] == [
        (original.key, original.value)
    ]
    nothing = runner.invoke(dlq_app, ["list", "--home", str(tmp_path)])
    assert nothing.exit_code == 2
    assert _one_line(nothing.stderr) == (
        f"eostream dlq: --home {tmp_path}: no embedded bus (bus.sqlite) there"
    )


def test_an_unreachable_broker_and_a_replay_without_selection_are_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EOSTREAM_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    result = CliRunner().invoke(dlq_app, ["list", "--since", "2h"])
    assert result.exit_code == 2
    assert "cannot reach Kafka at 127.0.0.1:1" in _one_line(result.stderr)
    result = CliRunner().invoke(dlq_app, ["replay"])
    assert result.exit_code == 2
    assert "say which letters" in _one_line(result.stderr)


def test_list_show_and_replay_render_letters_of_a_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's output on an in-process bus standing in for the broker (no stack needed)."""
    import eostream.shared.bus as bus_module

    bus = InMemoryBus(service="dlq-test")
    original = encode(scene("RENDER"))
    asyncio.run(
        bus.publish_raw(
            bus.dead_letter_topic,
            letter_of(original, reason="[/odd] brackets: gave up after 4 attempts"),
        )
    )
    (item,) = asyncio.run(dlb.read_letters(bus))
    monkeypatch.setenv("EOSTREAM_KAFKA__BOOTSTRAP_SERVERS", "unused:1")
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr(bus_module, "build_bus", lambda *_a, **_k: bus)
    runner = CliRunner()

    listed = runner.invoke(dlq_app, ["list", "--since", "1h"])
    assert listed.exit_code == 0, listed.output
    assert item.id in listed.stdout and "[/odd] brackets" in listed.stdout
    shown = runner.invoke(dlq_app, ["show", "--id", item.id[:6]])
    assert shown.exit_code == 0, shown.output
    assert "eostream.scenes.discovered[0]@7" in shown.stdout
    assert '"item_id": "RENDER"' in shown.stdout
    first = runner.invoke(dlq_app, ["replay", "--reason", "gave up"])
    assert first.exit_code == 0, first.output
    assert "1 replayed" in first.stdout
    second = runner.invoke(dlq_app, ["replay", "--id", item.id])
    assert "1 already replayed" in second.stdout
    assert [(r.key, r.value) for r in bus.records("eostream.scenes.discovered")] == [
        (original.key, original.value)
    ]
    listed = runner.invoke(dlq_app, ["list"])
    assert "-> eostream.scenes.discovered" in listed.stdout


def eostream(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed `eostream` command, as a user runs it."""
    command = Path(sys.executable).with_name("eostream")
    return subprocess.run(
        [str(command), *args],
        env={**os.environ, "COLUMNS": "250", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_command_refuses_a_bad_since_in_one_line() -> None:
    result = eostream(
        "dlq", "replay", "--since", "last tuesday", env={"EOSTREAM_KAFKA_BOOTSTRAP": "x:1"}
    )
    assert result.returncode == 2
    assert _one_line(result.stderr).startswith("eostream dlq: --since 'last tuesday'")


@pytest.mark.stack
async def test_the_command_lists_shows_and_replays_on_kafka(kafka_bootstrap: str) -> None:
    from eostream.shared.bus.kafka import KafkaBus
    from eostream.shared.settings import KafkaSettings

    prefix = f"dlqcli{uuid.uuid4().hex[:8]}."
    bus = KafkaBus(
        KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix), service="dlq-test"
    )
    await bus.start()
    try:
        original = encode(scene("CLI"))
        await bus.publish_raw(
            bus.dead_letter_topic, letter_of(original, reason="gave up after 4 attempts: boom")
        )
        await bus.publish_raw(
            bus.dead_letter_topic, letter_of(encode(scene("OTHER")), reason="something else")
        )
        env = {"EOSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap}
        common = ["--topic-prefix", prefix]

        listed = eostream("dlq", "list", *common, env=env)
        assert listed.returncode == 0, listed.stderr
        assert "2 of 2 match" in listed.stdout and "CLI" in listed.stdout
        (item,) = [x for x in await dlb.read_letters(bus) if x.letter.original_key == "CLI"]
        assert item.id in listed.stdout

        shown = eostream("dlq", "show", "--id", item.id[:8], *common, env=env)
        assert shown.returncode == 0, shown.stderr
        assert "gave up after 4 attempts: boom" in shown.stdout
        assert '"item_id": "CLI"' in shown.stdout

        dry = eostream("dlq", "replay", "--reason", "boom", "--dry-run", *common, env=env)
        assert dry.returncode == 0, dry.stderr
        assert "1 would replay" in dry.stdout
        assert await dlb.read_records(bus, "eostream.scenes.discovered") == []

        done = eostream("dlq", "replay", "--id", item.id, *common, env=env)
        assert done.returncode == 0, done.stderr
        assert "1 replayed" in done.stdout
        again = eostream("dlq", "replay", "--reason", "boom", *common, env=env)
        assert again.returncode == 0, again.stderr
        assert "1 already replayed" in again.stdout

        records = await dlb.read_records(bus, "eostream.scenes.discovered")
        assert [(r.key, r.value) for r in records] == [(original.key, original.value)]
        assert records[0].headers[dl.REPLAYED_FROM] == item.id.encode()
        listed = eostream("dlq", "list", "--topic", "eostream.scenes.*", *common, env=env)
        assert "-> eostream.scenes.discovered" in listed.stdout

        missing = eostream("dlq", "show", "--id", "abcdef", *common, env=env)
        assert missing.returncode == 2
        assert "no dead letter matches id abcdef" in _one_line(missing.stderr)
    finally:
        await bus.close()
