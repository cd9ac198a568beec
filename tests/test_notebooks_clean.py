"""The notebooks are committed without outputs: `make test` executes them (pytest --nbmake), so
what a reader sees is what a fresh run makes, and no stale picture or key hides in the repo."""

from __future__ import annotations

import json
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_every_notebook_is_committed_without_outputs() -> None:
    found = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert len(found) >= 5, found
    dirty = []
    for path in found:
        for n, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] == "code" and (cell["outputs"] or cell["execution_count"]):
                dirty.append(f"{path.name} cell {n}")
    assert not dirty, (
        f"clear the outputs before committing (jupyter nbconvert --clear-output): {dirty}"
    )
