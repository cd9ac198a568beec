"""A pixel model fitted on the user's own labels: on the spectral indices alone, with its water
threshold inside the exported ONNX graph (benchmarks/maps/bench_own_labels.py's recipe).

Real data: pixels under the Boadella 2020-06-21 water labels (and the land around them), sampled
by the sampler inference uses; a small boosting (20 iterations), a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from eostream.inference import reference, sampling, scenecube
from eostream.shared.modelcard import INPUT_NAME
from eostream.shared.spectral import feature_names, index_features
from eostream.trainer.errors import DatasetError
from eostream.trainer.export import onnx_logits
from eostream.trainer.pixel import check_pixel_onnx, export_pixel_onnx, fit_pixel_model

DATE = "2020-06-21"


@pytest.fixture(scope="module")
def table(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> sampling.PixelTable:
    out = tmp_path_factory.mktemp("boadella") / "ref"
    labels = reference.build_boadella(data_dir, out, dates=[DATE])
    cube = scenecube.build(scenecube.scenes_in(str(out)), reference.BOADELLA_BANDS)
    return sampling.sample(cube, sampling.load_labels(str(labels)), max_per_class=1500, seed=0)


def test_indices_alone_are_the_tail_of_the_bands_and_indices(table: sampling.PixelTable) -> None:
    both = index_features(table.x, table.bands)
    alone = index_features(table.x, table.bands, with_bands=False)
    assert feature_names(table.bands, with_bands=False) == ("NDWI", "MNDWI", "NDVI", "NDBI")
    np.testing.assert_array_equal(alone, both[:, len(table.bands) :])
    water = table.y == table.classes.index("water")
    assert np.median(alone[water, 0]) > 0 > np.median(alone[~water, 0])  # NDWI, the real thing
    with pytest.raises(ValueError, match="no spectral index"):
        index_features(table.x[:, :2], ("B01", "B02"), with_bands=False)


def test_threshold_is_inside_the_exported_graph(table: sampling.PixelTable, tmp_path: Path) -> None:
    water = table.classes.index("water")
    model = fit_pixel_model(
        table.x, table.y, table.classes, table.bands, seed=0, max_iter=20, with_bands=False
    )
    assert model.estimator.n_features_in_ == 4
    strict = model.with_threshold(water, 0.9)
    card = sampling.card_for(table, "water-threshold-test").model_copy(
        update={"architecture": "pixel_hgb", **strict.card_fields()}
    )
    path = tmp_path / "model.onnx"
    export_pixel_onnx(strict, card, path)
    graph = onnx.load(str(path)).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:] == [12]
    assert graph.input[0].name == INPUT_NAME  # raw bands in; indices computed inside

    p = model.probabilities(table.x)[:, water]
    decided = onnx_logits(path, table.x).argmax(axis=1) == water
    clear_cut = np.abs(p - 0.9) > 1e-4  # float32 in the graph vs float64 here
    np.testing.assert_array_equal(decided[clear_cut], (p > 0.9)[clear_cut])
    plain = model.probabilities(table.x).argmax(axis=1) == water
    assert decided.sum() < plain.sum(), "a stricter threshold calls fewer pixels water"
    check = check_pixel_onnx(path, strict, table.x[:500], 1e-4)
    assert check.argmax_agreement > 0.99
    with pytest.raises(DatasetError):
        model.with_threshold(water, 1.0)
