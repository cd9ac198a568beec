"""``python -m eostream.trainer run``: the service alone, without ``eostream``.

The commands of ``eostream trainer`` without the runner or the other services' command plugins: how
the container image and ``eostream up --stack local`` start it.
"""

import sys

from eostream.shared.errors import ConfigError
from eostream.trainer.cli import app

try:
    app(prog_name="python -m eostream.trainer")
except ConfigError as exc:
    print(f"eostream: {exc}", file=sys.stderr)  # noqa: T201 - the one line a user sees
    raise SystemExit(2) from None
