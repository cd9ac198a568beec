"""One MLflow server for every notebook of a pytest run.

Each notebook that starts an :class:`~eostream.runner.session.EmbeddedSession` would start its
own MLflow server on the shared home (half a minute to two minutes on a loaded machine, most
of it creating the sqlite database the first time). Here pytest starts one, in the background,
when the first notebook runs (it gets ready while the first notebooks explore data) and
advertises it on the home; every session of the run reuses it, and it ends with the pytest
session. A notebook run alone in Jupyter finds none advertised and starts its own, as before.
On `make test`'s pytest-xdist workers every notebook goes to the same worker, in order (the
scheduler in the root conftest.py), so this holds there too.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from eostream.runner.mlflow_server import advertised_mlflow_server

#: The notebooks' home (the same rule as their first cell).
HOME = Path(
    os.environ.get("EOSTREAM_NOTEBOOK_HOME", Path(__file__).parent.parent / ".eostream/notebooks")
).resolve()
_server = contextlib.ExitStack()
_wanted: list[bool] = []


def _uses_mlflow(item: pytest.Item) -> bool:
    path = Path(str(item.path))
    return path.suffix == ".ipynb" and "EmbeddedSession" in path.read_text(encoding="utf-8")


def pytest_collection_finish(session: pytest.Session) -> None:
    _wanted[:] = [any(_uses_mlflow(item) for item in session.items)]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _wanted and _wanted[0] and Path(str(item.path)).suffix == ".ipynb":
        _wanted[0] = False  # once
        _server.enter_context(advertised_mlflow_server(HOME))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _server.close()
