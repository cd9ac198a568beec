"""What ``eostream maps evaluate`` tells: a table, a JSON summary, confusion-matrix pictures, and
an MLflow run. matplotlib and mlflow are imported only here, and only when used (the ``maps``
extra of eostream-inference)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from eostream.inference.evaluation import WATER, Report, scores_for
from eostream.inference.reference import PARTIAL

METRICS = ("precision", "recall", "f1", "iou")
TUNED_NOTE = (
    "NDWI > t -> water, t chosen where the water IoU pooled over the other complete dates is "
    "highest (leave one date out): a baseline that learnt from labels, as a model trained on the "
    "other dates' labels did"
)
PARTIAL_NOTE = (
    "partial labels: scored inside the labelled polygons only (recall; precision, F1 and IoU "
    "are undefined there) and left out of the pooled figures"
)


def summary(report: Report) -> dict[str, Any]:
    classes = report.classes
    items = []
    for r in report.items:
        entry: dict[str, Any] = {
            "item": r.item_id,
            "scene": r.scene_id,
            "date": r.date,
            "coverage": r.coverage,
            "pixels": r.pixels,
            "uncertain_pixels": r.uncertain,
            "model": scores_for(r.model_cm, classes, r.partial),
            "model_confusion": r.model_cm.tolist(),
            "model_overall_accuracy": None if r.partial else _oa(r.model_cm),
        }
        if r.ndwi_cm is not None:
            entry["ndwi"] = {WATER: scores_for(r.ndwi_cm, classes, r.partial)[WATER]}
            entry["ndwi_confusion"] = r.ndwi_cm.tolist()
            entry["ndwi_overall_accuracy"] = None if r.partial else _oa(r.ndwi_cm)
        tuned = report.tuned_ndwi(r)
        if tuned is not None:
            threshold, tcm, dates = tuned
            entry["ndwi_tuned"] = {
                WATER: scores_for(tcm, classes, r.partial)[WATER],
                "threshold": threshold,
                "tuned_on": dates,
            }
        items.append(entry)
    pooled: dict[str, Any] = {"items": [r.item_id for r in report.items if not r.partial]}
    cm = report.pooled("model")
    if cm is not None:
        pooled |= {
            "model": scores_for(cm, classes, False),
            "model_overall_accuracy": _oa(cm),
            "model_confusion": cm.tolist(),
        }
    ncm = report.pooled("ndwi")
    if ncm is not None:
        pooled |= {
            "ndwi": {WATER: scores_for(ncm, classes, False)[WATER]},
            "ndwi_overall_accuracy": _oa(ncm),
            "ndwi_confusion": ncm.tolist(),
        }
    tuned_cm = report.pooled("ndwi_tuned")
    if tuned_cm is not None:
        pooled["ndwi_tuned"] = {WATER: scores_for(tuned_cm, classes, False)[WATER]}
    ref = report.reference
    return {
        "model": report.model,
        "model_name": report.model_name,
        "model_version": report.model_version,
        "model_run_id": report.model_run_id,
        "precision": report.precision,
        "reference": ref.href,
        "reference_collection": ref.collection_id,
        "classes": classes,
        "class_mapping": ref.mapping,
        "background_class": f"{ref.background}: every other model class",
        "baseline": "NDWI = (B03 - B08) / (B03 + B08) > 0 -> water, on the same pixels",
        "tuned_baseline": TUNED_NOTE,
        "partial_labels": PARTIAL_NOTE,
        "scoring": report.scoring,
        "uncertain": f"uncertain pixels are counted as {ref.background}",
        "items": items,
        "pooled": pooled,
        "errors": report.errors,
    }


def _oa(cm: np.ndarray) -> float | None:
    from eostream.inference.accuracy import overall_accuracy

    return overall_accuracy(cm)


def _f(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def _version(report: Report) -> str:
    return f" v{report.model_version}" if report.model_version else ""


def _scoring_line(report: Report) -> str:
    """How the maps were made, which moves the figures (``INFERENCE_STRIDE``,
    ``INFERENCE_UNCERTAIN_BELOW``); and how many scored pixels they left uncertain."""
    s = report.scoring
    pixels = sum(r.pixels for r in report.items)
    uncertain = sum(r.uncertain for r in report.items)
    share = f"{uncertain / pixels:.1%}" if pixels else "-"
    return (
        f"maps at stride {s.get('stride', '?')}, uncertain below {s.get('uncertain_below', '?')}:"
        f" {share} of the scored pixels uncertain, counted as {report.reference.background}"
    )


def table(report: Report) -> list[str]:
    """The lines printed for a person: water per date (model beside NDWI), then pooled scores."""
    s = summary(report)
    ref = report.reference
    mapping = "; ".join(f"{k} <- {', '.join(v)}" for k, v in ref.mapping.items())
    lines = [
        f"reference {ref.collection_id}: {len(ref.items)} label items; {mapping}; "
        f"{ref.background} <- every other model class",
        f"model {report.model_name}{_version(report)} ({report.model}), {report.precision}",
        _scoring_line(report),
        "",
        f"{'date':<11} {'coverage':<9} {'pixels':>7}  {'model water P / R / IoU':<24}"
        f"{'NDWI water P / R / IoU':<24}{'tuned NDWI IoU (t)':<20}{'model OA':>9}{'NDWI OA':>9}",
    ]
    for e in s["items"]:
        m = e["model"].get(WATER, {})
        n = e.get("ndwi", {}).get(WATER, {})
        tuned = e.get("ndwi_tuned")
        t = f"{_f(tuned[WATER]['iou'])} ({tuned['threshold']:+.2f})" if tuned else "  -"
        lines.append(
            f"{e['date']:<11} {e['coverage']:<9} {e['pixels']:>7}  "
            f"{_f(m.get('precision'))} / {_f(m.get('recall'))} / {_f(m.get('iou'))}   "
            f"{_f(n.get('precision'))} / {_f(n.get('recall'))} / {_f(n.get('iou'))}   "
            f"{t:<18}{_f(e['model_overall_accuracy']):>9}{_f(e.get('ndwi_overall_accuracy')):>9}"
        )
    if any("ndwi_tuned" in e for e in s["items"]):
        lines.append(f"(tuned NDWI: {TUNED_NOTE})")
    if any(e["coverage"] == PARTIAL for e in s["items"]):
        lines.append(f"({PARTIAL_NOTE})")
    pooled = s["pooled"]
    if "model" in pooled:
        lines += ["", f"pooled over {len(pooled['items'])} complete items:"]
        lines.append(f"  {'class':<10}" + "".join(f"{k:>11}" for k in METRICS))
        for name, sc in pooled["model"].items():
            lines.append(f"  {name:<10}" + "".join(f"{_f(sc[k]):>11}" for k in METRICS))
        if "ndwi" in pooled:
            sc = pooled["ndwi"][WATER]
            lines.append(f"  {'NDWI water':<10}" + "".join(f"{_f(sc[k]):>11}" for k in METRICS))
        if "ndwi_tuned" in pooled:
            sc = pooled["ndwi_tuned"][WATER]
            lines.append(f"  {'tuned NDWI':<10}" + "".join(f"{_f(sc[k]):>11}" for k in METRICS))
        lines.append(
            f"  overall accuracy: model {_f(pooled['model_overall_accuracy'])}, "
            f"NDWI {_f(pooled.get('ndwi_overall_accuracy'))}"
        )
    return lines


def confusion_png(
    path: Path, classes: list[str], panels: list[tuple[str, np.ndarray]], title: str
) -> Path:
    """Confusion matrices side by side (rows: reference, columns: prediction), counts and
    row-normalised shares in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (name, cm) in zip(axes[0], panels, strict=True):
        rows = cm.sum(axis=1, keepdims=True)
        share = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), classes)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("reference")
        ax.set_title(name)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]:,}\n{share[i, j]:.0%}",
                    ha="center",
                    va="center",
                    color="white" if share[i, j] > 0.5 else "black",
                    fontsize=9,
                )
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def made_by(report: Report) -> str:
    """The model as a figure names it: name, version, precision and run (``eurosat-landcover v1,
    int8\nrun 2d0599f5``), as far as the report knows them."""
    version = f" v{report.model_version}" if report.model_version else ""
    run = f"\nrun {report.model_run_id[:8]}" if report.model_run_id else ""
    return f"{report.model_name}{version}, {report.precision}{run}"


def write_outputs(report: Report, out_dir: Path) -> list[Path]:
    """``summary.json`` and the confusion PNGs (pooled, and one per item) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "summary.json"]
    written[0].write_text(json.dumps(summary(report), indent=2))
    classes = report.classes
    model = made_by(report)
    cm = report.pooled("model")
    if cm is not None:
        panels = [(model, cm)]
        ncm = report.pooled("ndwi")
        if ncm is not None:
            panels.append(("NDWI > 0", ncm))
        written.append(
            confusion_png(out_dir / "confusion.png", classes, panels, "pooled, complete items")
        )
    for r in report.items:
        panels = [(model, r.model_cm)]
        if r.ndwi_cm is not None:
            panels.append(("NDWI > 0", r.ndwi_cm))
        title = f"{r.item_id} ({r.coverage})"
        written.append(
            confusion_png(out_dir / f"confusion-{r.item_id}.png", classes, panels, title)
        )
    return written


def mlflow_metrics(report: Report) -> dict[str, float]:
    """Flat metric names: ``<class>_<metric>`` pooled, ``ndwi_water_<metric>``,
    ``ndwi_tuned_water_<metric>``, and per date ``<date>/model/<class>_<metric>`` /
    ``<date>/ndwi/water_<metric>`` / ``<date>/ndwi_tuned/water_<metric>``."""
    s = summary(report)
    out: dict[str, float] = {}

    def put(prefix: str, scores: dict[str, dict[str, Any]]) -> None:
        for name, sc in scores.items():
            for k in METRICS:
                if sc.get(k) is not None:
                    out[f"{prefix}{name}_{k}"] = float(sc[k])

    pooled = s["pooled"]
    put("", pooled.get("model", {}))
    put("ndwi_", pooled.get("ndwi", {}))
    put("ndwi_tuned_", pooled.get("ndwi_tuned", {}))
    for key in ("model_overall_accuracy", "ndwi_overall_accuracy"):
        if pooled.get(key) is not None:
            out[key] = float(pooled[key])
    for e in s["items"]:
        put(f"{e['date']}/model/", e["model"])
        put(f"{e['date']}/ndwi/", e.get("ndwi", {}))
        tuned = e.get("ndwi_tuned")
        if tuned:
            put(f"{e['date']}/ndwi_tuned/", {WATER: tuned[WATER]})
    out["items_evaluated"] = float(len(report.items))
    out["items_failed"] = float(len(report.errors))
    return out


def log_to_mlflow(report: Report, tracking_uri: str, experiment: str, artifacts: list[Path]) -> str:
    """One MLflow run with the parameters, metrics and pictures; returns the run id."""
    import mlflow

    from eostream.shared import provenance

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(
        experiment_id,
        run_name=f"maps-{report.reference.collection_id}-{report.model_name}",
        tags={
            **provenance.code_version("eostream-inference").run_tags(),  # package, commit
            "eostream.kind": "map-evaluation",
            "eostream.model": report.model_name,
        },
    )
    run_id = str(run.info.run_id)
    try:
        params = {
            "model": report.model,
            "model_name": report.model_name,
            "precision": report.precision,
            "reference": report.reference.href,
            "reference_collection": report.reference.collection_id,
            "class_mapping": json.dumps(report.reference.mapping),
            "baseline": "ndwi>0",
            "partial_labels": "recall only, not pooled",
            **{f"scoring_{k}": str(v) for k, v in report.scoring.items()},
        }
        if report.model_version:
            params["model_version"] = report.model_version
        if report.model_run_id:
            params["model_run_id"] = report.model_run_id
        for key, text in params.items():
            client.log_param(run_id, key, text[:500])
        for key, value in mlflow_metrics(report).items():
            client.log_metric(run_id, key, value)
        for path in artifacts:
            client.log_artifact(run_id, str(path), artifact_path="map-accuracy")
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id
