"""The Prometheus rules and config: valid for Prometheus' own tool, unit-tested, tied to the code.

`promtool check rules` and `promtool test rules` (deploy/prometheus/tests/*.test.yml: every alert
firing and not firing on synthetic series) do the PromQL work; the checks here make sure each alert
is covered both ways, carries its severity and runbook, and names only metrics and labels that the
services' metrics.py files define. The stack test asks the running Prometheus whether it loaded
and evaluates the rules.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.rules.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.test.yml"))
RUNBOOK = PROM / "rules" / "RUNBOOK.md"
SEVERITIES = {"critical", "warning", "info"}


def load_catalogue() -> ModuleType:
    path = PROM / "tests" / "metric_catalogue.py"
    spec = importlib.util.spec_from_file_location("eostream_metric_catalogue", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


catalogue = load_catalogue()


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed; it comes with Debian's prometheus package: "
            "apt-get install -y prometheus"
        )
    return found


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


def rules() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.extend(group["rules"])
    return found


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def known_metrics() -> dict[str, frozenset[str] | None]:
    known: dict[str, frozenset[str] | None] = {**catalogue.code_metrics(), **catalogue.BUILTIN}
    for rule in rules():  # recording rules feed later rules, in file order
        if "record" in rule:
            known[rule["record"]] = catalogue.recorded_labels(rule["expr"], known)
    return known


def test_there_are_rules_and_tests() -> None:
    assert RULE_FILES, "no deploy/prometheus/rules/*.rules.yml"
    assert TEST_FILES, "no deploy/prometheus/tests/*.test.yml"
    assert len(alerts()) >= 10


def test_rules_pass_promtool_check(promtool: str) -> None:
    done = run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    done = run(promtool, "test", "rules", *map(str, TEST_FILES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(TEST_FILES), done.stdout


def test_rule_unit_tests_catch_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: raise the consumer-lag threshold and they must notice."""
    (tmp_path / "rules").mkdir()
    text = (PROM / "rules" / "eostream.rules.yml").read_text()
    broken = text.replace("(eostream_consumer_lag_messages) > 50\n",
                          "(eostream_consumer_lag_messages) > 5000\n")
    assert broken != text
    (tmp_path / "rules" / "eostream.rules.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    test = tmp_path / "tests" / "pipeline.test.yml"
    shutil.copy(PROM / "tests" / "pipeline.test.yml", test)
    done = run(promtool, "test", "rules", str(test))
    assert done.returncode != 0
    assert "EostreamConsumerLagGrowing" in done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {alert["alert"] for alert in alerts()}
    assert not names - fired, f"alerts never tested firing: {sorted(names - fired)}"
    assert not names - quiet, f"alerts never tested staying quiet: {sorted(names - quiet)}"
    unknown = (fired | quiet) - names
    assert not unknown, f"tests of alerts that do not exist: {sorted(unknown)}"


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    anchors = {
        line.removeprefix("## ").strip().lower()
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    for alert in alerts():
        name = alert["alert"]
        assert alert.get("labels", {}).get("severity") in SEVERITIES, name
        notes = alert.get("annotations", {})
        assert notes.get("summary"), f"{name}: no summary"
        assert "Runbook:" in notes.get("description", ""), f"{name}: no runbook hint"
        url = notes.get("runbook_url", "")
        assert url == f"deploy/prometheus/rules/RUNBOOK.md#{name.lower()}", f"{name}: {url}"
        assert name.lower() in anchors, f"{name}: no section in {RUNBOOK.name}"


def test_rules_use_only_metrics_and_labels_the_code_defines() -> None:
    known = known_metrics()
    found = {
        rule.get("alert") or rule["record"]: catalogue.problems(rule["expr"], known)
        for rule in rules()
    }
    assert not {name: p for name, p in found.items() if p}


def test_unit_test_series_look_like_what_the_code_exports() -> None:
    """Alerts proven on invented series prove nothing: the series must carry real names/labels."""
    known = known_metrics()
    series = re.compile(r"^\s*([a-zA-Z_:][\w:]*)\s*\{(.*)\}\s*$")
    wrong: list[str] = []
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for item in case["input_series"]:
                match = series.match(item["series"])
                assert match, item["series"]
                name = match.group(1)
                labels = {part.split("=")[0].strip() for part in match.group(2).split(",")}
                if name not in known or name.count(":") == 2:
                    wrong.append(f"{path.name}: {name} is not exported by the code")
                elif (have := known[name]) is not None and labels - have:
                    wrong.append(f"{path.name}: {name} has no label {sorted(labels - have)}")
    assert not wrong


def test_prometheus_config_is_valid(promtool: str, tmp_path: Path) -> None:
    """deploy/prometheus/prometheus.yml rendered as deploy/local/prometheus.sh renders it
    (placeholders -> directories), beside the rules, passes `promtool check config`."""
    template = (PROM / "prometheus.yml").read_text()
    for placeholder in set(re.findall(r"__EOSTREAM_\w+?_DIR__", template)):
        directory = tmp_path / placeholder.strip("_").lower()
        directory.mkdir()
        template = template.replace(placeholder, str(directory))
    config = tmp_path / "prometheus.yml"
    config.write_text(template)
    (tmp_path / "rules").symlink_to(PROM / "rules")
    done = run(promtool, "check", "config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_catalogue_notices_unknown_metrics_and_labels() -> None:
    known = known_metrics()
    assert catalogue.problems('sum by (service) (rate(eostream_events_published_total[5m]))',
                              known) == []
    assert catalogue.problems("rate(eostream_no_such_metric_total[5m])", known) == [
        "unknown metric eostream_no_such_metric_total"
    ]
    assert catalogue.problems('eostream_dead_letters_total{reason="x"}', known) == [
        "eostream_dead_letters_total has no label reason"
    ]
    assert catalogue.problems("sum by (model) (eostream_inference_model_info)", known) == [
        "grouping by labels no input has: model"
    ]


# ---- the running Prometheus --------------------------------------------------------------------


def prometheus_url() -> str:
    url = os.environ.get("EOSTREAM_PROMETHEUS_URL")
    if not url:
        pytest.fail(
            "EOSTREAM_PROMETHEUS_URL is not set; start the stack (deploy/local/stack up) and "
            "export its addresses: eval \"$(deploy/local/stack env)\""
        )
    return url.rstrip("/")


@pytest.mark.stack
def test_prometheus_loaded_and_evaluates_the_eostream_rules() -> None:
    response = httpx.get(f"{prometheus_url()}/api/v1/rules", timeout=10)
    response.raise_for_status()
    loaded = {
        rule["name"]: rule
        for group in response.json()["data"]["groups"]
        for rule in group["rules"]
    }
    expected = {rule.get("alert") or rule["record"] for rule in rules()}
    assert not expected - set(loaded), (
        f"Prometheus did not load {sorted(expected - set(loaded))}: add rules/*.rules.yml to "
        "rule_files in its config and reload it"
    )
    broken = {name: loaded[name].get("lastError") for name in expected
              if loaded[name].get("health") == "err"}
    assert not broken, f"rules failing to evaluate: {broken}"
