"""Scoring a model on labelled patches (or per-pixel masks): its predictions, the confusion
matrix, each class's precision, recall and IoU, the loss and the accuracy.

Training validates with :func:`evaluate` every epoch (:mod:`.task`); the pipelines score the test
split with it, and the pixel models score their own predictions with :func:`confusion_matrix`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from eostream.trainer.datasets import UNKNOWN, PatchTensors
from eostream.trainer.models import NUM_CLASSES


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, classes: int = NUM_CLASSES
) -> np.ndarray:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def per_class_scores(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall per class from a confusion matrix (rows: truth, columns: predicted)."""
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    actual = matrix.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    return precision, recall


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """Logits for ``x`` (on the CPU), in eval mode, in batches."""
    model.eval()
    outs = [
        model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outs) if outs else torch.empty(0, NUM_CLASSES)


def evaluate(model: nn.Module, data: PatchTensors, device: torch.device) -> dict[str, Any]:
    """Loss, accuracy, confusion, precision and recall of ``model`` on ``data``; on per-pixel
    masks (a segmentation set) over the labelled pixels, with each class's IoU and their mean
    (``mean_iou``) too."""
    logits = predict(model, data.x, device)
    loss = (
        float(nn.functional.cross_entropy(logits, data.y, ignore_index=UNKNOWN))
        if len(data) and bool((data.y != UNKNOWN).any())
        else 0.0
    )
    pred = logits.argmax(dim=1).numpy()
    truth = data.y.numpy()
    labelled = truth != UNKNOWN
    pred, truth = pred[labelled], truth[labelled]
    classes = int(logits.shape[1]) if logits.dim() > 1 else NUM_CLASSES
    matrix = confusion_matrix(truth, pred, classes)
    precision, recall = per_class_scores(matrix)
    result = {
        "loss": loss,
        "accuracy": float((pred == truth).mean()) if len(truth) else 0.0,
        "confusion": matrix,
        "precision": precision,
        "recall": recall,
    }
    if data.y.dim() == 3:
        iou = class_ious(matrix)
        result["iou"] = iou
        result["mean_iou"] = float(iou[matrix.sum(axis=1) > 0].mean()) if len(truth) else 0.0
    return result


def class_ious(matrix: np.ndarray) -> np.ndarray:
    """Each class's intersection over union from a confusion matrix."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
    iou: np.ndarray = np.divide(tp, union, out=np.zeros_like(tp), where=union > 0)
    return iou
