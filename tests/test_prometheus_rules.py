"""The Prometheus rules and config: valid for Prometheus' own tool, unit-tested, tied to the code.

`promtool check rules` and `promtool test rules` (deploy/prometheus/tests/*.test.yml: every alert
firing and not firing on synthetic series) do the PromQL work; the checks here make sure each alert
is covered both ways, carries its severity and runbook, and names only metrics and labels that the
services' metrics.py files define. The stack test asks the running Prometheus whether it loaded
and evaluates the rules.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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
K8S = ROOT / "deploy" / "k8s"
K8S_SCRAPE = K8S / "prometheus" / "scrape-configs.yml"


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
    broken = text.replace(
        "(eostream_consumer_lag_messages) > 50\n", "(eostream_consumer_lag_messages) > 5000\n"
    )
    assert broken != text
    (tmp_path / "rules" / "eostream.rules.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    test = tmp_path / "tests" / "pipeline.test.yml"
    shutil.copy(PROM / "tests" / "pipeline.test.yml", test)
    done = run(promtool, "test", "rules", str(test))
    assert done.returncode != 0
    assert "EostreamConsumerLagGrowing" in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("threshold", "changed"),
    [
        ("eostream:map_drift_class_share:threshold\n        expr: vector(0.15)", "vector(0.5)"),
        ("eostream:map_drift_mean_confidence:threshold\n        expr: vector(0.1)", "vector(0.5)"),
        ("eostream:map_drift_min_scenes:threshold\n        expr: vector(5)", "vector(1)"),
    ],
    ids=["class-share", "mean-confidence", "min-scenes"],
)
def test_the_map_drift_thresholds_are_the_recording_rule_constants(
    promtool: str, tmp_path: Path, threshold: str, changed: str
) -> None:
    """EostreamMapDriftAfterPromotion reads its thresholds from one place each: change one and
    maps.test.yml notices (a higher share or confidence threshold stops it firing; a lower scene
    minimum lets it fire too early)."""
    (tmp_path / "rules").mkdir()
    text = (PROM / "rules" / "eostream.rules.yml").read_text()
    assert text.count(threshold) == 1
    name, _, old = threshold.rpartition(" ")
    (tmp_path / "rules" / "eostream.rules.yml").write_text(
        text.replace(threshold, f"{name} {changed}")
    )
    (tmp_path / "tests").mkdir()
    test = tmp_path / "tests" / "maps.test.yml"
    shutil.copy(PROM / "tests" / "maps.test.yml", test)
    done = run(promtool, "test", "rules", str(test))
    assert old != changed
    assert done.returncode != 0
    assert "EostreamMapDriftAfterPromotion" in done.stdout + done.stderr


# The two halves of EostreamConsumerStalled's backstop, as written in the rules file.
STALL_NO_PROGRESS = (
    "(time() - eostream_consumer_last_progress_timestamp_seconds) > 300\n"
    "            and on (service, group, instance)\n"
)
STALL_LAGGING = (
    "\n            and on (service, group, instance)\n"
    "            sum by (service, group, instance) (eostream_consumer_lag_messages) > 0"
)


@pytest.mark.parametrize(
    "dropped",
    [
        STALL_NO_PROGRESS,  # lag alone: the busy consumer (records waiting, progressing) pages
        STALL_LAGGING,  # no progress alone: the idle consumer (nothing waiting) pages
    ],
    ids=["lag-without-progress", "no-progress-without-lag"],
)
def test_consumer_tests_catch_a_stall_rule_that_pages_healthy_consumers(
    promtool: str, tmp_path: Path, dropped: str
) -> None:
    """consumers.test.yml's quiet cases matter: drop either half of the stall backstop and the
    busy or the idle consumer fires."""
    (tmp_path / "rules").mkdir()
    rules_file = tmp_path / "rules" / "eostream.rules.yml"
    text = (PROM / "rules" / "eostream.rules.yml").read_text()
    assert text.count(dropped) == 1, dropped
    rules_file.write_text(text.replace(dropped, ""))
    checked = run(promtool, "check", "rules", str(rules_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (tmp_path / "tests").mkdir()
    test = tmp_path / "tests" / "consumers.test.yml"
    shutil.copy(PROM / "tests" / "consumers.test.yml", test)
    done = run(promtool, "test", "rules", str(test))
    assert done.returncode != 0
    assert "EostreamConsumerStalled" in done.stdout + done.stderr


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


# A fresh process as the services start: their metrics modules imported, one consumer under
# supervision and one watched source built. What it exports before any event happens.
FRESH_PROCESS = """
import eostream.inference.metrics, eostream.ingest.metrics
import eostream.registry_bridge.metrics, eostream.trainer.metrics
from prometheus_client import generate_latest
from eostream.ingest.settings import StaticSource
from eostream.ingest.watcher import WatchedSource, Watcher
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.bus.supervisor import SupervisedConsumer

async def handler(event, delivery):
    return None

bus = InMemoryBus(service="svc")
SupervisedConsumer(lambda: bus.consumer(["topic"], "group", handler), service="svc", group="group")
bus.consumer(["topic"], "group", handler)
source = WatchedSource(source=None, config=StaticSource(name="source", href="item.json"))
Watcher([source], store=None, bus=bus, topic="scenes", dead_letter_topic="dead")
print(generate_latest().decode())
"""
_INCREASE = re.compile(r"\bincrease\(\s*([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?\s*\[")


def test_the_first_event_an_alert_counts_fires_it() -> None:
    """``increase()`` sees no rise in a series that first appears at 1, so an alert on "any
    failure in the window" missed the first one (a poison message, a failed swap): every
    series such an alert counts is exported at 0 before its first event, or (an open label,
    like an exception's type) the alert also takes a series new in the window by its value."""
    from prometheus_client.parser import text_string_to_metric_families

    shown = run(sys.executable, "-c", FRESH_PROCESS)
    assert shown.returncode == 0, shown.stderr
    samples = [
        (sample.name, sample.labels)
        for family in text_string_to_metric_families(shown.stdout)
        for sample in family.samples
    ]
    missing: list[str] = []
    for alert in alerts():
        expr = " ".join(alert["expr"].split())
        for name, selector in _INCREASE.findall(expr):
            wanted = [
                (label, op, value)
                for label, op, value in catalogue.matchers(f"{name}{selector}")
                if label not in catalogue.SCRAPE_LABELS
            ]
            if any(
                sample == name and all(_matches(labels.get(k, ""), op, v) for k, op, v in wanted)
                for sample, labels in samples
            ):
                continue
            metric = re.escape(name)
            new = rf"{metric}(\{{[^}}]*\}})?\s+unless\s+present_over_time\(\s*{metric}"
            if re.search(new, expr):
                continue
            missing.append(f"{alert['alert']}: {name}{selector}")
    assert not missing, "series that start at their first event, at 1: " + ", ".join(missing)


def _matches(value: str, op: str, wanted: str) -> bool:
    return {
        "=": value == wanted,
        "!=": value != wanted,
        "=~": re.fullmatch(wanted, value) is not None,
        "!~": re.fullmatch(wanted, value) is None,
    }[op]


def test_rules_and_their_tests_name_real_jobs_and_services() -> None:
    """`job` values as the scrape configs set them, `service` values as the services name their
    bus: a rule on up{job="eostream-registry-bridge"} would never fire."""
    jobs = catalogue.scrape_jobs(ROOT)
    services = catalogue.service_names(ROOT)
    assert jobs == {"eostream-ingest", "eostream-trainer", "eostream-bridge", "eostream-inference"}
    local = yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"]
    jobs |= {job["job_name"] for job in local if "static_configs" in job}  # prometheus, minio
    wrong = {
        rule.get("alert") or rule["record"]: found
        for rule in rules()
        if (
            found := catalogue.value_problems(rule["expr"], "job", jobs)
            + catalogue.value_problems(rule["expr"], "service", services)
        )
    }
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for item in case["input_series"]:
                if found := catalogue.value_problems(item["series"], "job", jobs) + (
                    catalogue.value_problems(item["series"], "service", services)
                ):
                    wrong[f"{path.name}: {item['series']}"] = found
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
    assert (
        catalogue.problems("sum by (service) (rate(eostream_events_published_total[5m]))", known)
        == []
    )
    assert catalogue.problems("rate(eostream_no_such_metric_total[5m])", known) == [
        "unknown metric eostream_no_such_metric_total"
    ]
    assert catalogue.problems('eostream_dead_letters_total{reason="x"}', known) == [
        "eostream_dead_letters_total has no label reason"
    ]
    assert catalogue.problems("sum by (model) (eostream_inference_model_info)", known) == [
        "grouping by labels no input has: model"
    ]


# ---- the Kubernetes scrape job ------------------------------------------------------------------
# Debian's Prometheus is built without Kubernetes service discovery, so these tests give the job's
# relabelling, unchanged, to a real Prometheus with file_sd targets that carry the labels
# Kubernetes discovery would give the pods of deploy/k8s (role pod: one target per container port).


def k8s_jobs() -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = yaml.safe_load(K8S_SCRAPE.read_text())
    return jobs


def _label(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def k8s_pods(namespace: str) -> list[dict[str, Any]]:
    """file_sd target groups: the pods of deploy/k8s base and deps as Kubernetes SD labels them."""
    groups: list[dict[str, Any]] = []
    for path in sorted([*(K8S / "base").glob("*.yaml"), *(K8S / "deps").glob("*.yaml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") not in ("Deployment", "StatefulSet"):
                continue
            meta = doc["spec"]["template"]["metadata"]
            labels = {
                "__meta_kubernetes_namespace": namespace,
                "__meta_kubernetes_pod_name": f"{doc['metadata']['name']}-0",
            }
            for key, value in meta.get("labels", {}).items():
                labels[f"__meta_kubernetes_pod_label_{_label(key)}"] = value
            for key, value in meta.get("annotations", {}).items():
                labels[f"__meta_kubernetes_pod_annotation_{_label(key)}"] = value
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for port in container.get("ports", []):
                    address = f"10.1.{len(groups)}.1:{port['containerPort']}"
                    groups.append({"targets": [address], "labels": dict(labels)})
    # a pod of some other application in the namespace that also asks to be scraped
    groups.append(
        {
            "targets": ["10.2.0.1:9100"],
            "labels": {
                "__meta_kubernetes_namespace": namespace,
                "__meta_kubernetes_pod_name": "node-exporter-0",
                "__meta_kubernetes_pod_label_app_kubernetes_io_name": "node-exporter",
                "__meta_kubernetes_pod_label_app_kubernetes_io_component": "service",
                "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
                "__meta_kubernetes_pod_annotation_prometheus_io_port": "9100",
            },
        }
    )
    return groups


def _file_sd_copy(job: dict[str, Any], targets: Path) -> dict[str, Any]:
    copy = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
    copy["file_sd_configs"] = [{"files": [str(targets)], "refresh_interval": "1s"}]
    return copy


def overlay_namespace() -> str:
    names = {
        str(yaml.safe_load((path / "kustomization.yaml").read_text())["namespace"])
        for path in sorted((K8S / "overlays").iterdir())
    }
    assert len(names) == 1, names
    return names.pop()


def test_k8s_scrape_job_discovers_the_overlays_namespace_pods() -> None:
    (job,) = k8s_jobs()
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod"
    assert sd["namespaces"]["names"] == [overlay_namespace()]


def test_k8s_scrape_job_is_a_valid_prometheus_config(promtool: str, tmp_path: Path) -> None:
    config = {"scrape_configs": [_file_sd_copy(j, tmp_path / "pods.json") for j in k8s_jobs()]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    done = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def prometheus_with_k8s_job(tmp_path: Path) -> Iterator[str]:
    """A real Prometheus (the Debian binary) running the Kubernetes job on the pods' labels."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: apt-get install -y prometheus")
    targets = tmp_path / "pods.json"
    targets.write_text(json.dumps(k8s_pods(overlay_namespace())))
    config = {
        "global": {"scrape_interval": "1h", "scrape_timeout": "1s"},
        "scrape_configs": [_file_sd_copy(j, targets) for j in k8s_jobs()],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    url = f"http://127.0.0.1:{_free_port()}"
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={url.removeprefix('http://')}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_k8s_scrape_job_labels_the_services_as_the_rules_expect(
    prometheus_with_k8s_job: str,
) -> None:
    deadline = time.monotonic() + 60
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            response = httpx.get(
                f"{prometheus_with_k8s_job}/api/v1/targets", params={"state": "any"}, timeout=5
            )
            body = response.json()["data"]
            if body["activeTargets"] or body["droppedTargets"]:
                break
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    active = {t["labels"]["job"]: t for t in body.get("activeTargets", [])}
    assert set(active) == catalogue.scrape_jobs(ROOT)
    ports = {
        "eostream-ingest": 8082,
        "eostream-trainer": 8083,
        "eostream-bridge": 8081,
        "eostream-inference": 8080,
    }
    for job, target in active.items():
        assert target["labels"]["instance"].endswith(f":{ports[job]}"), target["labels"]
        assert target["scrapeUrl"].endswith(f":{ports[job]}/metrics"), target["scrapeUrl"]
        assert target["labels"]["namespace"] == overlay_namespace()
        assert target["labels"]["pod"].endswith("-0")
    dropped = {
        t["discoveredLabels"].get("__meta_kubernetes_pod_name")
        for t in body.get("droppedTargets", [])
    }
    assert {"node-exporter-0", "mlflow-0", "kafka-0", "minio-0"} <= dropped


# ---- the running Prometheus --------------------------------------------------------------------


def prometheus_url() -> str:
    url = os.environ.get("EOSTREAM_PROMETHEUS_URL")
    if not url:
        pytest.fail(
            "EOSTREAM_PROMETHEUS_URL is not set; start the stack (deploy/local/stack up) and "
            'export its addresses: eval "$(deploy/local/stack env)"'
        )
    return url.rstrip("/")


@pytest.mark.stack
def test_prometheus_loaded_and_evaluates_the_eostream_rules() -> None:
    response = httpx.get(f"{prometheus_url()}/api/v1/rules", timeout=10)
    response.raise_for_status()
    loaded = {
        rule["name"]: rule for group in response.json()["data"]["groups"] for rule in group["rules"]
    }
    expected = {rule.get("alert") or rule["record"] for rule in rules()}
    assert not expected - set(loaded), (
        f"Prometheus did not load {sorted(expected - set(loaded))}: add rules/*.rules.yml to "
        "rule_files in its config and reload it"
    )
    broken = {
        name: loaded[name].get("lastError")
        for name in expected
        if loaded[name].get("health") == "err"
    }
    assert not broken, f"rules failing to evaluate: {broken}"
