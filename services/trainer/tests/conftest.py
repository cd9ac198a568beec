"""Fixtures of the trainer's tests: small real data, a local sqlite MLflow, 1-2 torch threads."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from eostream.trainer.catalog import CatalogTable, build_catalog
from eostream.trainer.settings import TrainerSettings

for _noisy in ("stac_geoparquet", "onnxscript", "onnx_ir", "alembic"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trainer_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trainer-cache")


def _built(data_dir: Path, trainer_cache: Path, band_set: str) -> CatalogTable:
    """The table built here and now, not copied from this machine's cache (where an earlier run,
    maybe of other code, left one): the catalogue's own tests test the builder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EOSTREAM_CACHE", str(trainer_cache / "machine"))
        return build_catalog(data_dir, trainer_cache, band_set)


@pytest.fixture(scope="session")
def ms_table(data_dir: Path, trainer_cache: Path) -> CatalogTable:
    return _built(data_dir, trainer_cache, "ms13")


@pytest.fixture(scope="session")
def rgb_table(data_dir: Path, trainer_cache: Path) -> CatalogTable:
    return _built(data_dir, trainer_cache, "rgb")


def make_settings(
    data_dir: Path, cache_dir: Path, tracking_uri: str, **extra: object
) -> TrainerSettings:
    return TrainerSettings(
        bus="memory",
        data_dir=data_dir,
        cache_dir=cache_dir,
        mlflow_tracking_uri=tracking_uri,
        experiment_name="eostream-trainer-tests",
        num_threads=2,
        device="cpu",
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def sqlite_settings(data_dir: Path, trainer_cache: Path, sqlite_mlflow: str) -> TrainerSettings:
    return make_settings(data_dir, trainer_cache, sqlite_mlflow)
