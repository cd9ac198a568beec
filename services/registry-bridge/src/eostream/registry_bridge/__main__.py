"""``python -m eostream.registry_bridge run``: the service alone, without ``eostream``.

The commands of ``eostream bridge`` without the runner or the other services' command plugins: how
the container image and ``eostream up --stack local`` start it.
"""

import sys

from eostream.registry_bridge.cli import app, models_app
from eostream.shared.errors import ConfigError

# `eostream models ...` too, so an operator can promote or roll back inside the image
app.add_typer(models_app, name="models")

try:
    app(prog_name="python -m eostream.registry_bridge")
except ConfigError as exc:
    print(f"eostream: {exc}", file=sys.stderr)  # noqa: T201 - the one line a user sees
    raise SystemExit(2) from None
