"""The real data the demo needs, downloaded from its official sources and checked by sha256.

``ensure_data(folder)`` makes ``folder`` hold the same layout as the shared data folder
(``EOSTREAM_DATA_DIR``) for the files the demo reads, and nothing more:

- ``eurosat_rgb/<Class>/<Class>_<n>.jpg``: all 27,000 EuroSAT RGB JPEGs (trainer catalogue,
  the gate's held-out set, the RGB half of the scaling pairs), from the EuroSAT authors' Zenodo
  archive (94.7 MB).
- ``eurosat100_stac/data/.../tif/<Class>/<Class>_<n>.tif``: the 100 EuroSAT MS GeoTIFFs of
  EuroSAT100 (10.7 MB), the MS half of the pairs the trainer fits the RGB model's scaling on,
  from the URLs its STAC catalogue names, and ``eurosat_ms/MANIFEST.csv`` listing every MS tif.
- ``eurosat_ms/{shrey160_1pct,eotdl_small}/...``: the other 276 real EuroSAT MS GeoTIFFs of the
  data folder (29.6 MB; the 13-band demo model trains on all of them), from the two GitHub
  repositories named in the folder's PROVENANCE.md, at the commits named there.
- ``sentinel2_scenes/boadella_l2a_sentinelhub/``: the demo scene, the real Sentinel-2 L2A crop of
  the Boadella reservoir of 2020-06-21, its hand-made water labels and the crop's bounding box
  (1.8 MB), from the EOTDL repository at the commit its PROVENANCE.md names.
- ``sentinel2_scenes/S2A_29RKH_20200219_0_L2A_cog_downsampled/``: the 29RKH scene's STAC Item and
  the four rasters an RGB model reads (B02, B03, B04 and SCL for the cloud mask; 7.0 MB), the
  scene ``eostream up`` watches without a source.

About 144 MB in all. Every file is written under its final name only once its digest matched;
a mismatch deletes what was downloaded and raises :class:`DataFetchError` naming the URL and
both digests. A marker (``.eostream-data.json``) records what was verified, so a second call
fetches nothing. A mirror (``EOSTREAM_DATA_MIRROR``) serves each official URL under
``<mirror>/<host>/<path>`` (the layout ``wget -x`` writes): ``eostream data urls`` lists them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from eostream.shared.settings import cache_root

#: Bump when the manifest changes: the cache is keyed by it, so an old download stays valid.
DATA_VERSION = "2"
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

# EuroSAT MS GeoTIFFs. EuroSAT100's at the commit of the URLs their STAC catalogue names (tag
# 0.5.0 of ai-extensions/stac-data-loader). Path, size and sha256 come from the data folder's
# eurosat_ms/MANIFEST.csv, whose sha256 of each tif matches an independent copy's Git-LFS pointer
# (eurosat_ms/PROVENANCE.md). The full EuroSAT_MS.zip (2.07 GB) would be the authors' source; these
# 100 patches are the published files the RGB scaling fit needs, at 0.5 % of its size.
_EUROSAT100 = (
    "https://raw.githubusercontent.com/ai-extensions/stac-data-loader/"
    "9e13b11e8af985800bffbff9e72c75dccbb0935f/data/EuroSAT/"
)
MS_LISTING = ListedRows(path="eurosat_ms/MANIFEST.csv", resource="datasets_eurosat_ms.csv")

# The 29RKH scene. The data folder holds rio-tiler-pds's test fixtures of Earth Search's
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
    text = resources.files("eostream.runner").joinpath(listing.resource).read_text()
    return list(csv.DictReader(io.StringIO(text)))


#: Where each MS tif of the listing is published, by the folder it lies in: raw git blobs at the
#: commits named in eurosat_ms/PROVENANCE.md (sha256 of each checked against an independent
#: copy's Git-LFS pointer there); the listing is the data folder's MANIFEST.csv as is.
MS_SOURCES = {
    "eurosat100_stac/": _EUROSAT100,
    "eurosat_ms/shrey160_1pct/": (
        "https://raw.githubusercontent.com/shrey160/EuroSAT_MS_Deep_Learning/"
        "95c6739c0ec8940772510c78d1a17c7e394d3f6a/data/Euro_MS_Test_red/"
    ),
    "eurosat_ms/eotdl_small/": (
        "https://raw.githubusercontent.com/earthpulse/eotdl/"
        "2c97324509c335e9c3dd29c5fd5651c75af9c1bc/tutorials/notebooks/example_data/EuroSAT-small/"
    ),
}


def _ms_files() -> tuple[RemoteFile, ...]:
    files = []
    for row in listed_rows(MS_LISTING):
        prefix = next(p for p in MS_SOURCES if row["path"].startswith(p))
        url = MS_SOURCES[prefix] + row["path"][len(prefix) :]
        files.append(RemoteFile(row["path"], url, int(row["bytes"]), row["sha256"]))
    return tuple(files)


# The demo scene: the real Boadella L2A crop of 2020-06-21 (12 bands, Sentinel Hub order), its
# hand-made water labels and the crop's bounding box, as the EOTDL repository holds them at the
# commit named in boadella_l2a_sentinelhub/PROVENANCE.md (the last with the workshop folder).
# sha256 computed from the data folder's copies, which are those git blobs byte for byte.
BOADELLA_DIR = "sentinel2_scenes/boadella_l2a_sentinelhub"
DEMO_DATE = "2020-06-21"
_BOADELLA = (
    "https://raw.githubusercontent.com/earthpulse/eotdl/"
    "5467dd69c4fc54410db6fa6adae2e2bb08d2b211/tutorials/workshops/bids23/workshop_data/"
)
BOADELLA_FILES = tuple(
    RemoteFile(f"{BOADELLA_DIR}/{name}", _BOADELLA + name, size, sha256)
    for name, size, sha256 in (
        ("boadella_bbox.geojson", 363,
         "0a5730475442728f9e66afc81830481173dba413627b7390aee53cbb510ad142"),
        (f"sentinel_2/Boadella_{DEMO_DATE}.tif", 1_754_425,
         "8e80e37cd5a11d19ae2fc989d225e98fddab17a5fec8a1fa767bc78a64b5aabf"),
        (f"sentinel_2/Boadella_{DEMO_DATE}_labels.geojson", 90_869,
         "ca0b8354272aa88bce3d5f46eda8d3a83097c48c665fdac5118f1e85cbe59d1a"),
    )
)  # fmt: skip


DEMO = Manifest(
    files=(*_ms_files(), *BOADELLA_FILES, *SCENE_FILES),
    archives=(EUROSAT_RGB,),
    listings=(MS_LISTING,),
)


# --- where, and from where ------------------------------------------------------------------
def default_data_dir() -> Path:
    """``${EOSTREAM_CACHE:-~/.cache/eostream}/data/<DATA_VERSION>``: outside any clone."""
    return cache_root() / "data" / DATA_VERSION


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
