"""Grafana provisioning and dashboards: well-formed, valid PromQL, wired to real metric names.

Every expression is parsed by Prometheus' own parser twice: offline (each expression becomes a
recording rule for `promtool check rules`) and, with the stack, by the running Prometheus'
/api/v1/query. Every metric and label an expression names must be defined by a service's (or the
shared) metrics.py, and every `job` and `service` label value must be one the scrape configs and
the services produce. Whether each panel shows data once all services run is an end-to-end test;
`ERROR_ONLY_PANELS` tells it which panels may stay empty when no error was driven.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
EXPECTED = {
    "eostream-overview",
    "eostream-ingest",
    "eostream-trainer",
    "eostream-registry-bridge",
    "eostream-inference",
    "eostream-model-quality",
}
# Panels whose series exist only after an error happened: (dashboard uid, panel title) -> why.
# A live test that drives traffic through every service may find these empty only when it drove
# no such error; every other panel must show data. Panels whose queries end in `or vector(0)`
# (the "(time range)" stats) always have data and do not belong here.
ERROR_ONLY_PANELS: dict[tuple[str, str], str] = {
    ("eostream-overview", "Dead letters by service and topic"): (
        "eostream_dead_letters_total gets a series at a service's first dead letter (a consumer's "
        "invalid record, or an ingest STAC item rejected by the watcher)"
    ),
    ("eostream-registry-bridge", "Handling errors by type"): (
        "eostream_bridge_handling_errors_total gets a series at the first error while gating, "
        "shipping or syncing a version"
    ),
}


def load_catalogue() -> ModuleType:
    path = ROOT / "deploy" / "prometheus" / "tests" / "metric_catalogue.py"
    spec = importlib.util.spec_from_file_location("eostream_metric_catalogue", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


catalogue = load_catalogue()


def load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def targets() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(dashboard uid, panel, target) for every query of every dashboard."""
    for path in DASHBOARDS:
        board = load(path)
        for panel in panels(board):
            for target in panel.get("targets", []):
                yield board["uid"], panel, target


def where(uid: str, panel: dict[str, Any], target: dict[str, Any]) -> str:
    return f"{uid} / {panel['title']} / {target.get('refId')}"


def known_metrics() -> dict[str, frozenset[str] | None]:
    known: dict[str, frozenset[str] | None] = {**catalogue.code_metrics(), **catalogue.BUILTIN}
    for path in sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    known[rule["record"]] = catalogue.recorded_labels(rule["expr"], known)
    return known


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed; it comes with Debian's prometheus package: "
            "apt-get install -y prometheus"
        )
    return found


def promql_errors(promtool: str, exprs: dict[str, str], tmp_path: Path) -> str:
    """Parse each expression with Prometheus' parser: as recording rules for promtool."""
    names = {f"check:expr_{i}:parse": label for i, label in enumerate(exprs)}
    group = {
        "name": "grafana-expressions",
        "rules": [
            {"record": name, "expr": catalogue.grafana_to_promql(exprs[label])}
            for name, label in names.items()
        ],
    }
    rules = tmp_path / "expressions.rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))
    done = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=120
    )
    if done.returncode == 0:
        return ""
    report = done.stdout + done.stderr
    for name, label in names.items():
        report = report.replace(name, label)
    # promtool names failing rules by position: "rule 3" -> the panel
    for i, label in reversed(list(enumerate(exprs))):
        report = report.replace(f"rule {i + 1},", f"rule {i + 1} ({label}),")
    return report


# ---- shape -----------------------------------------------------------------------------------


def test_the_expected_dashboards_exist() -> None:
    assert {load(path)["uid"] for path in DASHBOARDS} == EXPECTED
    assert len({load(path)["title"] for path in DASHBOARDS}) == len(DASHBOARDS)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_well_formed(path: Path) -> None:
    board = load(path)
    assert board["uid"] == path.stem
    assert 36 <= board["schemaVersion"] <= 41
    assert "eostream" in board["tags"]
    all_panels = list(panels(board))
    ids = [panel["id"] for panel in all_panels]
    titles = [panel["title"] for panel in all_panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    assert len(titles) == len(set(titles)), f"duplicate panel titles in {path.name}"
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


# ---- PromQL ----------------------------------------------------------------------------------


def test_every_expression_parses_as_promql(promtool: str, tmp_path: Path) -> None:
    exprs = {where(uid, panel, target): target["expr"] for uid, panel, target in targets()}
    assert len(exprs) > 50
    assert promql_errors(promtool, exprs, tmp_path) == ""


def test_the_promql_check_rejects_a_broken_expression(promtool: str, tmp_path: Path) -> None:
    report = promql_errors(
        promtool,
        {"good": "sum(rate(up[$__rate_interval]))", "broken": "sum by (job (rate(up[5m]))"},
        tmp_path,
    )
    assert "rule 2 (broken)" in report
    assert "rule 1 (good)" not in report


def test_dashboards_use_only_metrics_and_labels_the_code_defines() -> None:
    known = known_metrics()
    found = {
        where(uid, panel, target): catalogue.problems(target["expr"], known)
        for uid, panel, target in targets()
    }
    assert not {name: p for name, p in found.items() if p}


def test_legends_name_labels_the_query_keeps() -> None:
    known = known_metrics()
    wrong: list[str] = []
    for uid, panel, target in targets():
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        refs = catalogue.references(target["expr"])
        kept: set[str] = set(refs.grouping)
        if not kept:
            for name in refs.metrics:
                kept |= known.get(name) or frozenset()
        if legend - kept:
            wrong.append(f"{where(uid, panel, target)}: {sorted(legend - kept)}")
    assert not wrong


def test_the_metric_check_sees_every_metric_of_every_expression() -> None:
    """The check above can fail: rename any metric any expression selects and it must notice."""
    known = known_metrics()
    blind: list[str] = []
    for uid, panel, target in targets():
        names = catalogue.references(target["expr"]).metrics
        assert names, f"{where(uid, panel, target)}: no metric found"
        for name in names:
            renamed = re.sub(
                rf"(?<![\w:]){re.escape(name)}(?![\w:])", f"{name}_renamed", target["expr"]
            )
            if f"unknown metric {name}_renamed" not in catalogue.problems(renamed, known):
                blind.append(f"{where(uid, panel, target)}: {name}")
    assert not blind


def test_the_model_quality_dashboard_shows_the_gate_scores() -> None:
    board = load(GRAFANA / "dashboards" / "eostream-model-quality.json")
    used = {
        name
        for panel in panels(board)
        for target in panel.get("targets", [])
        for name in catalogue.references(target["expr"]).metrics
    }
    assert {
        "eostream_bridge_holdout_accuracy_ratio",
        "eostream_bridge_holdout_recall_ratio",
        "eostream_bridge_champion_version",
    } <= used


def test_the_model_quality_dashboard_shows_the_maps_by_version() -> None:
    """Class shares, mean confidence and uncertain share, each split by model version."""
    board = load(GRAFANA / "dashboards" / "eostream-model-quality.json")
    shown = {
        name: catalogue.references(target["expr"]).grouping
        for panel in panels(board)
        for target in panel.get("targets", [])
        for name in catalogue.references(target["expr"]).metrics
        if name.startswith(("eostream_inference_class_", "eostream_inference_scene_"))
    }
    assert {
        "eostream_inference_class_pixels_total",
        "eostream_inference_scene_mean_confidence_sum",
        "eostream_inference_scene_uncertain_share_sum",
    } <= set(shown)
    assert all({"model", "version"} <= grouping for grouping in shown.values()), shown


def test_job_and_service_labels_name_what_is_scraped_and_exported() -> None:
    """`job` values as the scrape configs set them (eostream-bridge, not eostream-registry-bridge);
    `service` values as the services name their bus (registry-bridge)."""
    jobs = catalogue.scrape_jobs(ROOT)
    services = catalogue.service_names(ROOT)
    assert services >= {"ingest", "trainer", "registry-bridge", "inference"}
    wrong = {
        where(uid, panel, target): found
        for uid, panel, target in targets()
        if (
            found := catalogue.value_problems(target["expr"], "job", jobs)
            + catalogue.value_problems(target["expr"], "service", services)
        )
    }
    assert not wrong
    assert catalogue.value_problems('up{job="eostream-registry-bridge"}', "job", jobs)
    assert catalogue.value_problems('x{service="bridge"}', "service", services)


def test_error_only_panels_exist_and_can_be_empty() -> None:
    found = {(uid, panel["title"]): panel for uid, panel, _ in targets()}
    for key, reason in ERROR_ONLY_PANELS.items():
        assert key in found, f"{key}: no such panel"
        assert reason.strip()
        for target in found[key]["targets"]:
            assert "vector(" not in target["expr"], f"{key} always has data: not error-only"


def _inference_requests(route: str, method: str, status: str, per_minute: int) -> dict[str, str]:
    labels = f'route="{route}", method="{method}", status="{status}", job="eostream-inference"'
    return {
        "series": f"eostream_inference_request_duration_seconds_count{{{labels}}}",
        "values": f"0+{per_minute}x30",
    }


@pytest.mark.parametrize(
    ("api", "share"),
    [
        ([], 0.0),
        (
            [
                _inference_requests("/results", "GET", "200", 480),
                _inference_requests("/classify/item", "POST", "500", 120),
            ],
            0.2,
        ),
    ],
    ids=["no-model-yet", "api-failing"],
)
def test_server_errors_panel_leaves_out_the_ops_routes(
    promtool: str, tmp_path: Path, api: list[dict[str, str]], share: float
) -> None:
    """/readyz answers 503 until a model is live and the health checks poll it: a fresh
    deployment shows no server errors; 5xx on the API's own routes still show, as their share."""
    board = load(GRAFANA / "dashboards" / "eostream-inference.json")
    (panel,) = (p for p in panels(board) if p["title"] == "Server errors (5xx share)")
    (target,) = panel["targets"]
    ops = [
        _inference_requests("/readyz", "GET", "503", 6),
        _inference_requests("/livez", "GET", "200", 6),
        _inference_requests("/metrics", "GET", "200", 12),
    ]
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": ops + api,
                "promql_expr_test": [
                    {
                        "expr": catalogue.grafana_to_promql(target["expr"]),
                        "eval_time": "20m",
                        "exp_samples": [{"labels": "{}", "value": share}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "panel.test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    done = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ---- provisioning ----------------------------------------------------------------------------


def test_datasource_provisioning() -> None:
    path = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
    config = yaml.safe_load(path.read_text())
    (source,) = config["datasources"]
    assert source["type"] == DATASOURCE["type"]
    assert source["uid"] == DATASOURCE["uid"]
    assert source["url"] == "http://prometheus:9090"


def test_dashboard_provider_reads_where_compose_mounts_the_dashboards() -> None:
    config = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "eostream.yml").read_text())
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(
        volume.split(":")[:2]
        for volume in compose["services"]["grafana"]["volumes"]
        if volume.startswith("./")
    )
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


# ---- the running Prometheus --------------------------------------------------------------------


@pytest.mark.stack
def test_the_running_prometheus_accepts_every_expression() -> None:
    url = os.environ.get("EOSTREAM_PROMETHEUS_URL")
    if not url:
        pytest.fail(
            "EOSTREAM_PROMETHEUS_URL is not set; start the stack (deploy/local/stack up) and "
            'export its addresses: eval "$(deploy/local/stack env)"'
        )
    rejected: dict[str, str] = {}
    with httpx.Client(base_url=url.rstrip("/"), timeout=30) as client:
        for uid, panel, target in targets():
            response = client.post(
                "/api/v1/query", data={"query": catalogue.grafana_to_promql(target["expr"])}
            )
            body = response.json()
            if body.get("status") != "success":
                rejected[where(uid, panel, target)] = body.get("error", response.text)
    assert not rejected
