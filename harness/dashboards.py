"""What deploy/observability's Grafana dashboard and Prometheus rules query: the metric names in their expressions."""

from __future__ import annotations

import json
import re

import yaml

from harness import PROJECT_ROOT

FOLDER = PROJECT_ROOT / "deploy" / "observability"
DASHBOARD = FOLDER / "grafana-dashboard.json"
RULES = FOLDER / "rules.yml"
TOKEN = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
SERVED_PREFIXES = ("fastai_serving_", "ts_")  # ours, and TorchServe's re-exported ones


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def rule_expressions() -> list[str]:
    return [str(rule["expr"]) for rule in rules()]


def recorded() -> set[str]:
    """The series the recording rules make (level:metric:operations, never served by /metrics itself)."""
    return {rule["record"] for rule in rules() if "record" in rule}


def queried_metrics(expressions: list[str]) -> set[str]:
    """The served metrics (sample names: a histogram's _bucket, _sum, _count) the expressions read."""
    return {token for e in expressions for token in TOKEN.findall(e) if token.startswith(SERVED_PREFIXES)}


def queried_recordings(expressions: list[str]) -> set[str]:
    """The recording rules' series the expressions read."""
    return {token for e in expressions for token in TOKEN.findall(e) if ":" in token and "fastai_serving" in token}
