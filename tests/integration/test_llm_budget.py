"""A workspace's daily LLM budget, read and set where its quotas are: ``GET``/``PUT
/llm-budget`` and ``shiftflow quotas``, on real PostgreSQL, RabbitMQ and the fake provider
over HTTP.

* The API shows the budget in force, today's spend (the ``llm_call`` costs) and what
  remains; owners and admins may lower it, never raise it (the operator's); members may
  not change it; bad amounts are 422 naming ``llm_daily_budget_usd``, with nothing written.
* A budget lowered through the API makes the next ``call_llm`` beyond it refuse, naming it.
* The CLI sets it (or puts the default back), shows it with the spend, and refuses bad
  amounts naming ``--llm-daily-budget-usd``; every change is audited.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from shiftflow.fakes.llm import FakeLlm, FakeLlmServer
from shiftflow.kernel.llm import BudgetExceeded, LlmRequest, Message
from shiftflow.models.engine import llm_calls
from shiftflow.models.engine.connection_secrets import store_connection
from shiftflow.models.manage import catalog
from shiftflow.models.tables.audit_log import AuditLog
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.llm_calls import LlmCall
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve, worker

pytestmark = pytest.mark.integration

KEY = "sk-test-llm-budget-0123456789"
FIELD = "llm_daily_budget_usd"


@pytest.fixture
def stack(real_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    model = FakeLlm(api_key=KEY)
    with FakeLlmServer(model) as server, worker(real_env) as settings:
        tenant = seed_tenant("bud")
        store_connection(tenant.workspace.id, "openai", "openai-main",
                         {"api_key": KEY, "base_url": server.openai_base_url})
        with serve(create_app(settings)) as base:
            with httpx.Client(base_url=base + "/api/v1", timeout=15) as client:
                yield {"client": client, "tenant": tenant, "model": model, "settings": settings}


def _call(workspace: Workspace, text: str) -> llm_calls.LlmResult:
    workflow = catalog.apply_definition(workspace, {
        "name": f"w-{len(text)}", "trigger": {"type": "manual"},
        "steps": [{"id": "s", "type": "transform", "with": {"output": 1}}]}).workflow
    execution = Execution.create(workflow=workflow.id, workflow_version=1, workspace=workspace.id,
                                 dedup_key=text, status="RUNNING", started_at=utcnow())
    request = LlmRequest(model="gpt-4o-mini", messages=(Message.user(text),), max_tokens=50)
    return llm_calls.call_llm(workspace.id, "openai-main", request, execution_id=execution.id)


def _own(workspace: Workspace) -> Decimal | None:
    return Workspace.get_by_id(workspace.id).llm_daily_budget_usd


def test_the_api_shows_the_spend_lowers_the_budget_and_the_next_call_is_refused(stack):
    c, tenant, model = stack["client"], stack["tenant"], stack["model"]
    ws = tenant.workspace

    shown = c.get("/llm-budget", headers=tenant.auth("VIEWER"))
    assert shown.status_code == 200, shown.text
    assert shown.json() | {"day_started_at": None} == {
        "workspace": "bud", "budget_usd": None, "default_usd": None, "effective_usd": None, "source": "none",
        "spent_today_usd": "0.000000", "remaining_usd": None, "day_started_at": None}

    paid = _call(ws, "what is a queue")
    assert paid.cost is not None and paid.cost > 0
    spent = format(paid.cost, "f")
    assert c.get("/llm-budget", headers=tenant.auth("VIEWER")).json()["spent_today_usd"] == spent

    # Bad input: 422 naming the field; a member may not change it; nothing written, nothing audited.
    for bad in ("-1", "abc", "0.0000001", "NaN", True, {"usd": 1}):
        refused = c.put("/llm-budget", json={FIELD: bad}, headers=tenant.auth("OWNER"))
        assert refused.status_code == 422 and FIELD in refused.json()["error"], (bad, refused.text)
    assert c.put("/llm-budget", json={FIELD: "1"}, headers=tenant.auth("MEMBER")).status_code == 403
    assert _own(ws) is None
    assert not AuditLog.select().where(AuditLog.action == "workspace.llm_budget_set").exists()

    # An admin lowers it below today's spend plus the next call's estimate.
    lowered = c.put("/llm-budget", json={FIELD: "0.000010"}, headers=tenant.auth("ADMIN"))
    assert lowered.status_code == 200, lowered.text
    body = lowered.json()
    assert (body["budget_usd"], body["effective_usd"], body["source"], body["spent_today_usd"],
            body["remaining_usd"]) == ("0.000010", "0.000010", "workspace", spent,
                                       format(max(Decimal("0.000010") - paid.cost, Decimal(0)), "f"))
    assert _own(ws) == Decimal("0.000010")
    entry = AuditLog.get(AuditLog.action == "workspace.llm_budget_set")
    assert entry.changes == {"before": {FIELD: None}, "after": {FIELD: "0.000010"}}
    assert str(entry.user_id) == str(tenant.users["ADMIN"].id)

    calls_before, requests_before = LlmCall.select().count(), len(model.requests)
    with pytest.raises(BudgetExceeded) as no:
        _call(ws, "and a dead letter queue")
    assert "daily LLM budget of workspace 'bud' is 0.000010 USD" in str(no.value)
    assert LlmCall.select().count() == calls_before and len(model.requests) == requests_before

    # Raising it (or going back to no limit) is the operator's.
    for higher in ("5", None, 0.5):
        raised = c.put("/llm-budget", json={FIELD: higher}, headers=tenant.auth("OWNER"))
        assert raised.status_code == 403 and FIELD in raised.json()["error"], raised.text
    assert _own(ws) == Decimal("0.000010")
    assert c.put("/llm-budget", json={FIELD: 0}, headers=tenant.auth("OWNER")).json()["budget_usd"] == "0.000000"


def test_the_quotas_cli_sets_shows_and_refuses_the_budget(real_env, monkeypatch, capsys):
    from shiftflow.cli.main import main

    for name, value in real_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SHIFTFLOW_LLM_DAILY_BUDGET_USD", "3")

    def run(*argv: str) -> tuple[int, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    with worker(real_env, threads=1):
        workspace = catalog.ensure_workspace("cli-bud")
        for bad, why in (("-1", "must not be negative"), ("abc", "is not a number"),
                         ("1.0000001", "six decimal places"), ("inf", "is not a number")):
            code, out = run("quotas", "set", "cli-bud", "--llm-daily-budget-usd", bad)
            assert code == 2 and "--llm-daily-budget-usd" in out and why in out, out
        assert _own(workspace) is None

        code, out = run("quotas", "show", "cli-bud")
        assert code == 0 and "LLM budget         3.000000 USD/day (default)" in out, out
        assert "spent today (UTC) 0.000000 USD, 3.000000 USD left" in out

        code, out = run("quotas", "set", "cli-bud", "--llm-daily-budget-usd", "12.5", "--runs-burst", "4")
        assert code == 0 and "12.500000 USD/day (workspace)" in out, out
        assert _own(workspace) == Decimal("12.500000")
        assert Workspace.get_by_id(workspace.id).quota_runs_burst == 4

        code, out = run("quotas", "show", "cli-bud", "--json")
        assert code == 0 and '"remaining_usd": "12.500000"' in out and '"budget_usd": "12.500000"' in out, out

        code, out = run("quotas", "set", "cli-bud", "--llm-daily-budget-usd", "default")
        assert code == 0 and "3.000000 USD/day (default)" in out, out
        assert _own(workspace) is None
        entries = list(AuditLog.select().where(AuditLog.action == "workspace.llm_budget_set")
                       .order_by(AuditLog.created_at))
        assert [(e.changes["before"], e.changes["after"]) for e in entries] == [
            ({FIELD: None}, {FIELD: "12.500000"}), ({FIELD: "12.500000"}, {FIELD: None})]

        code, out = run("quotas", "set", "no-such-ws", "--llm-daily-budget-usd", "1")
        assert code != 0 and "no-such-ws" in out
