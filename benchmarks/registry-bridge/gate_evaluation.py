"""How much the gate's mlflow.models.evaluate costs over a bare ONNX Runtime pass.

Baseline (measured in the same run): run the ONNX model over the held-out set and compute
accuracy and per-class recall with numpy. Candidate: the bridge's evaluation (an MLflow run with
mlflow.models.evaluate, dataset logging, confusion matrix). Each is warmed up once, then timed
REPEATS times (default 5); prints the median seconds of each and their ratio.

    EOSTREAM_DATA_DIR=/work/shared/data uv run python benchmarks/registry-bridge/gate_evaluation.py
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from torch import nn

from eostream.registry_bridge import evaluation, holdout, onnx_model


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(4),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.f(x / 255.0)
        return out


def median_seconds(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """One warm-up call, then the median wall time of ``repeats`` calls, and the last result."""
    result = run()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def main() -> None:
    torch.set_num_threads(1)
    data_dir = Path(os.environ["EOSTREAM_DATA_DIR"])
    per_class = int(os.environ.get("PER_CLASS", "50"))
    repeats = int(os.environ.get("REPEATS", "5"))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TinyCNN().eval(),
            (torch.zeros(2, 3, 64, 64),),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to a file object too
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            dynamo=False,
        )
    started = time.perf_counter()
    h = holdout.load(data_dir, "rgb", per_class, "eostream-holdout-v1")
    load_s = time.perf_counter() - started
    sess = onnx_model.session(buf.getvalue(), 1)

    def baseline() -> tuple[float, list[float]]:
        predicted = np.argmax(onnx_model.logits(sess, h.images), axis=1)
        accuracy = float((predicted == h.labels).mean())
        return accuracy, [float((predicted[h.labels == c] == c).mean()) for c in range(10)]

    baseline_s, (accuracy, recall) = median_seconds(baseline, repeats)
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        mlflow_s, (result, _) = median_seconds(
            lambda: evaluation.evaluate(
                lambda x: onnx_model.logits(sess, x),
                h,
                experiment="bench",
                run_name="bench",
                params={},
                tags={},
            ),
            repeats,
        )
    assert abs(result.accuracy - accuracy) < 1e-9 and len(recall) == 10
    print(f"held-out set: {len(h.files)} images, loaded in {load_s:.2f}s")
    print(f"each warmed up once, then the median of {repeats} runs:")
    print(f"baseline (ORT + numpy): {baseline_s:.3f}s")
    print(f"mlflow.models.evaluate: {mlflow_s:.3f}s  ratio {mlflow_s / baseline_s:.1f}x")


if __name__ == "__main__":
    main()
