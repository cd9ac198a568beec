"""``python -m eostream.ingest run|backfill|status``: the same commands as ``eostream ingest``,
without loading the other services' command plugins."""

import sys

from eostream.ingest.cli import app
from eostream.shared.errors import ConfigError

try:
    app(prog_name="eostream ingest")
except ConfigError as exc:
    print(f"eostream: {exc}", file=sys.stderr)  # noqa: T201 - the one line a user sees
    raise SystemExit(2) from None
