"""The code version recorded on runs: git where there is a checkout, the image's baked commit
where there is none (EOSTREAM_GIT_COMMIT, from the Dockerfile's GIT_COMMIT), else unknown."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

import pytest

from eostream.shared import provenance

REPO = Path(__file__).resolve().parents[2]


def head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_git_wins_in_a_checkout_even_when_the_image_variable_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(provenance.COMMIT_ENV, "f" * 40)
    version = provenance.code_version("eostream-shared", cwd=REPO)
    assert (version.commit, version.commit_source) == (head(), "git")
    assert version.version == importlib.metadata.version("eostream-shared")
    changed = subprocess.run(
        ["git", "diff", "HEAD", "--quiet"], cwd=REPO, capture_output=True, check=False
    )
    assert version.run_tags() == {
        "mlflow.source.git.commit": head(),
        "eostream.git_commit_source": "git",
        "eostream.package": "eostream-shared",
        "eostream.package_version": version.version,
        "eostream.git_dirty": "true" if changed.returncode else "false",
    }


def test_a_changed_checkout_is_said_and_its_diff_kept(tmp_path: Path) -> None:
    """A run from a checkout with uncommitted changes was tagged with the clean commit alone:
    checking that commit out did not give the code that ran."""

    def git(*words: str) -> None:
        subprocess.run(["git", *words], cwd=tmp_path, capture_output=True, check=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "one")
    clean = provenance.code_version("eostream-shared", cwd=tmp_path)
    assert (clean.dirty, clean.run_tags()["eostream.git_dirty"]) == (False, "false")
    (tmp_path / "code.py").write_text("x = 2\n")
    changed = provenance.code_version("eostream-shared", cwd=tmp_path)
    assert changed.dirty and changed.run_tags()["eostream.git_dirty"] == "true"
    assert "+x = 2" in changed.diff  # read once, with dirty: the run's artifact
    assert changed.diff == provenance.uncommitted_diff(tmp_path)


def test_without_git_the_baked_commit_then_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tmp_path is outside any checkout: as in an image, where .git was never copied
    monkeypatch.setenv(provenance.COMMIT_ENV, "0123abcd" * 5)
    assert provenance.git_commit(tmp_path) == ("0123abcd" * 5, "env")
    monkeypatch.setenv(provenance.COMMIT_ENV, "unknown")  # the build argument's default
    assert provenance.git_commit(tmp_path) == ("unknown", "unknown")
    monkeypatch.delenv(provenance.COMMIT_ENV)
    assert provenance.git_commit(tmp_path) == ("unknown", "unknown")
    assert provenance.code_version("eostream-shared", cwd=tmp_path).dirty is None
    assert provenance.package_version("eostream-no-such-package") == "unknown"
