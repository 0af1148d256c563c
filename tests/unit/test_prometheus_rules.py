"""Alert rules, scrape configs and dashboards in deploy/: promtool, and the metric names they use.

promtool (Debian's `prometheus` package, installed by scripts/ensure-tools.sh, which
`make test` runs) checks the rules and the scrape configs and runs the rules' unit tests
(deploy/prometheus/tests/). Every metric an alert or a dashboard panel queries must be
one the code defines (a Counter/Gauge/Histogram/Summary under shiftflow/) or one that
RabbitMQ's Prometheus plugin serves per queue with the families our scrape configs ask for.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
CONFIGS = [ROOT / "deploy" / "prometheus.yml", PROMETHEUS / "compose.yml"]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))

#: Series RabbitMQ's rabbitmq_prometheus plugin serves on /metrics/detailed for the
#: families queue_coarse_metrics and queue_consumer_count (deploy/prometheus/*.yml), and
#: Prometheus's own `up`.
OUTSIDE_METRICS = frozenset({
    "rabbitmq_detailed_queue_messages_ready",
    "rabbitmq_detailed_queue_messages_unacked",
    "rabbitmq_detailed_queue_messages",
    "rabbitmq_detailed_queue_consumers",
    "up",
})

_DEFINITION = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary)(?:MetricFamily)?\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")
_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("", "_sum", "_count", "_created"),
}
_METRIC_TOKEN = re.compile(r"\b(?:shiftflow_|rabbitmq_)[a-zA-Z0-9_:]*|\bup\b")


def defined_series() -> set[str]:
    """Every series name the code can export, from the metric definitions under shiftflow/."""
    names = set()
    for path in (ROOT / "shiftflow").rglob("*.py"):
        for kind, name in _DEFINITION.findall(path.read_text(encoding="utf-8")):
            base = name.removesuffix("_total") if kind == "Counter" else name
            names |= {base + suffix for suffix in _SUFFIXES[kind]}
    return names


def unknown_metrics(expr: str, known: set[str]) -> list[str]:
    """The metric names in a PromQL expression that are not in ``known``; ["<none>"] when it names none."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values are not metric names
    used = _METRIC_TOKEN.findall(bare)
    if not used:
        return ["<none>"]
    return sorted({name for name in used if name not in known})


def _promtool() -> str:
    path = os.environ.get("SHIFTFLOW_PROMTOOL_PATH") or shutil.which("promtool") or "/usr/bin/promtool"
    if not os.access(path, os.X_OK):
        pytest.fail("promtool is missing: run `make tools` (scripts/ensure-tools.sh installs Debian's prometheus)")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _dashboard_targets() -> list[tuple[str, str, str]]:
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((path.name, panel["title"], target["expr"]))
    return found


# ------------------------------------------------------------------ promtool


def test_promtool_checks_the_rules():
    result = _run("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass():
    assert RULE_TESTS
    result = _run("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_a_wrong_expectation_fails_promtool(tmp_path):
    # The positive control: the unit tests would catch an alert that stopped firing.
    text = (PROMETHEUS / "tests" / "queues.yml").read_text().replace("../alerts.yml", str(ALERTS))
    text = text.replace("exp_labels: {severity: critical, queue: llm}", "exp_labels: {severity: critical, queue: steps}")
    (tmp_path / "wrong.yml").write_text(text)
    result = _run("test", "rules", str(tmp_path / "wrong.yml"))
    assert result.returncode != 0
    assert "ShiftFlowQueueNotConsumed" in result.stdout + result.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_promtool_checks_the_scrape_config(config):
    result = _run("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_where_it_fires():
    firing = set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    firing.add(case["alertname"])
    assert {rule["alert"] for rule in _alert_rules()} <= firing


def test_every_scrape_config_scrapes_every_pool():
    from shiftflow.consumers.pools import load_pools

    pools = load_pools(str(ROOT / "deploy" / "pools.yaml"))
    for config in CONFIGS:
        jobs = {job["job_name"]: job for job in yaml.safe_load(config.read_text())["scrape_configs"]}
        ports = {int(t.rsplit(":", 1)[1]) for g in jobs["shiftflow-workers"]["static_configs"] for t in g["targets"]}
        assert {p.metrics_port for p in pools.values()} <= ports, config.name
        assert {"shiftflow-ingress", "shiftflow-scheduler", "rabbitmq"} <= set(jobs), config.name


# ------------------------------------------------------------------ metric names


def test_the_code_defines_the_metrics_we_expect():
    known = defined_series()
    # A few anchors, so that a broken scan (no definitions found) cannot pass the tests below.
    assert {"shiftflow_messages_total", "shiftflow_message_duration_seconds_bucket", "shiftflow_messages_in_progress",
            "shiftflow_webhooks_total", "shiftflow_schedule_fire_lag_seconds_bucket",
            # collector families (the queue exporter) and the business metrics
            "shiftflow_queue_oldest_message_age_seconds", "shiftflow_queue_published_total",
            "shiftflow_workflow_executions_total", "shiftflow_sideshift_orders"} <= known


def test_the_metric_name_check_can_fail():
    known = defined_series() | OUTSIDE_METRICS
    assert unknown_metrics('sum(rate(shiftflow_mesages_total{queue="steps"}[5m]))', known) == ["shiftflow_mesages_total"]
    assert unknown_metrics("vector(1)", known) == ["<none>"]
    assert unknown_metrics('rate(shiftflow_messages_total{actor="shiftflow_nothing"}[5m])', known) == []


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_queries_metrics_that_exist(rule):
    assert unknown_metrics(rule["expr"], defined_series() | OUTSIDE_METRICS) == []


def test_every_dashboard_panel_queries_metrics_that_exist():
    known = defined_series() | OUTSIDE_METRICS
    targets = _dashboard_targets()
    assert len(DASHBOARDS) == 5 and len(targets) > 40
    wrong = [(name, title, expr, unknown_metrics(expr, known)) for name, title, expr in targets
             if unknown_metrics(expr, known)]
    assert wrong == []


def test_dashboards_are_current_and_provisionable():
    spec = importlib.util.spec_from_file_location("render_dashboards", ROOT / "scripts" / "render_dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = module.render()
    assert sorted(rendered) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        assert path.read_text() == rendered[path.name], "run scripts/render_dashboards.py"
        board = json.loads(path.read_text())
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)) and board["uid"] == path.stem
    datasource = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "datasources" /
                                 "prometheus.yml").read_text())["datasources"][0]
    board = json.loads(DASHBOARDS[0].read_text())
    assert board["templating"]["list"][0]["current"]["value"] == datasource["uid"]
