"""Which code made a run: the eostream package's version and the git commit, for MLflow tags.

The commit comes from, in this order: ``git rev-parse HEAD`` where the code is a git checkout
(the workspace, ``mlflow run``); else the ``EOSTREAM_GIT_COMMIT`` variable, which the images set
from their ``GIT_COMMIT`` build argument (``.git`` is not in an image: deploy/docker/Dockerfile,
``make images``); else ``unknown``.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

#: The variable the images carry the commit in (deploy/docker/Dockerfile's GIT_COMMIT).
COMMIT_ENV = "EOSTREAM_GIT_COMMIT"
UNKNOWN = "unknown"
#: Run tags (MLflow's own name for the commit, so its UI shows it).
GIT_COMMIT_TAG = "mlflow.source.git.commit"
COMMIT_SOURCE_TAG = "eostream.git_commit_source"
PACKAGE_TAG = "eostream.package"
PACKAGE_VERSION_TAG = "eostream.package_version"
#: "true" when tracked files differ from the commit (the diff is then a run artifact)
DIRTY_TAG = "eostream.git_dirty"


@dataclass(frozen=True)
class CodeVersion:
    package: str
    version: str
    commit: str
    commit_source: str  # git | env | unknown
    #: tracked files changed since the commit (known only from git): the commit alone is not
    #: the code that ran
    dirty: bool | None = None
    #: their ``git diff HEAD`` (read once, with ``dirty``): a run keeps it as an artifact
    diff: str = field(default="", repr=False, compare=False)

    def run_tags(self) -> dict[str, str]:
        tags = {
            GIT_COMMIT_TAG: self.commit,
            COMMIT_SOURCE_TAG: self.commit_source,
            PACKAGE_TAG: self.package,
            PACKAGE_VERSION_TAG: self.version,
        }
        if self.dirty is not None:
            tags[DIRTY_TAG] = "true" if self.dirty else "false"
        return tags


def artifacts_beside(tracking_uri: str) -> str | None:
    """``file://.../mlartifacts`` beside a sqlite MLflow store's database file (where the
    embedded MLflow server keeps them too), for a new experiment's artifacts; None for a server.
    MLflow's own default is ``./mlruns`` of whatever folder the first run starts in."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
    return (database.resolve().parent / "mlartifacts").as_uri()


def package_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN


def git_commit(cwd: Path | None = None) -> tuple[str, str]:
    """(commit, where it came from): git in ``cwd`` (this file's folder by default), else the
    ``EOSTREAM_GIT_COMMIT`` variable, else ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],  # noqa: S607 - git from PATH, fixed arguments
            capture_output=True,
            text=True,
            timeout=5,
            cwd=cwd or Path(__file__).parent,
            check=False,
        )
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if commit:
        return commit, "git"
    baked = os.environ.get(COMMIT_ENV, "").strip()
    if baked and baked != UNKNOWN:
        return baked, "env"
    return UNKNOWN, UNKNOWN


def uncommitted_diff(cwd: Path | None = None) -> str:
    """``git diff HEAD`` of the tracked files in ``cwd``'s checkout (this file's by default):
    what the code that runs has beyond its commit; "" when it has nothing (or no git)."""
    try:
        out = subprocess.run(
            ["git", "diff", "HEAD", "--no-color"],  # noqa: S607 - git from PATH, fixed arguments
            capture_output=True,
            text=True,
            timeout=20,
            cwd=cwd or Path(__file__).parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def code_version(distribution: str, cwd: Path | None = None) -> CodeVersion:
    """The package ``distribution``'s version, the commit of the code that runs and, from git,
    whether tracked files differ from it."""
    commit, source = git_commit(cwd)
    diff = uncommitted_diff(cwd) if source == "git" else ""
    dirty = bool(diff) if source == "git" else None
    return CodeVersion(distribution, package_version(distribution), commit, source, dirty, diff)


def run_reference(url: str) -> str:
    """A run's link as people can follow it: an MLflow server's URL as it is; a run in a local
    store (``sqlite:///mlflow.db/#/experiments/1/runs/ID``, not a URL anybody can open) as its id,
    experiment and store, with the command that shows it."""
    if url.startswith(("http://", "https://")):
        return url
    store, _, rest = url.partition("/#/experiments/")
    experiment, _, run = rest.partition("/runs/")
    if not (store and experiment and run):
        return url
    return (
        f"{run} (experiment {experiment}) in {store}; to look at it: "
        f"mlflow ui --backend-store-uri {store}"
    )
