"""``eostream trainer fit --stac-out DIR``: the registered model as a self-contained STAC catalog
(``catalog.json``, one MLM item, the ONNX file and its model card), the stage-out layout of the
OGC EO application package best practice, which the CWL package in deploy/cwl relies on."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eostream.trainer.pipeline import Outcome


def write_model_catalog(
    outcome: Outcome, onnx_path: Path, out_dir: Path, base_model: str | None = None
) -> Path:
    """A self-contained STAC catalog in ``out_dir`` with one MLM item: the ONNX and its card.

    The item is the one the registry-bridge ships (:mod:`eostream.shared.mlm`): what inference
    needs (bands in order, per-band scaling to the model's units, classes in output order) as
    STAC MLM fields, the test metrics and the MLflow run; here also the card as a JSON asset.
    """
    from datetime import UTC, datetime

    import pystac

    from eostream.shared import mlm, tags
    from eostream.shared.modelcard import ModelCard

    version = outcome.version
    card = ModelCard.from_json(version.tags[tags.MODEL_CARD])
    folder = out_dir / mlm.item_id(version.name, version.version)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, folder / "model.onnx")
    (folder / "model-card.json").write_text(card.to_json())
    data = onnx_path.read_bytes()
    facts = mlm.MlmFacts(
        name=version.name,
        version=version.version,
        card=card,
        artifact_href=str((folder / "model.onnx").resolve()),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        created=datetime.now(UTC),
        run_id=version.run_id,
        # a server's UI, not a sqlite file
        run_href=outcome.run_url if outcome.run_url.startswith(("http://", "https://")) else None,
        metrics=tuple(sorted(outcome.metrics.items())),
        base_model=base_model,
    )
    item = pystac.Item.from_dict(mlm.build_item(facts, str((folder / "item.json").resolve())))
    item.add_asset(
        "model-card",
        pystac.Asset(
            str((folder / "model-card.json").resolve()),
            title="eostream model card: bands, scaling, classes",
            media_type=pystac.MediaType.JSON,
            roles=["metadata"],
        ),
    )
    catalog = pystac.Catalog(
        id="eostream-models",
        description="EuroSAT land-cover models trained by eostream",
        title="eostream models",
    )
    catalog.add_item(item)
    catalog.normalize_hrefs(str(out_dir.resolve()))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return out_dir / "catalog.json"
