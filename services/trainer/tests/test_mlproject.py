"""The MLproject as MLflow reads it: its declared environment (python_env.yaml) installs this
checkout's trainer and shared packages on the workspace's Python, and every entry point's command
is a command of the trainer's CLI with options it has. `mlflow run` itself runs in the stack test
tests/test_mlflow_project.py."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest
import typer
from mlflow.projects import _project_spec
from mlflow.utils.environment import _PythonEnv

from eostream.trainer.cli import app

PROJECT = Path(__file__).resolve().parents[1]
ROOT = PROJECT.parents[1]


def test_the_declared_environment_installs_this_checkouts_packages() -> None:
    project = _project_spec.load_project(str(PROJECT))  # type: ignore[no-untyped-call]
    assert project.env_type == "python_env"
    env = _PythonEnv.from_yaml(project.env_config_path)  # type: ignore[no-untyped-call]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f">={env.python}" in requires, (env.python, requires)
    backend = tomllib.loads((PROJECT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert set(backend) <= set(env.build_dependencies)
    installs = {}
    for line in env.dependencies:
        # pip expands ${EOSTREAM_WORKSPACE} in requirement files: the checkout's absolute path
        name, _, url = line.replace("${EOSTREAM_WORKSPACE}", str(ROOT)).partition(" @ file://")
        pyproject = tomllib.loads((Path(url) / "pyproject.toml").read_text())
        assert pyproject["project"]["name"] == name
        installs[name] = pyproject["project"]["dependencies"]
    assert set(installs) == {"eostream-trainer", "eostream-shared", "eostream-inference"}
    # the trainer needs nothing from the workspace but shared and inference (its scene reader
    # cuts label chips); no runner: `python -m`
    workspace = {d for deps in installs.values() for d in deps if d.startswith("eostream-")}
    assert workspace <= set(installs), workspace


@pytest.mark.parametrize("entry", ["train", "evaluate"])
def test_every_entry_point_is_a_trainer_command_with_its_options(entry: str) -> None:
    project = _project_spec.load_project(str(PROJECT))  # type: ignore[no-untyped-call]
    point = project.get_entry_point(entry)
    values = {name: f"<{name}>" for name in point.parameters}
    words = shlex.split(point.command.format(**values))
    assert words[:3] == ["python", "-m", "eostream.trainer"], words
    group = typer.main.get_group(app)
    command = group.commands[words[3]]
    options = {o for p in command.params for o in p.opts}
    given = [w for w in words[4:] if w.startswith("--")]
    assert set(given) <= options, set(given) - options
    # every parameter reaches the command
    assert all(f"<{name}>" in words for name in point.parameters)
