"""The demo's data download, against a real HTTP server on 127.0.0.1 used as the mirror.

The server serves real files of the data folder under ``/<official host>/<official path>``, as an
organisation's mirror would. No test reaches an official host. The one thing that cannot be here
is Zenodo's EuroSAT_RGB.zip itself: the tests serve a zip built from the data folder's 27,000
JPEGs, so its content (the manifest's tree sha256) is the real one and only the archive's md5 is
the test zip's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from typer.testing import CliRunner

from eostream.runner.datasets import (
    BOADELLA_FILES,
    CLASSES,
    DEMO,
    DEMO_DATE,
    EUROSAT_RGB,
    MARKER,
    SCENE_FILES,
    Manifest,
    RemoteArchive,
    default_data_dir,
    tree_digest,
)
from eostream.runner.datasets_cli import data_app, fetch_checkpoint
from eostream.runner.download import DataFetchError, file_digest, mirrored
from eostream.runner.provision import check_data, ensure_data
from eostream.shared.checkpoints import Checkpoint, checkpoint_path
from eostream.shared.errors import ConfigError


class Mirror:
    """A real HTTP server (with Range requests) that counts what it serves."""

    def __init__(self, routes: Mapping[str, Path]) -> None:
        self.routes = dict(routes)
        self.requests: list[tuple[str, str | None]] = []
        self.bytes_sent = 0
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                mirror.requests.append((path, self.headers.get("Range")))
                file = mirror.routes.get(path)
                if file is None:
                    self.send_error(404)
                    return
                data = file.read_bytes()
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])
                mirror.bytes_sent += len(data) - start

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/base"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def route(self, official_url: str, file: Path) -> None:
        self.routes[urlsplit(mirrored(official_url, self.url)).path] = file

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def md5(path: Path) -> str:
    return file_digest(path, "md5")


def build_zip(path: Path, files: Mapping[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def rgb_files(data_dir: Path, per_class: int | None = None) -> dict[str, Path]:
    """``EuroSAT_RGB/<Class>/<name>`` (the Zenodo archive's layout) -> the data folder's JPEG."""
    found: dict[str, Path] = {}
    for cls in CLASSES:
        for jpg in sorted((data_dir / "eurosat_rgb" / cls).glob("*.jpg"))[:per_class]:
            found[f"EuroSAT_RGB/{cls}/{jpg.name}"] = jpg
    return found


@pytest.fixture(scope="module")
def served(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """The mirror with every file of the demo manifest, the RGB archive rebuilt from real files."""
    tmp = tmp_path_factory.mktemp("mirror")
    zip_path = tmp / "EuroSAT_RGB.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for name, jpg in rgb_files(data_dir).items():
            zf.write(jpg, name)
    mirror = Mirror({})
    mirror.route(EUROSAT_RGB.url, zip_path)
    for item in DEMO.files:
        mirror.route(item.url, data_dir / item.path)
    with mirror:
        yield mirror


@pytest.fixture(scope="module")
def manifest(served: Mirror) -> Manifest:
    """The demo manifest; only the archive's md5 is the test zip's (see the module docstring)."""
    zip_path = served.routes[urlsplit(mirrored(EUROSAT_RGB.url, served.url)).path]
    archive = replace(EUROSAT_RGB, md5=md5(zip_path), size=zip_path.stat().st_size)
    return replace(DEMO, archives=(archive,))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eostream-cache")


@pytest.fixture(scope="module")
def fetched(served: Mirror, manifest: Manifest, cache: Path) -> Path:
    """The demo data, fetched once through the mirror into the cache's default folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EOSTREAM_CACHE", str(cache))
        target = default_data_dir()
    return ensure_data(target, mirror=served.url, progress=False, manifest=manifest)


def test_the_cache_is_keyed_by_version_outside_the_clone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EOSTREAM_CACHE", str(tmp_path))
    assert default_data_dir() == tmp_path / "data" / "2"
    monkeypatch.delenv("EOSTREAM_CACHE")
    assert default_data_dir() == Path.home() / ".cache" / "eostream" / "data" / "2"


def test_a_mirror_holds_each_official_url_under_its_host() -> None:
    assert mirrored(EUROSAT_RGB.url, "https://m.example/eo/") == (
        "https://m.example/eo/zenodo.org/records/7711810/files/EuroSAT_RGB.zip"
    )
    assert mirrored(EUROSAT_RGB.url, None) == EUROSAT_RGB.url


@pytest.mark.slow
def test_fetch_downloads_each_file_once_and_lays_it_out_as_the_demo_reads_it(
    fetched: Path, served: Mirror, manifest: Manifest, tmp_path: Path
) -> None:
    from eostream.inference import reference
    from eostream.inference.bands import map_bands, scl_href
    from eostream.inference.scene import rewrite_href
    from eostream.ingest.embedded import DEMO_SCENE
    from eostream.registry_bridge.holdout import load as load_holdout
    from eostream.runner.demo import demo_options
    from eostream.trainer.catalog import build_catalog, list_sources
    from eostream.trainer.scaling import fit_rgb_scaling

    paths = [p for p, _ in served.requests]
    assert sorted(paths) == sorted(set(served.routes)), "each served file exactly once"
    assert len(paths) == 1 + 376 + len(BOADELLA_FILES) + len(SCENE_FILES)
    assert served.bytes_sent == manifest.size
    assert not list(fetched.rglob("*.part")) and not (fetched / ".staging").exists()

    # the trainer: its catalogue, and the RGB scaling fitted on the MS/RGB pairs
    assert len(list_sources(fetched, "rgb")) == 27_000
    assert build_catalog(fetched, tmp_path, "ms13").count == 375  # the duplicate counted once
    assert fit_rgb_scaling(fetched).pairs == 375
    # the registry bridge's held-out set
    assert len(load_holdout(fetched, "rgb", 5, "test-salt").files) == 50
    assert len(load_holdout(fetched, "ms13", 5, "test-salt").files) == 50
    # the demo's scene and labels: its reference set builds from the download alone
    labels = reference.build_boadella(fetched, tmp_path / "ref", dates=[DEMO_DATE])
    assert labels.is_file() and (tmp_path / "ref" / "boadella-scenes").is_dir()
    # ingest's demo scene, and the assets inference reads through the demo's mirror rewrite
    item = json.loads((fetched / DEMO_SCENE).read_text())
    rewrites = demo_options(fetched)["inference"]["asset_href_rewrites"]
    assets = {
        k: {**v, "href": rewrite_href(v["href"], rewrites)} for k, v in item["assets"].items()
    }
    sources, missing = map_bands(assets, ("B04", "B03", "B02"))
    assert not missing
    for needed in [*(s.href for s in sources.values()), scl_href(assets)]:
        assert needed is not None and Path(needed).is_file(), needed

    assert all(r.ok for r in check_data(fetched, manifest)), check_data(fetched, manifest)


@pytest.mark.slow
def test_a_second_call_downloads_nothing(fetched: Path, served: Mirror, manifest: Manifest) -> None:
    before = len(served.requests)
    assert ensure_data(fetched, mirror=served.url, progress=False, manifest=manifest) == fetched
    assert len(served.requests) == before
    # without the marker, the files found in place are re-hashed and recorded, not fetched
    (fetched / MARKER).unlink()
    ensure_data(fetched, mirror=served.url, progress=False, manifest=manifest)
    assert len(served.requests) == before
    recorded = json.loads((fetched / MARKER).read_text())["verified"]
    assert recorded["eurosat_rgb"] == EUROSAT_RGB.tree_sha256
    assert len(recorded) == 1 + len(manifest.files)


@pytest.mark.slow
def test_the_demo_uses_the_cache_when_no_data_folder_is_set(
    fetched: Path, served: Mirror, cache: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from eostream.runner.demo import demo_data_dir

    monkeypatch.setenv("EOSTREAM_CACHE", str(cache))
    monkeypatch.setenv("EOSTREAM_DATA_MIRROR", served.url)
    monkeypatch.delenv("EOSTREAM_DATA_DIR", raising=False)
    before = len(served.requests)
    assert demo_data_dir(None) == fetched
    assert len(served.requests) == before
    said = capsys.readouterr().out
    assert "no data folder set" in said and served.url in said
    assert demo_data_dir(fetched) == fetched
    assert "the data folder setting" in capsys.readouterr().out
    # a data folder named but mistyped is an error, not a 144 MB download
    with pytest.raises(ConfigError, match=r"no-such-folder .* is not a folder"):
        demo_data_dir(cache / "no-such-folder")
    assert len(served.requests) == before


def test_the_demo_says_what_to_do_when_the_data_cannot_be_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eostream.runner.demo import demo_data_dir

    with socket.socket() as probe:  # a port nobody listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("EOSTREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EOSTREAM_DATA_MIRROR", closed)
    monkeypatch.delenv("EOSTREAM_DATA_DIR", raising=False)
    with pytest.raises(DataFetchError) as info:
        demo_data_dir(None)
    message = str(info.value)
    assert "download failed" in message and "\n" not in message
    assert "set EOSTREAM_DATA_DIR to a copy of the data folder" in message
    assert "EOSTREAM_DATA_MIRROR" in message and "eostream data urls" in message


def test_a_tampered_file_is_refused_and_not_left_in_place(data_dir: Path, tmp_path: Path) -> None:
    good = SCENE_FILES[3]  # B04.tif
    tampered = tmp_path / "B04.tif"
    data = bytearray((data_dir / good.path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(data)
    bad_sha = hashlib.sha256(data).hexdigest()
    with Mirror({}) as mirror:
        mirror.route(good.url, tampered)
        target = tmp_path / "data"
        with pytest.raises(DataFetchError) as refused:
            ensure_data(target, mirror=mirror.url, progress=False,
                        manifest=Manifest(files=(good,), archives=(), listings=()))  # fmt: skip
    message = str(refused.value)
    assert mirrored(good.url, mirror.url) in message
    assert good.sha256 in message and bad_sha in message
    assert not (target / good.path).exists()
    assert not list(target.rglob("*.part"))


def small_archive(data_dir: Path, url: str, zip_path: Path, tamper: bool) -> RemoteArchive:
    """An archive of 20 real JPEGs; its tree sha256 is the real files'; one member tampered."""
    members = {name: jpg.read_bytes() for name, jpg in rgb_files(data_dir, per_class=2).items()}
    tree = [(f"eurosat_rgb/{n.split('/', 1)[1]}", len(b), hashlib.sha256(b).hexdigest())
            for n, b in members.items()]  # fmt: skip
    if tamper:
        first = next(iter(members))
        members[first] = members[first][:-1] + bytes([members[first][-1] ^ 0xFF])
    build_zip(zip_path, members)
    return replace(EUROSAT_RGB, url=url, md5=md5(zip_path), size=zip_path.stat().st_size,
                   files=20, tree_sha256=tree_digest(tree))  # fmt: skip


def test_an_archive_with_a_tampered_member_is_refused(data_dir: Path, tmp_path: Path) -> None:
    url = EUROSAT_RGB.url
    archive = small_archive(data_dir, url, tmp_path / "rgb.zip", tamper=True)
    with Mirror({}) as mirror:
        mirror.route(url, tmp_path / "rgb.zip")
        target = tmp_path / "data"
        only = Manifest(files=(), archives=(archive,), listings=())
        with pytest.raises(DataFetchError) as refused:
            ensure_data(target, mirror=mirror.url, progress=False, manifest=only)
        message = str(refused.value)
        assert mirrored(url, mirror.url) in message and archive.tree_sha256 in message
        assert not (target / "eurosat_rgb").exists() and not (target / ".staging").exists()
        # an archive whose own md5 differs from the publisher's is refused before extraction
        wrong_md5 = replace(archive, md5="0" * 32)
        with pytest.raises(DataFetchError, match=f"md5 {md5(tmp_path / 'rgb.zip')}.*0{{32}}"):
            ensure_data(target, mirror=mirror.url, progress=False,
                        manifest=replace(only, archives=(wrong_md5,)))  # fmt: skip
        assert not (target / "eurosat_rgb").exists() and not list(target.rglob("*.part"))
        # the same archive untampered is accepted
        good = small_archive(data_dir, url, tmp_path / "rgb.zip", tamper=False)
        ensure_data(target, mirror=mirror.url, progress=False,
                    manifest=replace(only, archives=(good,)))  # fmt: skip
    assert len(list((target / "eurosat_rgb").rglob("*.jpg"))) == 20


def test_a_mirror_that_does_not_answer_fails_after_its_first_file(tmp_path: Path) -> None:
    """A mirror (or host) that refuses connections: every one of the demo's 385 files was tried
    three times, minutes of retries; the first file that cannot connect now stops the rest."""
    with socket.socket() as probe:  # a port nobody listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    sent: list[str] = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(str(request.url))
            return super().handle_request(request)

    with httpx.Client(transport=Counting()) as client, pytest.raises(DataFetchError) as info:
        ensure_data(tmp_path / "data", mirror=closed, progress=False, client=client)
    assert "download failed" in str(info.value) and "ConnectError" in str(info.value)
    assert "the host does not answer, so the other downloads were not tried" in str(info.value)
    total = len(DEMO.files) + len(DEMO.archives)
    # the files in flight when the first one failed (4 workers) finish their 3 attempts
    assert total > 300 and len(sent) <= 2 * 4 * 3, f"{len(sent)} requests for {total} files"


def test_a_mirror_that_is_not_an_http_url_is_one_line() -> None:
    for bad in ("http://[bad", "ftp://m.example", "m.example/eo", "https://"):
        result = CliRunner().invoke(data_app, ["urls", "--mirror", bad])
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert isinstance(result.exception, DataFetchError)
        assert "not an http(s) URL" in str(result.exception)


def test_an_interrupted_download_resumes_where_it_stopped(data_dir: Path, tmp_path: Path) -> None:
    item = SCENE_FILES[3]
    full = (data_dir / item.path).read_bytes()
    target = tmp_path / "data"
    part = target / (item.path + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(full[:1_000_000])
    with Mirror({}) as mirror:
        mirror.route(item.url, data_dir / item.path)
        ensure_data(target, mirror=mirror.url, progress=False,
                    manifest=Manifest(files=(item,), archives=(), listings=()))  # fmt: skip
    assert mirror.requests == [(urlsplit(mirrored(item.url, mirror.url)).path, "bytes=1000000-")]
    assert mirror.bytes_sent == len(full) - 1_000_000
    assert (target / item.path).read_bytes() == full


def test_a_complete_part_left_by_an_interrupted_run_is_verified_not_fetched_again(
    data_dir: Path, tmp_path: Path
) -> None:
    item = SCENE_FILES[3]
    target = tmp_path / "data"
    part = target / (item.path + ".part")
    part.parent.mkdir(parents=True)
    shutil.copyfile(data_dir / item.path, part)
    with Mirror({}) as mirror:
        mirror.route(item.url, data_dir / item.path)
        ensure_data(target, mirror=mirror.url, progress=False,
                    manifest=Manifest(files=(item,), archives=(), listings=()))  # fmt: skip
    assert mirror.bytes_sent == 0 and len(mirror.requests) == 1
    assert file_digest(target / item.path) == item.sha256 and not part.exists()


def test_data_check_passes_on_the_shared_data_folder(data_dir: Path) -> None:
    result = CliRunner().invoke(data_app, ["check", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert f"all {1 + len(DEMO.files) + 1} entries verified" in result.output


def test_data_check_names_a_wrong_file(data_dir: Path, tmp_path: Path) -> None:
    scene = Manifest(files=SCENE_FILES, archives=(), listings=())
    for item in SCENE_FILES:
        (tmp_path / item.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / item.path, tmp_path / item.path)
    wrong = tmp_path / SCENE_FILES[1].path
    data = bytearray(wrong.read_bytes())
    data[1000] ^= 0xFF
    wrong.write_bytes(data)
    results = {r.name: r.ok for r in check_data(tmp_path, scene)}
    assert results == {item.path: item is not SCENE_FILES[1] for item in SCENE_FILES}
    result = CliRunner().invoke(data_app, ["check", str(tmp_path)])
    assert result.exit_code == 1
    assert "wrong or missing" in result.output
    # a folder that is not there: one line, not a table of every file missing
    result = CliRunner().invoke(data_app, ["check", str(tmp_path / "nowhere")])
    assert (
        result.exit_code == 1 and result.output.strip() == f"{tmp_path / 'nowhere'} is not a folder"
    )


def test_a_checkpoint_is_fetched_once_through_the_mirror_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EOSTREAM_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "weights.pth"
    weights.write_bytes(bytes(range(256)) * 400)
    digest = file_digest(weights)
    entry = Checkpoint(
        name="test-net", url="https://download.example.org/models/net-x.pth",
        filename="net-x.pth", architecture="resnet18", description="a test file",
        sha256_prefix=digest[:8],
    )  # fmt: skip
    with Mirror({}) as mirror:
        mirror.route(entry.url, weights)
        path = fetch_checkpoint(entry, mirror=mirror.url)
        assert path == checkpoint_path(entry) and file_digest(path) == digest
        assert fetch_checkpoint(entry, mirror=mirror.url) == path  # already there: no request
        assert len(mirror.requests) == 1
        wrong = replace(entry, filename="other.pth", sha256="0" * 64)
        with pytest.raises(DataFetchError, match="the download was deleted"):
            fetch_checkpoint(wrong, mirror=mirror.url)
    assert not list(checkpoint_path(wrong).parent.glob("other.pth*"))


def test_an_unknown_checkpoint_is_refused() -> None:
    result = CliRunner().invoke(data_app, ["checkpoint", "no-such-net"])
    assert isinstance(result.exception, DataFetchError)
    assert "resnet18-imagenet" in str(result.exception)


def test_urls_into_a_pipe_closed_early_end_quietly() -> None:
    """`eostream data urls | head -1` exited 1 (a BrokenPipeError, silently)."""
    command = f"'{Path(sys.executable).with_name('eostream')}' data urls | head -1"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("https://") and len(done.stdout.splitlines()) == 1
