"""deploy/observability: the Prometheus rules pass promtool, and the dashboard and rules read only what is served
(tests/test_observability.py checks each metric they read is in a running server's /metrics)."""

from __future__ import annotations

import json
import shutil
import subprocess

from harness.dashboards import (
    DASHBOARD,
    RULES,
    dashboard_expressions,
    queried_metrics,
    queried_recordings,
    recorded,
    rule_expressions,
)


def test_the_rules_pass_promtool_check_rules():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/install --dev installs it (Debian: apt-get install prometheus)"
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_recording_a_rule_or_the_dashboard_reads_is_one_the_rules_make():
    assert queried_recordings(rule_expressions() + dashboard_expressions()) <= recorded()


def test_the_dashboard_reads_the_per_stage_queue_and_batch_metrics():
    read = queried_metrics(dashboard_expressions())
    wanted = {
        "fastai_serving_stage_duration_seconds_sum",
        "fastai_serving_queue_wait_seconds_bucket",
        "fastai_serving_batch_requests_bucket",
        "fastai_serving_batch_instances_sum",
        "fastai_serving_upstream_requests_in_flight",
        "fastai_serving_worker_requests_running",
    }
    assert wanted <= read


def test_every_dashboard_panel_asks_the_chosen_prometheus():
    panels = [panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel["type"] != "row"]
    assert panels and all(panel["datasource"]["uid"] == "${datasource}" and panel["targets"] for panel in panels)
