"""Loading a model: checksum, card and graph are checked before anything goes live."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import numpy.typing as npt
import pytest

from eostream.inference import testing
from eostream.inference.errors import BadInputError, ModelLoadError
from eostream.inference.model import (
    LoadedModel,
    ModelInfo,
    choose_providers,
    info_from_item,
    load_model,
)
from eostream.shared.modelcard import PATCH_SIZE

INFO = ModelInfo(name="m", version="1")
WANTED = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _load(data: bytes, sha: str | None = None) -> LoadedModel:
    return load_model(
        data,
        INFO,
        expected_sha256=sha or hashlib.sha256(data).hexdigest(),
        providers=WANTED,
        intra_op_threads=1,
    )


def test_a_good_model_loads_warm_on_the_best_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    card = testing.model_card("ms13")
    batches: list[tuple[int, ...]] = []
    run = LoadedModel.run

    def counting_run(self: LoadedModel, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        batches.append(batch.shape)
        return run(self, batch)

    monkeypatch.setattr(LoadedModel, "run", counting_run)
    model = _load(testing.build_onnx(card))
    assert model.card == card
    # the first of the wanted providers this onnxruntime offers (CUDA on a GPU machine's
    # onnxruntime-gpu, else the CPU), and the session really runs on it
    best = choose_providers(WANTED)[0]
    assert model.provider == best == model.session.get_providers()[0]
    # warm: one real batch went through the graph before the model was handed over
    assert batches == [(2, len(card.bands), PATCH_SIZE, PATCH_SIZE)]


def test_a_model_that_cannot_run_a_batch_is_refused_at_load() -> None:
    """The graph's signature matches its card, but it runs only a multiple of three chips at a
    time: the warm-up batch (two chips) finds that out at load, not the first request."""
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load_from_string(testing.build_onnx(testing.model_card("rgb")))
    flatten = next(n for n in graph.graph.node if n.op_type == "Flatten")
    features = flatten.output[0]  # [N, 8]
    # [N, 8] -> [-1, 3] -> [N, 8]: the same values when 8N divides by 3, an error otherwise
    flatten.output[0] = "flat"
    nodes = [
        helper.make_node("Reshape", ["flat", "threes"], ["in_threes"]),
        helper.make_node("Reshape", ["in_threes", "eights"], [features]),
    ]
    at = list(graph.graph.node).index(flatten) + 1
    for offset, node in enumerate(nodes):
        graph.graph.node.insert(at + offset, node)
    graph.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1, 3], np.int64), "threes"),
            numpy_helper.from_array(np.array([-1, 8], np.int64), "eights"),
        ]
    )
    data = graph.SerializeToString()
    with pytest.raises(ModelLoadError, match="fails to run"):
        _load(data)


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
    assert model.provider == "CPUExecutionProvider"
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


def test_a_file_that_is_not_an_mlm_item_is_told_in_words() -> None:
    """The 400 says what is wrong, not a Python exception's repr (it showed
    AttributeError("'list' object has no attribute 'values'"))."""
    cases = {
        b"{not json": "not JSON",
        b"[" * 100_000: "not JSON",
        b'{"id": "m", "assets": {}}': "no 'properties'",
        b'{"id": "m", "properties": {}, "assets": []}': "a field of the wrong type",
    }
    for data, words in cases.items():
        with pytest.raises(BadInputError) as caught:
            info_from_item(data, "mlm.json")
        message = str(caught.value)
        assert message.startswith("mlm.json is not an MLM item") and words in message, message
        assert "Error(" not in message
