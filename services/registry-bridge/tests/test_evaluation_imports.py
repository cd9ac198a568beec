"""The gate's MLflow evaluation imports nothing lazily once the bridge is loaded.

MLflow's import-hook finder takes a lock of its own inside the interpreter's import lock, and
its post-import hooks import while holding that lock; a module of MLflow's first imported on a
worker thread (the evaluator registry by ``mlflow.models.evaluate``) while another thread
imports anything (every MLflow REST call tries to import Databricks' ``dbruntime``) deadlocks
the process. In the embedded mode the trainer and the bridge share one: a gate's first
evaluation against a training run's log_params hung both for good. So the bridge imports them at
start-up. Around every evaluation MLflow also reconfigured each loaded library's autologging
inside that lock (importing mlflow.pytorch, trying lightning and pytorch_lightning every time:
another hang, seen with the trainer's torch loaded); the bridge's evaluation skips that (its
model is a plain function). This checks, in a fresh interpreter with torch loaded, that a real
evaluation run imports (or tries to import) none of them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import sys

    import mlflow
    import numpy as np
    import torch  # noqa: F401  (the trainer's library, loaded in the embedded mode)

    from eostream.registry_bridge import registry  # noqa: F401  (what the bridge imports)
    from eostream.registry_bridge.evaluation import evaluate
    from eostream.registry_bridge.holdout import Holdout

    mlflow.set_tracking_uri(sys.argv[1])
    imported = []
    sys.addaudithook(
        lambda event, args: imported.append(args[0])
        if event == "import"
        else None
    )
    rng = np.random.default_rng(0)
    holdout = Holdout(
        "rgb", tuple(f"f{i}" for i in range(8)), np.arange(8) % 2,
        rng.random((8, 3, 4, 4), dtype=np.float32), "0" * 64, classes=("water", "other"),
    )
    result, run_id = evaluate(
        lambda x: np.stack([x.mean(axis=(1, 2, 3)), 1 - x.mean(axis=(1, 2, 3))], axis=1),
        holdout, experiment="gate", run_name="check", params={}, tags={},
    )
    print("imported lazily:", sorted(set(imported)))
    assert 0.0 <= result.accuracy <= 1.0 and run_id
    lazy = sorted(
        {
            m
            for m in imported
            if m.startswith(("mlflow.models.evaluation", "mlflow.pytorch"))
            or m in ("lightning", "pytorch_lightning")
        }
    )
    assert not lazy, lazy
    """
)


def test_the_gate_evaluation_imports_no_evaluator_lazily(
    tmp_path: Path, sqlite_mlflow: str
) -> None:
    uri = sqlite_mlflow
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, uri],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # the gate's run keeps its artifacts beside the sqlite database, not in ./mlruns of the
    # folder the bridge happened to run in
    assert not (tmp_path / "mlruns").exists()
    database = Path(uri.removeprefix("sqlite:///"))
    assert any((database.parent / "mlartifacts").rglob("*")), "no artifact beside the database"
