"""Transfer learning RGB -> 13 bands against training from scratch, on the small real MS set.

1. trains (and registers) an RGB model on ``--rgb-samples-per-class`` JPEG patches per class;
2. fine-tunes a 13-band model from it (``base_model=models:/NAME/VERSION``: the first conv is
   widened, RGB filters copied to B04/B03/B02, the rest start small);
3. trains the same network from scratch on the same MS split (same seed, same held-out patches).

Prints both held-out accuracies and their difference. EuroSAT MS here has only 375 real patches
(about 51 held out), so one run's difference is noisy: use ``--seeds`` for several.

    EOSTREAM_DATA_DIR=/path/to/data uv run python benchmarks/train/transfer_ms.py
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import uuid

import torch

from eostream.shared.settings import load_settings
from eostream.trainer.pipeline import tracker_for, train_and_register
from eostream.trainer.plan import TrainingPlan
from eostream.trainer.settings import TrainerSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="small_cnn")
    parser.add_argument("--rgb-samples-per-class", type=int, default=300)
    parser.add_argument("--rgb-epochs", type=int, default=10)
    parser.add_argument("--ms-epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("stac_geoparquet", "onnxscript", "onnx_ir", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    overrides: dict[str, object] = {"bus": "memory"}
    tmp = tempfile.mkdtemp(prefix="transfer-")
    settings = load_settings(TrainerSettings, **overrides)
    if settings.mlflow_tracking_uri.startswith("sqlite:///.eostream"):
        settings = settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{tmp}/mlflow.db"})
    torch.set_num_threads(settings.num_threads)
    tracker = tracker_for(settings)
    tag = uuid.uuid4().hex[:6]
    rgb = train_and_register(
        TrainingPlan(
            request_id=f"transfer-rgb-{tag}",
            model_name=f"transfer-rgb-{tag}",
            band_set="rgb",
            architecture=args.architecture,
            epochs=args.rgb_epochs,
            learning_rate=3e-3,
            samples_per_class=args.rgb_samples_per_class,
        ),
        settings,
        tracker=tracker,
    )
    base = f"models:/{rgb.version.name}/{rgb.version.version}"
    print(f"RGB base model {base}: test accuracy {rgb.metrics['test_accuracy']:.3f}")
    gains = []
    for seed in args.seeds:
        scores = {}
        for label, base_model, lr in (("fine-tuned", base, 1e-3), ("scratch", None, 3e-3)):
            outcome = train_and_register(
                TrainingPlan(
                    request_id=f"transfer-ms-{label}-{seed}-{tag}",
                    model_name=f"transfer-ms-{tag}",
                    band_set="ms13",
                    architecture=args.architecture,
                    epochs=args.ms_epochs,
                    learning_rate=lr,
                    seed=seed,
                    base_model=base_model,
                    batch_size=32,
                    patience=args.ms_epochs,
                ),
                settings,
                tracker=tracker,
            )
            scores[label] = outcome.metrics["test_accuracy"]
        gains.append(scores["fine-tuned"] - scores["scratch"])
        print(
            f"seed {seed}: 13-band fine-tuned from RGB {scores['fine-tuned']:.3f}, "
            f"from scratch {scores['scratch']:.3f}, gain {gains[-1]:+.3f}"
        )
    print(
        f"mean gain of transfer over scratch: {statistics.mean(gains):+.3f} over "
        f"{len(gains)} seed(s)"
    )


if __name__ == "__main__":
    main()
