"""Render the Grafana dashboards in deploy/grafana/dashboards/ (provisioned JSON).

    .venv/bin/python scripts/render_dashboards.py            # rewrite the JSON files
    .venv/bin/python scripts/render_dashboards.py --check    # exit 1 when one is stale

Five dashboards: overview, queues and pools, workflows, SideShift, tools and LLM. Every
query names metrics the processes export today (shiftflow_*) or RabbitMQ's Prometheus
plugin serves per queue (rabbitmq_detailed_*, deploy/prometheus/compose.yml), or the
queue exporter (`shiftflow queues exporter`: shiftflow_queue_*, shiftflow_sideshift_orders,
shiftflow_steps_parked); tests/unit/test_prometheus_rules.py checks it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "deploy" / "grafana" / "dashboards"

#: Work queues, without Dramatiq's delay (.DQ) and dead-letter (.XQ) queues.
WORK = 'queue!~".*\\\\.(DQ|XQ)"'
TOOL_QUEUES = 'queue=~"tools|tools\\\\..*"'


def _panel(title: str, targets: list[tuple[str, str]], unit: str = "short", kind: str = "timeseries",
           description: str = "", width: int = 12) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "_width": width,
    }


def _text(title: str, content: str, width: int = 24) -> dict[str, Any]:
    return {"type": "text", "title": title, "options": {"mode": "markdown", "content": content},
            "_width": width}


def _rate(metric: str, by: str, selector: str = "", window: str = "5m") -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[{window}]))"


def _ratio(metric: str, by: str, selector: str, part: str) -> str:
    """The share of ``metric`` (under ``selector``) that also matches ``part``."""
    both = f"{selector},{part}" if selector else part
    return f"{_rate(metric, by, both)} / {_rate(metric, by, selector)}"


def _quantile(q: float, metric: str, by: str = "", selector: str = "") -> str:
    keys = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({keys}) (rate({metric}_bucket{{{selector}}}[5m])))"


def _queue_panels(selector: str, what: str) -> list[dict[str, Any]]:
    """Backlog, throughput, errors, duration and work in progress of the queues in ``selector``."""
    return [
        _panel(f"{what}: messages waiting", [
            (f"sum by (queue) (rabbitmq_detailed_queue_messages_ready{{{selector}}})", "{{queue}}")]),
        _panel(f"{what}: messages/s by outcome", [
            (_rate("shiftflow_messages_total", "queue, outcome", selector), "{{queue}} {{outcome}}")], "ops"),
        _panel(f"{what}: error ratio", [
            (_ratio("shiftflow_messages_total", "queue, actor", selector, 'outcome="error"'), "{{queue}} {{actor}}")],
            "percentunit"),
        _panel(f"{what}: message duration p50 / p95", [
            (_quantile(0.5, "shiftflow_message_duration_seconds", "queue", selector), "p50 {{queue}}"),
            (_quantile(0.95, "shiftflow_message_duration_seconds", "queue", selector), "p95 {{queue}}")], "s"),
        _panel(f"{what}: messages in progress", [
            (f"sum by (queue) (shiftflow_messages_in_progress{{{selector}}})", "{{queue}}")]),
    ]


def overview() -> list[dict[str, Any]]:
    return [
        _panel("Targets up", [('sum by (job) (up{job=~"shiftflow-.*|rabbitmq"})', "{{job}}")], kind="stat",
               description="Processes Prometheus scrapes and answer, per job.", width=8),
        _panel("Webhooks/s by outcome", [(_rate("shiftflow_webhooks_total", "outcome"), "{{outcome}}")], "ops",
               width=8),
        _panel("Webhook latency p99 (with the broker confirm)", [
            (_quantile(0.99, "shiftflow_webhook_latency_seconds", "", 'outcome="accepted"'), "p99 accepted")], "s",
            width=8),
        _panel("Executions/s by outcome", [(_rate("shiftflow_executions_total", "outcome"), "{{outcome}}")], "ops"),
        _panel("Execution duration p95 (trigger to final state)", [
            (_quantile(0.95, "shiftflow_execution_seconds", "outcome"), "{{outcome}}")], "s"),
        _panel("Messages waiting by queue", [
            (f"sum by (queue) (rabbitmq_detailed_queue_messages_ready{{{WORK}}})", "{{queue}}")]),
        _panel("Messages/s by queue", [(_rate("shiftflow_messages_total", "queue"), "{{queue}}")], "ops"),
        _panel("Dead letters held (.XQ queues)", [
            ('sum by (queue) (rabbitmq_detailed_queue_messages{queue=~".+\\\\.XQ"})', "{{queue}}")]),
        _panel("Schedule slots/s by outcome", [
            (_rate("shiftflow_schedule_fires_total", "outcome"), "{{outcome}}")], "ops"),
    ]


def queues_and_pools() -> list[dict[str, Any]]:
    return [
        _panel("Messages waiting (ready)", [
            (f"sum by (queue) (rabbitmq_detailed_queue_messages_ready{{{WORK}}})", "{{queue}}")]),
        _panel("Messages delivered, not acknowledged", [
            (f"sum by (queue) (rabbitmq_detailed_queue_messages_unacked{{{WORK}}})", "{{queue}}")]),
        _panel("Consumers per queue", [
            (f"sum by (queue) (rabbitmq_detailed_queue_consumers{{{WORK}}})", "{{queue}}")]),
        _panel("Oldest waiting message's age", [
            ("max by (queue) (shiftflow_queue_oldest_message_age_seconds)", "{{queue}}")], "s",
            description="How long the oldest waiting message has waited (the queue exporter). The alert "
                        "ShiftFlowQueueOldestMessageTooOld fires above 5 minutes; `shiftflow pools plan` sizes "
                        "the pools to keep it under a target."),
        _panel("Arrivals/s and deliveries/s by queue", [
            ("sum by (queue) (rate(shiftflow_queue_published_total[5m]))", "in {{queue}}"),
            ("sum by (queue) (rate(shiftflow_queue_delivered_total[5m]))", "out {{queue}}")], "ops",
            description="Messages entering each queue and handed to consumers (the queue exporter): "
                        "the arrival rate `shiftflow pools plan` reads."),
        _panel("Estimated wait of a new message (Little's law)", [
            (f"sum by (queue) (rabbitmq_detailed_queue_messages_ready{{{WORK}}}) / on (queue) "
             "clamp_min(sum by (queue) (rate(shiftflow_messages_total[5m])), 0.001)", "{{queue}}")], "s",
            description="Messages waiting divided by messages processed per second: about how long a message "
                        "that joins now waits. The alert ShiftFlowQueueWaitTooLong fires above 5 minutes."),
        _panel("Throughput by queue and outcome", [
            (_rate("shiftflow_messages_total", "queue, outcome"), "{{queue}} {{outcome}}")], "ops"),
        _panel("Message duration p95 by queue", [
            (_quantile(0.95, "shiftflow_message_duration_seconds", "queue"), "{{queue}}")], "s"),
        _panel("In progress by pool", [
            ("sum by (pool) (shiftflow_messages_in_progress)", "{{pool}}")],
            description="Messages being worked on now, per pool (the scrape config labels each pool's target)."),
        _panel("Delayed messages (.DQ: retries and waits not yet due)", [
            ('sum by (queue) (rabbitmq_detailed_queue_messages{queue=~".+\\\\.DQ"})', "{{queue}}")]),
        _panel("Dead letters held (.XQ)", [
            ('sum by (queue) (rabbitmq_detailed_queue_messages{queue=~".+\\\\.XQ"})', "{{queue}}")]),
        _panel("Publisher: messages not yet confirmed", [
            ("sum by (job) (shiftflow_publisher_unconfirmed)", "{{job}}")]),
    ]


def workflows() -> list[dict[str, Any]]:
    return [
        _panel("Executions/s by workflow and outcome", [
            (_rate("shiftflow_workflow_executions_total", "workflow, outcome"), "{{workflow}} {{outcome}}")], "ops",
            description="workflow is workspace/workflow; past a process's bound (100 workflows) \"other\"."),
        _panel("Failed share of finished executions by workflow", [
            ('sum by (workflow) (rate(shiftflow_workflow_executions_total{outcome="failed"}[15m])) / '
             'sum by (workflow) (rate(shiftflow_workflow_executions_total{outcome=~"succeeded|failed|cancelled"}'
             '[15m]))', "{{workflow}}")], "percentunit"),
        _panel("Execution run time p95 by workflow", [
            (_quantile(0.95, "shiftflow_workflow_execution_seconds", "workflow"), "{{workflow}}")], "s"),
        _panel("Step outcomes/s by workflow", [
            (_rate("shiftflow_workflow_steps_total", "workflow, outcome"), "{{workflow}} {{outcome}}")], "ops"),
        _panel("Step run time p95 by type", [
            (_quantile(0.95, "shiftflow_step_duration_seconds", "step_type"), "{{step_type}}")], "s"),
        _panel("Step retries/s by type, and parked steps", [
            (_rate("shiftflow_step_retries_total", "step_type"), "retries {{step_type}}"),
            ("max by (reason) (shiftflow_steps_parked)", "parked ({{reason}})")], "short"),
        _panel("Dead letters/s by queue", [(_rate("shiftflow_dead_letters_total", "queue"), "{{queue}}")], "ops"),
        _panel("Executions/s by outcome", [(_rate("shiftflow_executions_total", "outcome"), "{{outcome}}")], "ops"),
        _panel("Failed share of finished executions", [
            ('sum (rate(shiftflow_executions_total{outcome="failed"}[15m])) / '
             'sum (rate(shiftflow_executions_total{outcome=~"succeeded|failed|cancelled"}[15m]))', "failed")],
            "percentunit"),
        _panel("Execution duration p50 / p95 / p99", [
            (_quantile(0.5, "shiftflow_execution_seconds"), "p50"),
            (_quantile(0.95, "shiftflow_execution_seconds"), "p95"),
            (_quantile(0.99, "shiftflow_execution_seconds"), "p99")], "s"),
        _panel("Steps/s by type and outcome", [
            (_rate("shiftflow_steps_total", "step_type, outcome"), "{{step_type}} {{outcome}}")], "ops"),
        _panel("Failed share of steps by type", [
            (_ratio("shiftflow_steps_total", "step_type", "", 'outcome="failed"'), "{{step_type}}")], "percentunit"),
        _panel("Duplicates, refusals and quarantines", [
            (_rate("shiftflow_executions_total", "outcome", 'outcome=~"duplicate|refused|quarantined"'),
             "{{outcome}}")], "ops"),
        _panel("Log documents/s by outcome (MongoDB)", [
            (_rate("shiftflow_log_documents_total", "outcome"), "{{outcome}}")], "ops"),
        _panel("Polls/s and polled items by outcome", [
            (_rate("shiftflow_polls_total", "outcome"), "polls {{outcome}}"),
            (_rate("shiftflow_poll_items_total", "outcome"), "items {{outcome}}")], "ops"),
    ]


def sideshift() -> list[dict[str, Any]]:
    return [
        _panel("Orders needing reconciliation", [
            ('max (shiftflow_sideshift_orders{state="NEEDS_RECONCILIATION"})', "to reconcile")], kind="stat",
            description="Orders that may exist at SideShift: `shiftflow sideshift reconcile`.", width=8),
        _panel("Open orders (polled)", [('max (shiftflow_sideshift_orders{state="OPEN"})', "open")], kind="stat",
               width=8),
        _panel("Orders finished per hour by state", [
            ("sum by (state) (increase(shiftflow_sideshift_orders_finished_total[1h]))", "{{state}}")], width=8),
        _panel("Settled volume and fees (USD per hour)", [
            ("sum (increase(shiftflow_sideshift_volume_usd_total[1h]))", "volume"),
            ("sum (increase(shiftflow_sideshift_fees_usd_total[1h]))", "fees")], "currencyUSD"),
        _panel("SideShift client-side rate limiter: waits and refusals/s", [
            (_rate("shiftflow_sideshift_rate_limit_waits_total", "kind, result"), "{{kind}} {{result}}")], "ops",
            description="SideShift allows 5 shifts and 20 quotes a minute per IP; refused calls retry later."),
        *_queue_panels('queue="sideshift"', "sideshift queue"),
    ]


def tools_and_llm() -> list[dict[str, Any]]:
    return [
        _panel("Tool calls/s by tool and outcome", [
            (_rate("shiftflow_tool_calls_total", "tool, outcome"), "{{tool}} {{outcome}}")], "ops"),
        _panel("Tool call duration p95 by tool", [
            (_quantile(0.95, "shiftflow_tool_call_duration_seconds", "tool"), "{{tool}}")], "s"),
        _panel("LLM tokens/s by model", [
            (_rate("shiftflow_llm_tokens_total", "model, direction"), "{{model}} {{direction}}")], "short"),
        _panel("LLM cost by model (USD per hour)", [
            ("sum by (model) (increase(shiftflow_llm_cost_usd_total[1h]))", "{{model}}")], "currencyUSD"),
        _panel("LLM calls/s by model and outcome", [
            (_rate("shiftflow_llm_calls_total", "model, outcome"), "{{model}} {{outcome}}")], "ops"),
        _panel("LLM budget checks/s (near_limit: above 80 % of the daily budget)", [
            (_rate("shiftflow_llm_budget_checks_total", "result"), "{{result}}")], "ops"),
        *_queue_panels(TOOL_QUEUES, "tool queues"),
        *_queue_panels('queue="llm"', "llm queue"),
        _panel("Rate-limit waits/s by integration", [
            (_rate("shiftflow_rate_limit_waits_total", "integration"), "{{integration}}")], "ops"),
        _panel("Cool-downs/s by integration (429 or 503 with Retry-After)", [
            (_rate("shiftflow_rate_limit_cooldowns_total", "integration"), "{{integration}}")], "ops"),
        _panel("Quota fallbacks/s (Redis failed)", [
            ("sum (rate(shiftflow_quota_fallbacks_total[5m]))", "fallbacks")], "ops"),
    ]


DASHBOARDS = {
    "shiftflow-overview": ("ShiftFlow: overview", overview),
    "shiftflow-queues": ("ShiftFlow: queues and pools", queues_and_pools),
    "shiftflow-workflows": ("ShiftFlow: workflows", workflows),
    "shiftflow-sideshift": ("ShiftFlow: SideShift", sideshift),
    "shiftflow-tools-llm": ("ShiftFlow: tools and LLM", tools_and_llm),
}


def _layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ids and grid positions, left to right in rows of 24 columns."""
    x = y = row_height = 0
    out = []
    for number, panel in enumerate(panels, start=1):
        width = panel.pop("_width")
        height = 4 if panel["type"] == "text" else 8
        if x + width > 24:
            x, y = 0, y + row_height
            row_height = 0
        out.append({"id": number, "gridPos": {"h": height, "w": width, "x": x, "y": y}, **panel})
        x += width
        row_height = max(row_height, height)
    return out


def dashboard(uid: str) -> dict[str, Any]:
    """The dashboard ``uid`` as Grafana's JSON model."""
    title, build = DASHBOARDS[uid]
    return {
        "uid": uid,
        "title": title,
        "tags": ["shiftflow"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {"text": "Prometheus", "value": "shiftflow-prometheus"},
        }]},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["shiftflow"], "title": "ShiftFlow", "asDropdown": True}],
        "panels": _layout(build()),
    }


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{uid}.json": json.dumps(dashboard(uid), indent=2) + "\n" for uid in DASHBOARDS}


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check compare) the dashboards."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a file is not what would be written")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUTPUT / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            OUTPUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}: run scripts/render_dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
