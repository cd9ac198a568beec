"""``python -m eostream.inference serve``: the service alone, without ``eostream``.

The commands of ``eostream inference`` without the runner or the other services' plugins: how
the container image and ``eostream up --stack local`` start it.
"""

import sys

from eostream.inference.cli import app
from eostream.shared.errors import ConfigError

try:
    app(prog_name="python -m eostream.inference")
except ConfigError as exc:
    print(f"eostream: {exc}", file=sys.stderr)  # noqa: T201 - the one line a user sees
    raise SystemExit(2) from None
