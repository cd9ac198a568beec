"""Loading a model: checksum, card and graph are checked before anything goes live."""

from __future__ import annotations

import hashlib
import logging

import pytest

from eostream.inference import testing
from eostream.inference.errors import ModelLoadError
from eostream.inference.model import ModelInfo, load_model

INFO = ModelInfo(name="m", version="1")


def _load(data: bytes, sha: str | None = None) -> object:
    return load_model(
        data,
        INFO,
        expected_sha256=sha or hashlib.sha256(data).hexdigest(),
        providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        intra_op_threads=1,
    )


def test_a_good_model_loads_warm_on_the_best_provider() -> None:
    card = testing.model_card("ms13")
    model = _load(testing.build_onnx(card))
    assert model.card == card  # type: ignore[attr-defined]
    assert model.provider in ("CUDAExecutionProvider", "CPUExecutionProvider")  # type: ignore[attr-defined]


def test_a_provider_onnxruntime_offers_but_cannot_start_is_logged_and_not_claimed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # onnxruntime-gpu lists CUDA even where its libraries fail to load, then runs on the CPU: here
    # this CPU build is made to list it, and the real session falls back the same way
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is really available here")
    offered = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: offered)
    with caplog.at_level(logging.WARNING, logger="eostream.inference.model"):
        model = _load(testing.build_onnx(testing.model_card("rgb")))
    assert model.provider == "CPUExecutionProvider"  # type: ignore[attr-defined]
    (record,) = [r for r in caplog.records if "wanted CUDAExecutionProvider" in r.message]
    assert "runs on CPUExecutionProvider" in record.message


def test_checksum_mismatch_is_refused() -> None:
    data = testing.build_onnx(testing.model_card())
    with pytest.raises(ModelLoadError, match="sha256"):
        _load(data, "0" * 64)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 4}, "4 channels"),
        ({"input_name": "x"}, "no input 'input'"),
        ({"output_name": "probs"}, "no output 'logits'"),
        ({"with_card": False}, "metadata"),
    ],
)
def test_card_must_match_graph(kwargs: dict[str, object], message: str) -> None:
    data = testing.build_onnx(testing.model_card("rgb"), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match=message):
        _load(data)


def test_garbage_is_not_a_model() -> None:
    with pytest.raises(ModelLoadError, match="ONNX"):
        _load(b"not an onnx graph at all")
