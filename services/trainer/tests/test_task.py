"""Training is seeded, augments only the train set, and resumes from its checkpoint after a crash
exactly where it stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eostream.shared.modelcard import BAND_SETS
from eostream.trainer.catalog import CatalogTable
from eostream.trainer.datasets import PatchTensors, augment, band_statistics, load_patches
from eostream.trainer.models import build_model
from eostream.trainer.selection import SelectionSpec, select
from eostream.trainer.task import TrainConfig, fit


@pytest.fixture(scope="module")
def ms_data(ms_table: CatalogTable, data_dir: Path) -> dict[str, PatchTensors]:
    selection = select(ms_table, SelectionSpec("ms13", samples_per_class=12, seed=5))
    return {s: load_patches(data_dir, "ms13", selection.of(s)) for s in ("train", "val")}


def _model(train: PatchTensors) -> torch.nn.Module:
    torch.manual_seed(1)
    mean, std = band_statistics(train.x)
    return build_model("small_cnn", BAND_SETS["ms13"], mean, std)


class Crash(RuntimeError):
    pass


def test_crash_resumes_from_checkpoint(ms_data: dict[str, PatchTensors], tmp_path: Path) -> None:
    config = TrainConfig(epochs=3, batch_size=16, seed=9)
    cpu = torch.device("cpu")
    straight = _model(ms_data["train"])
    history = fit(straight, ms_data["train"], ms_data["val"], config, cpu)

    def crash_after_second(epoch: int, _metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise Crash

    checkpoint = tmp_path / "ckpt.pt"
    interrupted = _model(ms_data["train"])
    with pytest.raises(Crash):
        fit(
            interrupted,
            ms_data["train"],
            ms_data["val"],
            config,
            cpu,
            checkpoint=checkpoint,
            on_epoch=crash_after_second,
        )
    # the epoch that crashed in its callback was not checkpointed: resume redoes it
    resumed = _model(ms_data["train"])
    seen: list[int] = []
    history_resumed = fit(
        resumed,
        ms_data["train"],
        ms_data["val"],
        config,
        cpu,
        checkpoint=checkpoint,
        on_epoch=lambda e, _m: seen.append(e),
    )
    assert seen == [1, 2]
    assert len(history_resumed.epochs) == len(history.epochs) == 3
    for a, b in zip(history.epochs, history_resumed.epochs, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    for (name, p), q in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.allclose(p.float(), q.float(), atol=1e-5), name


def test_augmentation_keeps_content() -> None:
    x = torch.arange(2 * 64 * 64, dtype=torch.float32).view(1, 2, 64, 64).repeat(16, 1, 1, 1)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out.sort(dim=-1).values.sum((2, 3)), x.sort(dim=-1).values.sum((2, 3)))
    assert not all(torch.equal(out[i], x[i]) for i in range(16))  # something moved
