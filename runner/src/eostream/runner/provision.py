"""Fetching the demo data into a folder and checking a folder against the manifest.

:func:`ensure_data` downloads what :data:`eostream.runner.datasets.DEMO` names (each file checked
by sha256 before it takes its final name) and records what it verified in a marker, so a second
call fetches nothing; :func:`check_data` says, file by file, whether a folder holds the manifest.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from eostream.runner.datasets import (
    CLASSES,
    DATA_VERSION,
    DEMO,
    MARKER,
    MIRROR_ENV,
    ListedRows,
    Manifest,
    RemoteArchive,
    RemoteFile,
    folder_tree,
    listed_rows,
    tree_digest,
)
from eostream.runner.download import (
    Advance,
    DataFetchError,
    fetch_verified,
    file_digest,
    mirrored,
    unreachable,
)


# --- the marker -----------------------------------------------------------------------------
def _read_marker(root: Path) -> dict[str, str]:
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(marker, dict) or marker.get("version") != DATA_VERSION:
        return {}
    verified = marker.get("verified", {})
    return {str(k): str(v) for k, v in verified.items()} if isinstance(verified, dict) else {}


def _write_marker(root: Path, verified: dict[str, str]) -> None:
    body = {"version": DATA_VERSION, "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "verified": dict(sorted(verified.items()))}  # fmt: skip
    tmp = root / f"{MARKER}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    tmp.replace(root / MARKER)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One fetch per folder at a time (two demos started together)."""
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- downloading ----------------------------------------------------------------------------
def _fetch_file(client: httpx.Client, root: Path, item: RemoteFile, url: str, advance: Advance
                ) -> None:  # fmt: skip
    fetch_verified(client, url, root / item.path, item.sha256, advance)


def _fetch_archive(
    client: httpx.Client, root: Path, archive: RemoteArchive, url: str, advance: Advance
) -> None:
    """Download (or find, verified, from an interrupted run) the zip, extract, check, place."""
    zip_path = root / Path(urlsplit(archive.url).path).name
    if zip_path.is_file() and file_digest(zip_path, "md5") == archive.md5:
        advance(zip_path.stat().st_size)
    else:
        fetch_verified(client, url, zip_path, archive.md5, advance, algorithm="md5")
    extracted = root / ".staging" / archive.dest
    shutil.rmtree(extracted, ignore_errors=True)
    try:
        tree = _extract(zip_path, archive, extracted)
        digest = tree_digest(tree)
        if len(tree) != archive.files or digest != archive.tree_sha256:
            zip_path.unlink()
            raise DataFetchError(
                f"{url}: its {len(tree)} files have tree sha256 {digest} but the manifest expects "
                f"{archive.files} files with {archive.tree_sha256}; the download was deleted"
            )
        final = root / archive.dest
        if final.exists():  # an unverified left-over: replaced by the verified copy
            shutil.rmtree(final)
        extracted.replace(final)
        zip_path.unlink()
    finally:
        shutil.rmtree(extracted.parent, ignore_errors=True)


def _extract(zip_path: Path, archive: RemoteArchive, into: Path) -> list[tuple[str, int, str]]:
    """Extract the members the archive names (nothing else, so no path escapes ``into``)."""
    tree: list[tuple[str, int, str]] = []
    seen: set[str] = set()
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            match = archive.member.search(info.filename)
            if info.is_dir() or match is None:
                continue
            rel = match["rel"]
            if rel in seen:
                raise DataFetchError(f"{archive.url}: {rel} occurs twice in the archive")
            seen.add(rel)
            data = zf.read(info)
            target = into / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            tree.append((f"{archive.dest}/{rel}", len(data), hashlib.sha256(data).hexdigest()))
    return tree


# --- what is there already ------------------------------------------------------------------
def _archive_present(root: Path, archive: RemoteArchive) -> bool:
    dest = root / archive.dest
    if not dest.is_dir():
        return False
    count = 0
    for cls in CLASSES:
        with contextlib.suppress(FileNotFoundError), os.scandir(dest / cls) as entries:
            count += sum(1 for e in entries if archive.member.search(f"{cls}/{e.name}"))
    return count == archive.files


def _listing_ok(root: Path, listing: ListedRows) -> bool:
    """Whether the folder's CSV lists every row of ``listing`` with the same sha256."""
    try:
        with (root / listing.path).open(newline="") as f:
            have = {row["path"]: row.get("sha256") for row in csv.DictReader(f)}
    except (OSError, KeyError, csv.Error):
        return False
    return all(have.get(row["path"]) == row["sha256"] for row in listed_rows(listing))


def _write_listing(root: Path, listing: ListedRows) -> None:
    text = resources.files("eostream.runner").joinpath(listing.resource).read_bytes()
    target = root / listing.path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(text)
    tmp.replace(target)


# --- the two entry points -------------------------------------------------------------------
def ensure_data(
    target_dir: Path, *, mirror: str | None = None, progress: bool = True,
    manifest: Manifest = DEMO, client: httpx.Client | None = None,
) -> Path:  # fmt: skip
    """Make ``target_dir`` hold the manifest's files, verified; download only what is missing.

    ``mirror`` (default: ``$EOSTREAM_DATA_MIRROR``) replaces the official hosts. A file already
    there with the right digest is kept (and recorded) without a download.
    """
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    root = target_dir.expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise DataFetchError(f"{root} is a file, not a folder to put the data in")
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        verified = _read_marker(root)
        known = dict(verified)
        files = [f for f in manifest.files if not _file_ok(root, f, verified)]
        archives = [a for a in manifest.archives if not _archive_ok(root, a, verified)]
        if verified != known:  # files found in place, verified now
            _write_marker(root, verified)
        if files or archives:
            _fetch_all(root, files, archives, mirror, progress, client, verified)
        for listing in manifest.listings:
            if not _listing_ok(root, listing):
                _write_listing(root, listing)
    return root


def _file_ok(root: Path, item: RemoteFile, verified: dict[str, str]) -> bool:
    path = root / item.path
    if not path.is_file() or path.stat().st_size != item.size:
        return False
    if verified.get(item.path) == item.sha256 or file_digest(path) == item.sha256:
        verified[item.path] = item.sha256
        return True
    return False


def _archive_ok(root: Path, archive: RemoteArchive, verified: dict[str, str]) -> bool:
    if not _archive_present(root, archive):
        return False
    if verified.get(archive.dest) == archive.tree_sha256 or (
        tree_digest(folder_tree(root, archive)) == archive.tree_sha256
    ):
        verified[archive.dest] = archive.tree_sha256
        return True
    return False


def _fetch_all(
    root: Path, files: list[RemoteFile], archives: list[RemoteArchive], mirror: str | None,
    show: bool, client: httpx.Client | None, verified: dict[str, str],
) -> None:  # fmt: skip
    total = sum(f.size for f in files) + sum(a.size for a in archives)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())  # fmt: skip
    owns_client = client is None
    http = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60, connect=20))
    with Progress(*columns, disable=not show) as bar:
        task = bar.add_task(f"data: {len(files) + len(archives)} files", total=total)

        stop = threading.Event()

        def advance(n: int) -> None:  # in a worker, per chunk: where Ctrl-C stops a download
            if stop.is_set():
                raise DataFetchError("download interrupted; the next fetch resumes it")
            bar.advance(task, n)

        def one(item: RemoteFile | RemoteArchive) -> tuple[str, str]:
            if stop.is_set():  # a file queued behind a host that does not answer
                raise DataFetchError("download stopped; the next fetch resumes it")
            url = mirrored(item.url, mirror)
            if isinstance(item, RemoteArchive):
                _fetch_archive(http, root, item, url, advance)
                return item.dest, item.tree_sha256
            _fetch_file(http, root, item, url, advance)
            return item.path, item.sha256

        errors: list[BaseException] = []
        pool = ThreadPoolExecutor(max_workers=4)
        try:
            todo: list[RemoteFile | RemoteArchive] = [*archives, *files]
            futures = [pool.submit(one, item) for item in todo]
            for future in as_completed(futures):  # a failure seen as it happens
                try:
                    key, digest = future.result()
                    verified[key] = digest
                except Exception as exc:  # every download ends before the first error...
                    errors.append(exc)
                    if unreachable(exc):  # ...but a host that does not answer: no retries of
                        stop.set()  # every other file (minutes), the rest are cancelled
                        break
        except BaseException:  # Ctrl-C: the workers stop at their next chunk
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            _write_marker(root, verified)
            if owns_client:
                http.close()
    if errors:
        more = f" (and {len(errors) - 1} more failures)" if len(errors) > 1 else ""
        if stop.is_set():
            more += "; the host does not answer, so the other downloads were not tried"
        if isinstance(errors[0], DataFetchError):
            raise DataFetchError(f"{errors[0]}{more}") from errors[0]
        raise errors[0]


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def check_data(folder: Path, manifest: Manifest = DEMO) -> list[CheckResult]:
    """Re-hash every file the manifest names under ``folder`` (the marker is not trusted)."""
    results: list[CheckResult] = []
    for archive in manifest.archives:
        tree = folder_tree(folder, archive)
        digest = tree_digest(tree)
        ok = len(tree) == archive.files and digest == archive.tree_sha256
        results.append(CheckResult(f"{archive.dest}/ ({archive.files} files)", ok,
                                   f"{len(tree)} files, tree sha256 {digest[:16]}"))  # fmt: skip
    for item in manifest.files:
        path = folder / item.path
        actual = file_digest(path) if path.is_file() else "missing"
        results.append(CheckResult(item.path, actual == item.sha256, f"sha256 {actual[:16]}"))
    for listing in manifest.listings:
        ok = _listing_ok(folder, listing)
        results.append(CheckResult(listing.path, ok, "lists the files" if ok else "incomplete"))
    return results
