"""The held-out set is fixed (hash of names, not listing order) and in the model's units."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eostream.registry_bridge import holdout
from eostream.shared.holdout import choose


def test_selection_is_deterministic_and_order_free() -> None:
    names = {
        "Forest": [f"Forest_{i}.jpg" for i in range(100)],
        "River": [f"River_{i}.jpg" for i in range(50)],
    }
    a = choose(names, 5, "salt")
    b = choose({k: list(reversed(v)) for k, v in names.items()}, 5, "salt")
    assert a == b and len(a) == 10
    assert choose(names, 5, "other salt") != a
    assert set(choose(names, 6, "salt")) > set(a)  # growing the set keeps its members


def test_rgb_holdout_in_model_units(data_dir: Path) -> None:
    h = holdout.load(data_dir, "rgb", 2, "eostream-holdout-v1")
    assert h.images.shape == (20, 3, 64, 64) and h.images.dtype == np.float32
    assert h.images.max() > 100 and h.images.max() <= 255  # 0..255 pixels, R, G, B
    assert list(h.labels) == [i for i in range(10) for _ in range(2)]
    assert h.digest == holdout.load(data_dir, "rgb", 2, "eostream-holdout-v1").digest


def test_ms13_holdout_is_reflectance_in_file_band_order(data_dir: Path) -> None:
    h = holdout.load(data_dir, "ms13", 3, "eostream-holdout-v1")
    assert h.images.shape == (30, 13, 64, 64)
    assert 0 < float(np.median(h.images)) < 1  # DN / 10000
    # B10 (cirrus, index 9) is tiny; B8A (index 12, last) is close to B08 (index 7)
    assert h.images[:, 9].mean() < 0.01
    assert abs(h.images[:, 12].mean() - h.images[:, 7].mean()) < 0.05
    assert len({Path(f).name for f in h.files}) == 30
