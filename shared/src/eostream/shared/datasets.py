"""The real data the demo needs, downloaded from its official sources and checked by sha256.

``ensure_data(folder)`` makes ``folder`` hold the same layout as the shared data folder
(``EOSTREAM_DATA_DIR``) for the files the demo reads, and nothing more:

- ``eurosat_rgb/<Class>/<Class>_<n>.jpg``: all 27,000 EuroSAT RGB JPEGs (trainer catalogue,
  the gate's held-out set, the RGB half of the scaling pairs), from the EuroSAT authors' Zenodo
  archive (94.7 MB).
- ``eurosat100_stac/data/.../tif/<Class>/<Class>_<n>.tif``: the 100 EuroSAT MS GeoTIFFs of
  EuroSAT100 (10.7 MB), the MS half of the pairs the trainer fits the RGB model's scaling on,
  from the URLs its STAC catalogue names, and ``eurosat_ms/MANIFEST.csv`` listing them.
- ``sentinel2_scenes/S2A_29RKH_20200219_0_L2A_cog_downsampled/``: the demo scene's STAC Item and
  the four rasters an RGB model reads (B02, B03, B04 and SCL for the cloud mask; 7.0 MB).

About 112 MB in all. Every file is written under its final name only once its digest matched;
a mismatch deletes what was downloaded and raises :class:`DataFetchError` naming the URL and
both digests. A marker (``.eostream-data.json``) records what was verified, so a second call
fetches nothing. A mirror (``EOSTREAM_DATA_MIRROR``) serves each official URL under
``<mirror>/<host>/<path>`` (the layout ``wget -x`` writes): ``eostream data urls`` lists them.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
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

from eostream.shared.download import (
    Advance,
    DataFetchError,
    fetch_verified,
    file_digest,
    mirrored,
)

#: Bump when the manifest changes: the cache is keyed by it, so an old download stays valid.
DATA_VERSION = "1"
MARKER = ".eostream-data.json"
MIRROR_ENV = "EOSTREAM_DATA_MIRROR"
CLASSES = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
)  # fmt: skip


@dataclass(frozen=True)
class RemoteFile:
    """One file, downloaded as is from ``url`` to ``path`` (relative to the data folder)."""

    path: str
    url: str
    size: int
    sha256: str


@dataclass(frozen=True)
class RemoteArchive:
    """A zip whose members matching ``member`` are extracted to ``dest/<group 'rel'>``.

    ``md5`` is the publisher's checksum of the zip (Zenodo publishes md5 only). ``tree_sha256``
    is :func:`tree_digest` over the extracted files: the content check, in sha256.
    """

    dest: str
    url: str
    size: int
    md5: str
    member: re.Pattern[str]
    files: int
    tree_sha256: str


@dataclass(frozen=True)
class ListedRows:
    """A CSV the download writes (it is not published anywhere): ``rows`` of the data folder's
    MANIFEST.csv. A folder passes if its CSV lists each of these paths with the same sha256."""

    path: str
    resource: str


@dataclass(frozen=True)
class Manifest:
    files: tuple[RemoteFile, ...]
    archives: tuple[RemoteArchive, ...]
    listings: tuple[ListedRows, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files) + sum(a.size for a in self.archives)

    def urls(self) -> list[str]:
        return [a.url for a in self.archives] + [f.url for f in self.files]


# --- the manifest ---------------------------------------------------------------------------
# EuroSAT RGB: the authors' archive on Zenodo (doi:10.5281/zenodo.7711810, MIT). Size and md5 as
# Zenodo publishes them. It has never been downloaded here (no internet): tree_sha256 was computed
# from shared/data/eurosat_rgb, whose 27,000 JPEGs are byte-identical to three independent copies
# of this archive's content (see its PROVENANCE.md), over the class folders only; the archive's
# top folder (EuroSAT_RGB/ on Zenodo, 2750/ in the older DFKI EuroSAT.zip) does not matter.
EUROSAT_RGB = RemoteArchive(
    dest="eurosat_rgb",
    url="https://zenodo.org/records/7711810/files/EuroSAT_RGB.zip?download=1",
    size=94_658_721,
    md5="f46e308c4d50d4bf32fedad2d3d62f3b",
    member=re.compile(rf"(?:^|/)(?P<rel>(?P<cls>{'|'.join(CLASSES)})/(?P=cls)_\d+\.jpg)$"),
    files=27_000,
    tree_sha256="20a1a14fe4e5e7b3d5a1db892da1bd4414fbb4e1d578fea84353dbfb954fabb4",
)

# EuroSAT100 MS GeoTIFFs, at the commit of the URLs their STAC catalogue names (tag 0.5.0 of
# ai-extensions/stac-data-loader). Path, size and sha256 come from the data folder's
# eurosat_ms/MANIFEST.csv, whose sha256 of each tif matches an independent copy's Git-LFS pointer
# (eurosat_ms/PROVENANCE.md). The full EuroSAT_MS.zip (2.07 GB) would be the authors' source; these
# 100 patches are the published files the RGB scaling fit needs, at 0.5 % of its size.
_EUROSAT100 = (
    "https://raw.githubusercontent.com/ai-extensions/stac-data-loader/"
    "9e13b11e8af985800bffbff9e72c75dccbb0935f/data/EuroSAT/"
)
MS_LISTING = ListedRows(path="eurosat_ms/MANIFEST.csv", resource="datasets_eurosat_ms.csv")

# The demo scene. The data folder holds rio-tiler-pds's test fixtures of Earth Search's
# S2A_29RKH_20200219_0_L2A: the STAC Item as is, and the sentinel-cogs COGs downsampled 10x. The
# downsampled rasters are not on the sentinel-cogs bucket, and a local resampling of the official
# COGs (B04 alone is about 200 MB) would not give the same bytes, so no checksum could hold: they
# are fetched as rio-tiler-pds publishes them, at the commit named in the folder's PROVENANCE.md.
# sha256 computed from the data folder's copies, byte-identical to the git blobs at that commit.
SCENE_DIR = "sentinel2_scenes/S2A_29RKH_20200219_0_L2A_cog_downsampled"
_SCENE = (
    "https://raw.githubusercontent.com/cogeotiff/rio-tiler-pds/"
    "f8b93f3b9cbe2d94271f36d43a8878953aec2682/tests/fixtures/sentinel-cogs/"
    "sentinel-s2-l2a-cogs/29/R/KH/2020/2/S2A_29RKH_20200219_0_L2A/"
)
SCENE_FILES = tuple(
    RemoteFile(f"{SCENE_DIR}/{name}", _SCENE + name, size, sha256)
    for name, size, sha256 in (
        ("S2A_29RKH_20200219_0_L2A.json", 20_848,
         "a85d8a3aa1eb74e7354273499d5dc7b026792a9449deb48a107147f2e88dd885"),
        ("B02.tif", 2_251_637, "b71f92be3aabdcf05247b72f43cbb2491737dcf7f4624d1016a38f2c48658f42"),
        ("B03.tif", 2_320_211, "6682575d3714324b78f0128d8c066b3c5109d5459db1b6b13972588740946dfc"),
        ("B04.tif", 2_381_555, "03d15e216bdc97fce93f6067bb4699dc58a89205ac2b169e0be7c51946aaff47"),
        ("SCL.tif", 8_268, "12a5f0c708d36e0f61e18121178d1c9b1beae07bc0194e42e011763f4528d6d6"),
    )
)  # fmt: skip


def listed_rows(listing: ListedRows) -> list[dict[str, str]]:
    text = resources.files("eostream.shared").joinpath(listing.resource).read_text()
    return list(csv.DictReader(io.StringIO(text)))


def _eurosat100_files() -> tuple[RemoteFile, ...]:
    prefix = "eurosat100_stac/"
    return tuple(
        RemoteFile(row["path"], _EUROSAT100 + row["path"][len(prefix) :], int(row["bytes"]),
                   row["sha256"])
        for row in listed_rows(MS_LISTING)
    )  # fmt: skip


DEMO = Manifest(
    files=(*_eurosat100_files(), *SCENE_FILES), archives=(EUROSAT_RGB,), listings=(MS_LISTING,)
)


# --- where, and from where ------------------------------------------------------------------
def default_data_dir() -> Path:
    """``${EOSTREAM_CACHE:-~/.cache/eostream}/data/<DATA_VERSION>``: outside any clone."""
    base = os.environ.get("EOSTREAM_CACHE") or "~/.cache/eostream"
    return Path(base).expanduser() / "data" / DATA_VERSION


# --- digests --------------------------------------------------------------------------------
def tree_digest(entries: Iterable[tuple[str, int, str]]) -> str:
    """sha256 over the sorted lines ``relpath<TAB>size<TAB>sha256``, paths relative to the
    data folder with forward slashes."""
    h = hashlib.sha256()
    for rel, size, sha in sorted(entries):
        h.update(f"{rel}\t{size}\t{sha}\n".encode())
    return h.hexdigest()


def folder_tree(root: Path, archive: RemoteArchive) -> list[tuple[str, int, str]]:
    """The (relpath, size, sha256) of the files under ``root/archive.dest`` the archive names."""
    found: list[tuple[str, int, str]] = []
    for path in sorted((root / archive.dest).rglob("*")):
        rel = path.relative_to(root / archive.dest).as_posix()
        match = archive.member.search(rel)
        if path.is_file() and match and match["rel"] == rel:
            data = path.read_bytes()
            found.append((f"{archive.dest}/{rel}", len(data), hashlib.sha256(data).hexdigest()))
    return found


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
    text = resources.files("eostream.shared").joinpath(listing.resource).read_bytes()
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
            for future in futures:
                try:
                    key, digest = future.result()
                    verified[key] = digest
                except Exception as exc:  # every download ends before the first error
                    errors.append(exc)
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
