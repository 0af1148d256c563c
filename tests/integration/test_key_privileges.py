"""API keys as a hostile workspace member would use them, over the real management API.

A key may only be made for oneself or for a member whose role is at most the maker's; it
never has more scopes or a later expiry than the key that made it; listing keys needs a
keys permission; and every audit entry of a request made with a key that someone else
made names that maker. Same set-up as ``test_api``: uvicorn, real PostgreSQL, RabbitMQ
and MongoDB-wire, a workspace with one member and one key per role.
"""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from shiftflow.models.tables.audit_log import AuditLog
from shiftflow.models.tables.tenancy import ApiKey, WorkspaceMember
from shiftflow.producers.app import create_app
from tests.integration.api_support import SIMPLE, seed_tenant, serve, worker

pytestmark = pytest.mark.integration


@pytest.fixture
def api(real_env):
    with worker(real_env) as settings:
        a = seed_tenant("alpha")
        with serve(create_app(settings)) as base:
            with httpx.Client(
                base_url=base + "/api/v1", timeout=15, headers={"User-Agent": "hostile/1.0"}
            ) as client:
                yield client, a


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _member_id(a, role: str) -> str:
    return str(WorkspaceMember.get(workspace=a.workspace.id, user=a.users[role].id).id)


def test_an_admin_cannot_mint_a_key_that_acts_as_the_owner(api):
    """The exploit of issue 11: an admin minted an owner key and promoted a viewer to owner."""
    c, a = api
    minted = c.post("/keys", json={"name": "owner?", "user_id": str(a.users["OWNER"].id)}, headers=a.auth("ADMIN"))
    assert minted.status_code == 403, minted.text
    assert "owner" in minted.json()["error"]
    assert not ApiKey.select().where((ApiKey.user == a.users["OWNER"].id) & (ApiKey.name == "owner?")).exists()
    # So the admin is left with their own powers: no promotion to owner.
    promoted = c.patch(f"/members/{_member_id(a, 'VIEWER')}", json={"role": "OWNER"}, headers=a.auth("ADMIN"))
    assert promoted.status_code == 403
    assert WorkspaceMember.get(workspace=a.workspace.id, user=a.users["VIEWER"].id).role == "VIEWER"

    # Keys for members whose role is at most the caller's remain possible.
    for role in ("ADMIN", "MEMBER", "VIEWER"):
        made = c.post("/keys", json={"name": f"for {role}", "user_id": str(a.users[role].id)}, headers=a.auth("ADMIN"))
        assert made.status_code == 201, (role, made.text)
    # A member may not even mint for a viewer (no keys:write), only for themselves.
    for_viewer = {"name": "v", "user_id": str(a.users["VIEWER"].id)}
    assert c.post("/keys", json=for_viewer, headers=a.auth("MEMBER")).status_code == 403
    # The owner may mint for anyone, the CLI operator too (seed_tenant did).
    assert (
        c.post("/keys", json={"name": "o", "user_id": str(a.users["OWNER"].id)}, headers=a.auth("OWNER")).status_code
        == 201
    )


def test_an_admin_cannot_revoke_the_owners_keys(api):
    c, a = api
    refused = c.delete(f"/keys/{a.key_ids['OWNER']}", headers=a.auth("ADMIN"))
    assert refused.status_code == 403, refused.text
    assert ApiKey.get_by_id(a.key_ids["OWNER"]).revoked_at is None
    assert c.get("/workspace", headers=a.auth("OWNER")).status_code == 200
    # Keys of roles at most the admin's: revocable.
    assert c.delete(f"/keys/{a.key_ids['VIEWER']}", headers=a.auth("ADMIN")).status_code == 204


def test_a_key_never_outlives_or_outscopes_the_key_that_made_it(api):
    c, a = api
    limit = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).replace(microsecond=0)
    parent = c.post(
        "/keys",
        json={
            "name": "deployer",
            "scopes": ["keys:self", "keys:write", "workflows:read"],
            "expires_at": limit.isoformat(),
        },
        headers=a.auth("ADMIN"),
    )
    assert parent.status_code == 201, parent.text
    as_parent = _bearer(parent.json()["key"])

    # No expiry asked: the child gets its maker's, not "never"; no scopes asked: its maker's.
    child = c.post("/keys", json={"name": "child"}, headers=as_parent)
    assert child.status_code == 201, child.text
    assert child.json()["expires_at"] is not None, "a key made by an expiring key must expire too"
    assert dt.datetime.fromisoformat(child.json()["expires_at"]) <= limit
    assert child.json()["scopes"] == ["keys:self", "keys:write", "workflows:read"]
    # The same for a key made for another member.
    other = c.post("/keys", json={"name": "v", "user_id": str(a.users["VIEWER"].id)}, headers=as_parent)
    assert other.status_code == 201, other.text
    assert dt.datetime.fromisoformat(other.json()["expires_at"]) <= limit

    later = (limit + dt.timedelta(hours=1)).isoformat()
    longer = c.post("/keys", json={"name": "longer", "expires_at": later}, headers=as_parent)
    assert longer.status_code == 403 and "expires_at" in longer.json()["error"], longer.text
    never = c.post("/keys", json={"name": "never", "expires_at": None}, headers=as_parent)
    assert dt.datetime.fromisoformat(never.json()["expires_at"]) <= limit
    earlier = (limit - dt.timedelta(hours=1)).isoformat()
    assert c.post("/keys", json={"name": "shorter", "expires_at": earlier}, headers=as_parent).status_code == 201

    wider = c.post("/keys", json={"name": "wider", "scopes": ["workflows:write"]}, headers=as_parent)
    assert wider.status_code == 403 and "scopes" in wider.json()["error"]
    assert c.post("/keys", json={"name": "all", "scopes": ["*"]}, headers=as_parent).status_code == 403


def test_listing_keys_needs_a_keys_permission(api):
    c, a = api
    narrow = c.post("/keys", json={"name": "reader", "scopes": ["workflows:read"]}, headers=a.auth("MEMBER"))
    assert narrow.status_code == 201, narrow.text
    refused = c.get("/keys", headers=_bearer(narrow.json()["key"]))
    assert refused.status_code == 403, refused.text
    assert c.get("/keys", headers=a.auth("VIEWER")).status_code == 403  # a viewer holds no keys permission
    own = c.get("/keys", headers=a.auth("MEMBER"))
    assert own.status_code == 200 and {k["user_id"] for k in own.json()["items"]} == {str(a.users["MEMBER"].id)}
    everyone = c.get("/keys", headers=a.auth("ADMIN")).json()["items"]
    assert {k["user_id"] for k in everyone} == {str(u.id) for u in a.users.values()}


def test_audit_entries_name_who_made_the_key(api):
    c, a = api
    made = c.post("/keys", json={"name": "made for member", "user_id": str(a.users["MEMBER"].id)},
                  headers=a.auth("ADMIN"))
    assert made.status_code == 201, made.text
    admin_id, admin_key = str(a.users["ADMIN"].id), a.key_ids["ADMIN"]
    assert made.json()["created_by_user_id"] == admin_id
    assert made.json()["created_by_key_id"] == admin_key
    created = AuditLog.get((AuditLog.action == "api_key.created") & (AuditLog.entity_id == made.json()["id"]))
    assert created.user_id is not None and str(created.user_id) == admin_id
    assert created.changes["after"]["created_by_user_id"] == admin_id

    # What the member's key made by the admin does is recorded as the member's, naming the admin.
    applied = c.post("/workflows", json={"definition": SIMPLE}, headers=_bearer(made.json()["key"]))
    assert applied.status_code == 201, applied.text
    entry = c.get("/audit-log", params={"action": "workflow.created"}, headers=a.auth("OWNER")).json()["items"][0]
    assert entry["user_id"] == str(a.users["MEMBER"].id)
    assert entry["metadata"]["key_created_by"] == f"user {admin_id}"

    # A member's own key needs no such note; a key the CLI operator made says so.
    own = c.post("/keys", json={"name": "own"}, headers=a.auth("MEMBER")).json()
    c.post(f"/workflows/{applied.json()['id']}/pause", headers=_bearer(own["key"]))
    paused = c.get("/audit-log", params={"action": "workflow.paused"}, headers=a.auth("OWNER")).json()["items"][0]
    assert "key_created_by" not in paused["metadata"]
    c.post(f"/workflows/{applied.json()['id']}/activate", headers=a.auth("MEMBER"))  # seed_tenant: the operator's
    active = c.get("/audit-log", params={"action": "workflow.active"}, headers=a.auth("OWNER")).json()["items"][0]
    assert active["metadata"]["key_created_by"] == "the cli operator"
    listed = {k["id"]: k for k in c.get("/keys", headers=a.auth("ADMIN")).json()["items"]}
    assert listed[made.json()["id"]]["created_by_user_id"] == admin_id
    assert listed[a.key_ids["MEMBER"]]["created_via"] == "cli"
