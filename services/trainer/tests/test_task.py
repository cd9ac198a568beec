"""Training is seeded, augments only the train set, and resumes from its checkpoint after a crash
exactly where it stopped, with the recipe's extras (label smoothing, mixup/cutmix, EMA) too."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from eostream.shared.modelcard import BAND_SETS
from eostream.trainer import task
from eostream.trainer.catalog import CatalogTable
from eostream.trainer.datasets import PatchTensors, augment, band_statistics, load_patches
from eostream.trainer.models import build_model
from eostream.trainer.scoring import evaluate
from eostream.trainer.selection import SelectionSpec, select
from eostream.trainer.task import TrainConfig, fit, mix_batch, training_precision

RECIPE = {"label_smoothing": 0.1, "mix": "both", "ema_decay": 0.9}


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


@pytest.mark.parametrize("extras", [{}, RECIPE], ids=["plain", "recipe"])
def test_crash_resumes_from_checkpoint(
    ms_data: dict[str, PatchTensors], tmp_path: Path, extras: dict[str, object]
) -> None:
    # One thread: a reduction split between two threads may add in another order from one run
    # to the next (1 in ~12 runs drifted 3e-4 in the loss), which is not what this checks.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _crash_and_resume(ms_data, tmp_path, extras)
    finally:
        torch.set_num_threads(threads)


def _crash_and_resume(
    ms_data: dict[str, PatchTensors], tmp_path: Path, extras: dict[str, object]
) -> None:
    config = TrainConfig(epochs=3, batch_size=16, seed=9, **extras)  # type: ignore[arg-type]
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


def test_mixup_blends_pairs_and_cutmix_pastes_a_box_of_the_partner() -> None:
    x = torch.rand(8, 3, 16, 16)
    y = torch.arange(8)
    rng = np.random.default_rng(3)
    mixed, partner_y, lam = mix_batch(x, y, "mixup", rng)
    partner = partner_y  # labels are the indices: the partner's label is its row
    assert 0.0 <= lam <= 1.0
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[partner], atol=1e-6)

    for _ in range(5):
        mixed, partner, lam = mix_batch(x, y, "cutmix", rng)
        from_self = (mixed == x).all(1)
        from_partner = (mixed == x[partner]).all(1) & ~from_self
        assert bool((from_self | from_partner).all())  # every pixel is one of the two
        for i in range(8):
            if partner[i] != i:  # a patch mixed with itself shows no box
                share = float(from_partner[i].float().mean())
                assert share == pytest.approx(1 - lam, abs=1e-9)


def test_the_ema_is_what_is_validated_kept_and_handed_back(
    ms_data: dict[str, PatchTensors],
) -> None:
    cpu = torch.device("cpu")
    plain = _model(ms_data["train"])
    fit(plain, ms_data["train"], ms_data["val"], TrainConfig(epochs=2, batch_size=16), cpu)
    averaged = _model(ms_data["train"])
    config = TrainConfig(epochs=2, batch_size=16, ema_decay=0.8)
    history = fit(averaged, ms_data["train"], ms_data["val"], config, cpu)
    # same seed, same steps: only the averaging differs
    assert any(
        not torch.equal(p, q)
        for p, q in zip(plain.state_dict().values(), averaged.state_dict().values(), strict=True)
    )
    assert evaluate(averaged, ms_data["val"], cpu)["accuracy"] == pytest.approx(
        history.best_val_accuracy
    )


def test_the_weight_average_is_torchs_ema_and_resumes(ms_data: dict[str, PatchTensors]) -> None:
    """WeightAverage keeps the host's count instead of reading it from the device each step
    (on a GPU); what it computes and saves is torch's AveragedModel with an EMA."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model = _model(ms_data["train"])
    ours = task.WeightAverage(model, 0.8)
    ema = get_ema_multi_avg_fn(0.8)  # type: ignore[no-untyped-call]
    torchs = AveragedModel(model, multi_avg_fn=ema, use_buffers=False)
    resumed = task.WeightAverage(model, 0.8)
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.train()(ms_data["train"].x[:8])  # moves the batch-norm buffers
        ours.update_parameters(model)
        torchs.update_parameters(model)
        if step == 2:  # a resume from a checkpoint of three steps
            resumed.load_state_dict(ours.state_dict())
        elif step > 2:
            resumed.update_parameters(model)
    for averaged in (ours, resumed):
        assert averaged.updates == 5
        mine, reference = averaged.state_dict(), torchs.state_dict()
        assert mine.keys() == reference.keys()
        assert all(torch.equal(mine[k], reference[k]) for k in reference)


def test_the_batch_norm_refresh_is_torchs_update_bn(ms_data: dict[str, PatchTensors]) -> None:
    """refresh_batch_norm sets each batch's weight on the host; the statistics are update_bn's
    plain average over the same batches."""
    from torch.optim.swa_utils import update_bn

    train, config = ms_data["train"], TrainConfig(batch_size=16)
    ours, reference = _model(train), _model(train)
    ours.eval()
    task.refresh_batch_norm(ours, train, torch.device("cpu"), config)
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
    index = index[: task.BN_REFRESH_PATCHES]
    batches = [train.x[index[i : i + 16]] for i in range(0, len(index), 16)]
    last = torch.channels_last
    update_bn([b.contiguous(memory_format=last) for b in batches], reference.eval())
    assert not ours.training
    mine, theirs = ours.state_dict(), reference.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert all(m.momentum == 0.1 for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_segmentation_refuses_mixing(ms_data: dict[str, PatchTensors]) -> None:
    train = ms_data["train"]
    masks = PatchTensors(train.x, train.y[:, None, None].expand(-1, 64, 64).contiguous(), train.ids)
    with pytest.raises(ValueError, match="segmentation"):
        fit(_model(train), masks, masks, TrainConfig(epochs=1, mix="cutmix"), torch.device("cpu"))


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-bf16"])
def test_cpu_bf16_computes_in_bf16_where_native_and_keeps_fp32_weights(
    ms_data: dict[str, PatchTensors],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    native: bool,
) -> None:
    monkeypatch.setattr(task, "native_bf16", lambda: native)
    cpu = torch.device("cpu")
    config = TrainConfig(epochs=1, batch_size=16, cpu_bf16=True)
    model = _model(ms_data["train"])
    computed: set[torch.dtype] = set()
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first_conv.register_forward_hook(
        lambda m, _i, out: computed.add(out.dtype) if m.training else None
    )
    before = [p.detach().clone() for p in model.parameters()]
    history = fit(model, ms_data["train"], ms_data["val"], config, cpu)
    hook.remove()
    expected = "bf16-mixed" if native else "fp32"
    assert training_precision(config, cpu) == expected
    assert computed == {torch.bfloat16 if native else torch.float32}
    assert ("no native bf16" in caplog.text) is not native
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay fp32
    assert any(not torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    assert np.isfinite(history.epochs[0]["train_loss"])
    # validation runs in fp32 on the fp32 weights: what it kept is what evaluate() measures
    assert evaluate(model, ms_data["val"], cpu)["accuracy"] == pytest.approx(
        history.best_val_accuracy
    )


def test_a_checkpoint_resumes_whatever_the_precision_and_from_before_the_field() -> None:
    config = asdict(TrainConfig(epochs=3))
    older = {k: v for k, v in config.items() if k != "cpu_bf16"}  # written before the field
    assert task.resumable(older) == task.resumable(config)
    assert task.resumable({**config, "cpu_bf16": True}) == task.resumable(config)
    assert task.resumable({**config, "epochs": 4}) != task.resumable(config)


def test_an_epochs_learning_rate_is_the_one_it_trained_at(
    ms_data: dict[str, PatchTensors],
) -> None:
    """The metric was read after the scheduler's step: the next epoch's rate, 0.0 at the end
    beside the run's learning_rate parameter of 0.001."""
    config = TrainConfig(epochs=2, batch_size=16, learning_rate=1e-3)
    history = fit(
        _model(ms_data["train"]), ms_data["train"], ms_data["val"], config, torch.device("cpu")
    )
    rates = [e["learning_rate"] for e in history.epochs]
    assert rates[0] == pytest.approx(1e-3) and 0 < rates[1] < rates[0]
