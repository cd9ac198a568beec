"""The style checks are one set: `make lint` (CI, .ci/run) and the pre-commit hooks run the same
ruff and mypy, from the workspace's own environment, with nothing to download at install time."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".pre-commit-config.yaml"


def hooks() -> list[dict[str, Any]]:
    config = yaml.safe_load(CONFIG.read_text())
    return [hook for repo in config["repos"] for hook in repo["hooks"]]


def test_the_pre_commit_config_is_valid() -> None:
    pre_commit = Path(sys.executable).with_name("pre-commit")
    done = subprocess.run(
        [str(pre_commit), "validate-config", str(CONFIG)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hooks_are_local_and_run_what_make_lint_runs() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert [repo["repo"] for repo in config["repos"]] == ["local"], "no hook repo to fetch"
    assert all(hook["language"] == "system" for hook in hooks())
    entries = {hook["id"]: hook["entry"] for hook in hooks()}
    lint = (ROOT / "Makefile").read_text()
    for command in ("ruff check", "ruff format --check"):
        assert f"run --frozen {command} ." in lint
        assert any(f"run --frozen {command}" in entry for entry in entries.values()), command
    assert entries["mypy"] == "make --no-print-directory mypy"
    assert re.search(r"^lint:.*\n(\t.*\n)*\t.*\$\(MAKE\) --no-print-directory mypy$", lint, re.M)


def test_ci_lints_before_it_tests() -> None:
    steps = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip().startswith("make ")
    ]
    assert steps == ["make lint", "make test"]


def test_every_package_says_it_is_typed() -> None:
    packages = [p for p in (ROOT / "shared" / "src" / "eostream").iterdir() if p.is_dir()]
    packages += [p for p in (ROOT / "runner" / "src" / "eostream").iterdir() if p.is_dir()]
    packages += list((ROOT / "services").glob("*/src/eostream/*"))
    packages = [p for p in packages if (p / "__init__.py").is_file()]
    assert len(packages) == 7, packages  # six packages and eostream.client
    assert [p for p in packages if not (p / "py.typed").is_file()] == []
