"""``python -m eostream.ingest run``: the service alone, without ``eostream``.

The commands of ``eostream ingest`` without the runner or the other services' command plugins: how
the container image and ``eostream up --stack local`` start it.
"""

import sys

from eostream.ingest.cli import app
from eostream.shared.errors import ConfigError

try:
    app(prog_name="python -m eostream.ingest")
except ConfigError as exc:
    print(f"eostream: {exc}", file=sys.stderr)  # noqa: T201 - the one line a user sees
    raise SystemExit(2) from None
