"""What the eostream code exports to Prometheus, and what a PromQL expression refers to.

tests/test_prometheus_rules.py and tests/test_grafana_dashboards.py load this file to check that
alert rules, recording rules and dashboards name metrics (and labels) the code really defines, so a
renamed metric or label fails a test instead of leaving an alert that can never fire or an empty
panel. The PromQL scan is deliberately small (metric names, selector labels, grouping labels);
the real parser (promtool, Prometheus) checks the syntax.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SCRAPE_LABELS = frozenset({"job", "instance"})
# Series Prometheus makes itself; ALERTS carries every label of its alert.
BUILTIN: dict[str, frozenset[str] | None] = {
    "up": SCRAPE_LABELS,
    "ALERTS": None,
    "ALERTS_FOR_STATE": None,
}
# Grafana's own variables, replaced by a typical value before PromQL sees the expression.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "Inf",
        "NaN",
        "atan2",
    }
)


def sample_names(name: str, kind: str) -> dict[str, frozenset[str]]:
    """The sample names a prometheus_client metric family exposes, with their extra labels."""
    none: frozenset[str] = frozenset()
    if kind == "counter":
        return {f"{name}_total": none, f"{name}_created": none}
    if kind == "histogram":
        return {
            f"{name}_bucket": frozenset({"le"}),
            f"{name}_count": none,
            f"{name}_sum": none,
            f"{name}_created": none,
        }
    if kind == "summary":
        return {
            name: frozenset({"quantile"}),
            f"{name}_count": none,
            f"{name}_sum": none,
            f"{name}_created": none,
        }
    if kind == "info":
        return {f"{name}_info": none}
    if kind == "stateset":
        return {name: frozenset({name})}
    return {name: none}


def declared(spec: Mapping[str, tuple[str, Iterable[str]]]) -> dict[str, frozenset[str]]:
    """Sample name -> label names for metrics described as {family: (type, labels)}.

    Families are named as in the code (counters with ``_total``)."""
    found: dict[str, frozenset[str]] = {}
    for family, (kind, labels) in spec.items():
        base = family.removesuffix("_total") if kind == "counter" else family
        for sample, extra in sample_names(base, kind).items():
            found[sample] = frozenset(labels) | extra | SCRAPE_LABELS
    return found


def code_metrics() -> dict[str, frozenset[str]]:
    """Sample name -> label names of every metric eostream's packages define in ``metrics.py``,
    plus prometheus_client's default process and runtime collectors."""
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    import eostream

    found: dict[str, frozenset[str]] = {}
    for package in pkgutil.iter_modules(eostream.__path__):
        name = f"eostream.{package.name}.metrics"
        if importlib.util.find_spec(name) is None:
            continue
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, MetricWrapperBase):
                labels = frozenset(value._labelnames) | SCRAPE_LABELS
                kind = value._type or "untyped"
                for sample, extra in sample_names(value._name, kind).items():
                    found[sample] = labels | extra
                if kind == "info":  # an Info's labels are the keys of the dict it was given
                    for point in value.collect()[0].samples:
                        found[point.name] |= frozenset(point.labels)
    for family in REGISTRY.collect():  # process_*, python_* (no eostream family is lost)
        for point in family.samples:
            found.setdefault(point.name, frozenset(point.labels) | SCRAPE_LABELS)
    return found


def service_names(root: Path) -> frozenset[str]:
    """Values of the shared metrics' ``service`` label: each service's ``SERVICE`` constant (the
    name it gives its bus, ``build_bus(settings, service=SERVICE)``)."""
    found: set[str] = set()
    for path in sorted(root.glob("services/*/src/eostream/*/*.py")):
        found.update(re.findall(r'^SERVICE = "([^"]+)"$', path.read_text(), re.MULTILINE))
    return frozenset(found)


def scrape_jobs(root: Path) -> frozenset[str]:
    """The eostream job names, as compose's Prometheus config names its jobs (the local stack's
    file_sd targets and the Kubernetes scrape job label theirs the same way; tests check both)."""
    path = root / "deploy" / "docker" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(path.read_text())
    return frozenset(
        job["job_name"]
        for job in config["scrape_configs"]
        if job["job_name"].startswith("eostream-")
    )


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


@dataclass(frozen=True)
class References:
    """The metrics an expression selects (with the labels its matchers use) and the labels its
    by/without/on/ignoring/group_* clauses name."""

    selectors: tuple[tuple[str, frozenset[str]], ...]
    grouping: frozenset[str] = field(default_factory=frozenset)

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.selectors)


def references(expr: str) -> References:
    text = _STRING.sub('""', grafana_to_promql(expr))
    grouping: set[str] = set()
    for match in _GROUPING.finditer(text):
        grouping.update(x.strip() for x in match.group(1).split(",") if x.strip())
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    selectors: list[tuple[str, frozenset[str]]] = []

    def selector(match: re.Match[str]) -> str:
        name = match.group(1) or ""
        labels = frozenset(_MATCHER_LABEL.findall(match.group(2)))
        if name:
            selectors.append((name, labels))
        return " "

    text = _SELECTOR.sub(selector, text)
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if not call and name not in _KEYWORDS:
            selectors.append((name, frozenset()))
    return References(tuple(selectors), frozenset(grouping))


_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def matchers(expr: str) -> list[tuple[str, str, str]]:
    """(label, operator, value) of every label matcher in ``expr``'s selectors."""
    found: list[tuple[str, str, str]] = []
    for match in _SELECTOR.finditer(grafana_to_promql(expr)):
        found.extend(_MATCHER.findall(match.group(2)))
    return found


def value_problems(expr: str, label: str, values: Iterable[str]) -> list[str]:
    """Matchers on ``label`` in ``expr`` that select none of ``values`` (an ``=`` on a value not
    among them, or a ``=~`` that matches none of them or names an alternative not among them)."""
    allowed = frozenset(values)
    found: list[str] = []
    for name, op, value in matchers(expr):
        if name != label:
            continue
        if op == "=" and value not in allowed:
            found.append(f'{label}="{value}" matches nothing exported')
        elif op == "=~":
            pattern = re.compile(f"(?:{value})")
            hits = {v for v in allowed if pattern.fullmatch(v)}
            alternatives = re.fullmatch(r"([^()|]*)\(([^()]*)\)([^()|]*)", value)
            expanded = (
                {f"{alternatives[1]}{alt}{alternatives[3]}" for alt in alternatives[2].split("|")}
                if alternatives
                else set()
            )
            if not hits or expanded - allowed:
                found.append(
                    f'{label}=~"{value}" names values not exported: '
                    f"{sorted(expanded - allowed) or value}"
                )
    return found


# label_replace(v, "dst", "replacement", "src", "regex"): its last four arguments
_LABEL_REPLACE = re.compile(
    r'label_replace\s*\((?:[^"]|"(?:[^"\\]|\\.)*")*?'
    r',\s*"([a-zA-Z_]\w*)"\s*,\s*"[^"]*"\s*,\s*"[a-zA-Z_]\w*"\s*,\s*"[^"]*"\s*\)'
)


def created_labels(expr: str) -> frozenset[str]:
    """Labels ``label_replace`` writes (its destination label), available to later grouping."""
    return frozenset(_LABEL_REPLACE.findall(grafana_to_promql(expr)))


def recorded_labels(expr: str, known: Mapping[str, frozenset[str] | None]) -> frozenset[str]:
    """The labels a recording rule's series carry: its grouping labels, or its input's."""
    refs = references(expr)
    if refs.grouping:
        return refs.grouping - {"le"}
    labels: set[str] = set()
    for name in refs.metrics:
        labels |= known.get(name) or frozenset()
    return frozenset(labels)


def problems(expr: str, known: Mapping[str, frozenset[str] | None]) -> list[str]:
    """What in ``expr`` the catalogue ``known`` (sample name -> labels; None: any) lacks."""
    refs = references(expr)
    found: list[str] = []
    available: set[str] = {"le", *created_labels(expr)}
    for name, labels in refs.selectors:
        if name not in known:
            found.append(f"unknown metric {name}")
            continue
        have = known[name]
        if have is None:
            available.add("*")
            continue
        available |= have
        if missing := labels - have - {"__name__"}:
            found.append(f"{name} has no label {', '.join(sorted(missing))}")
    if "*" not in available and (missing := refs.grouping - available):
        found.append(f"grouping by labels no input has: {', '.join(sorted(missing))}")
    return found
