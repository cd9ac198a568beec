"""Band order: where each band a model wants sits in a EuroSAT MS GeoTIFF (B8A is LAST there)."""

from __future__ import annotations

from collections.abc import Sequence

from eostream.shared.modelcard import BAND_SETS, EUROSAT_MS_FILE_ORDER
from eostream.trainer.errors import BadTrainingRequestError


def band_set_bands(band_set: str) -> tuple[str, ...]:
    try:
        return BAND_SETS[band_set]
    except KeyError:
        raise BadTrainingRequestError(
            f"unknown band set {band_set!r}; choose one of {sorted(BAND_SETS)}"
        ) from None


def file_indices(
    wanted: Sequence[str], file_order: Sequence[str] = EUROSAT_MS_FILE_ORDER
) -> list[int]:
    """0-based indices into a file with ``file_order`` bands, giving ``wanted`` in order."""
    missing = [b for b in wanted if b not in file_order]
    if missing:
        raise ValueError(f"bands {missing} are not in the file (it has {list(file_order)})")
    return [list(file_order).index(b) for b in wanted]
