"""Names of MLflow tags and aliases, written by one service and read by another (ADR 0010).

The trainer writes the contract tags on each registered model version (plain names, plus the
model card and the request id); the registry-bridge reads them and writes its own, which start
with ``eostream.``: the bridge's state lives on the registry, not in memory. A version with an
``eostream.gate`` tag has been handled.
"""

from __future__ import annotations

# --- written by the trainer on model versions (the contract) ---
BAND_SET = "band_set"
INPUT_SCALING = "input_scaling"
TRAINING_DATA_DIGEST = "training_data_digest"
MODEL_CARD = "eostream.model_card"
ONNX_SHA256 = "onnx_sha256"
ONNX_ARTIFACT = "onnx_artifact"  # the value: the ONNX file's path among the run's artifacts
ARCHITECTURE = "architecture"
TEST_ACCURACY = "test_accuracy"
GATE_HOLDOUT_EXCLUDED = "gate_holdout_excluded"  # "false": the gate's patches were trained on
REQUIRED_CONTRACT_TAGS = (BAND_SET, MODEL_CARD, ONNX_SHA256)
ONNX_ARTIFACT_PATH = "onnx/model.onnx"
# a chip dataset's model: the dataset (chips.parquet, dataset.json, arrays/) the run trained on,
# so the bridge can score it on the test chips without the trainer's disk
CHIPS_ARTIFACT_PATH = "chips"
# --- written by the trainer on runs and model versions ---
REQUEST_ID = "eostream.request_id"  # the TrainingRequested event the run answers

# --- written by the bridge, on model versions ---
GATE = "eostream.gate"  # passed | failed | refused
GATE_REASONS = "eostream.gate.reasons"  # JSON list of strings
GATE_EVAL_RUN = "eostream.gate.eval_run_id"
GATE_ACCURACY = "eostream.gate.accuracy"
# the map check against the reference set (BRIDGE_GATE__REFERENCE), see docs/maps-accuracy.md
GATE_MAP = "eostream.gate.map"  # passed | failed | skipped (no reference set configured)
GATE_MAP_METRIC = "eostream.gate.map.metric"  # the compared figure: mean_iou | overall_accuracy
GATE_MAP_FIGURE = "eostream.gate.map.figure"  # this version's compared figure
GATE_MAP_CHAMPION_FIGURE = "eostream.gate.map.champion_figure"  # the champion's, when compared
GATE_MAP_MEAN_IOU = "eostream.gate.map.mean_iou"  # mean IoU of the reference classes
GATE_MAP_OVERALL_ACCURACY = "eostream.gate.map.overall_accuracy"
# the simple baseline on the same pixels: NDWI > 0's water IoU (a reference set with water)
GATE_MAP_NDWI_IOU = "eostream.gate.map.ndwi_iou_water"
# what the figures above were measured on and with (JSON): the reference collection and its
# scored items, the map settings (stride, uncertain_below) and the file scored (fp32); inference
# may serve other settings and the int8 file (eostream.int8.map_delta)
GATE_MAP_CONDITIONS = "eostream.gate.map.conditions"
# digest of the reference set and the evaluation settings the figures above hold for: a champion's
# figures are reused while it matches, not recomputed for every candidate
GATE_MAP_KEY = "eostream.gate.map.key"
# the int8 variant (registry_bridge.quantize): passed (shipped beside the fp32 file) | failed
# (not shipped) | skipped (disabled, or a task other than patch)
INT8 = "eostream.int8"
INT8_REASONS = "eostream.int8.reasons"  # JSON list of strings
INT8_ACCURACY_DELTA = "eostream.int8.accuracy_delta"  # int8 - fp32 top-1 on the hold-out
INT8_AGREEMENT = "eostream.int8.agreement"  # top-1 agreement of int8 and fp32 on the hold-out
INT8_MAP_DELTA = "eostream.int8.map_delta"  # int8 - fp32 map figure on the reference set
INT8_SHA256 = "eostream.int8.sha256"
SHIPPED = "eostream.shipped"  # "true" once the MLM item (commit marker) is written
ARTIFACT_URI = "eostream.artifact_uri"
SHA256 = "eostream.sha256"
MLM_ITEM_HREF = "eostream.mlm_item_href"
STAGE = "eostream.stage"  # Production | Staging | Archived, for users of deprecated stages
PROMOTED_BY = "eostream.promoted_by"
PROMOTED_REASON = "eostream.promoted_reason"
PROMOTED_AT = "eostream.promoted_at"
PREVIOUS_CHAMPION = "eostream.previous_champion"
ROLLED_BACK_BY = "eostream.rolled_back_by"
ROLLED_BACK_REASON = "eostream.rolled_back_reason"
# a force promotion of a version that failed the gate (the audit log is the proof, not these)
OVERRIDE_BY = "eostream.override_by"
OVERRIDE_REASON = "eostream.override_reason"
OVERRIDE_AT = "eostream.override_at"
# the alias guard moved the champion alias away from this version
ALIAS_UNDONE_REASON = "eostream.alias_undone_reason"
ALIAS_UNDONE_AT = "eostream.alias_undone_at"

# --- written by the bridge, on the registered model ---
LIVE_VERSION = "eostream.live_version"  # the version last announced with ModelPromoted

# --- aliases and stage names ---
CHAMPION = "champion"
CHALLENGER = "challenger"
STAGE_PRODUCTION = "Production"
STAGE_STAGING = "Staging"
STAGE_ARCHIVED = "Archived"

GATE_PASSED = "passed"
GATE_FAILED = "failed"
GATE_REFUSED = "refused"
GATE_MAP_SKIPPED = "skipped"
