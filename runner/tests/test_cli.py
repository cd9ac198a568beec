"""The `eostream` command: a configuration error anywhere is one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_turns_a_config_error_into_one_line() -> None:
    code = (
        "from eostream.runner.cli import app, run\n"
        "from eostream.shared.errors import ConfigError\n"
        "@app.command()\n"
        "def boom() -> None:\n"
        "    raise ConfigError('configuration error: DEMO_X is not set; it is required')\n"
        "import sys; sys.argv = ['eostream', 'boom']\n"
        "run(app)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "eostream: configuration error: DEMO_X is not set; it is required"
    ]
