"""``models.manage.access``: roles, permissions and scopes (pure)."""

from __future__ import annotations

import uuid

import pytest

from shiftflow.models.manage.access import (
    MATRIX,
    PERMISSIONS,
    READ,
    Principal,
    parse_role,
    parse_scopes,
)
from shiftflow.models.manage.problems import Forbidden, InvalidInput

WS = uuid.uuid4()


def test_the_role_matrix():
    assert MATRIX["OWNER"] == frozenset(PERMISSIONS)
    assert MATRIX["OWNER"] - MATRIX["ADMIN"] == {"workspace:delete", "workspace:transfer"}
    member, viewer = MATRIX["MEMBER"], MATRIX["VIEWER"]
    assert {"workflows:write", "executions:write", "keys:self"} <= member
    assert not member & {
        "members:write",
        "keys:write",
        "keys:read",
        "audit:read",
        "dead_letters:replay",
        "workspace:write",
        "workspace:delete",
        "workspace:transfer",
    }
    assert all(p.endswith(":read") for p in viewer)  # read only
    assert viewer == member - {"workflows:write", "executions:write", "keys:self"}
    assert MATRIX["VIEWER"] < MATRIX["MEMBER"] < MATRIX["ADMIN"] < MATRIX["OWNER"]


def test_scopes_limit_the_role_and_never_extend_it():
    reader = Principal(WS, "OWNER", scopes=("read",))
    assert reader.can("workflows:read") and not reader.can("workflows:write")
    with pytest.raises(Forbidden, match="scopes do not include workflows:write"):
        reader.require("workflows:write")
    viewer = Principal(WS, "VIEWER", scopes=("*",))
    with pytest.raises(Forbidden, match="role viewer may not executions:write"):
        viewer.require("executions:write")
    narrow = Principal(WS, "ADMIN", scopes=("executions:write",))
    assert narrow.permissions == {"executions:write"}
    assert Principal(WS, "MEMBER").permissions == MATRIX["MEMBER"]
    assert READ <= Principal(WS, "OWNER", scopes=("read",)).permissions


def test_scope_and_role_parsing_name_the_field():
    assert parse_scopes(["read", "*", "read"]) == ("*", "read")
    with pytest.raises(InvalidInput) as bad:
        parse_scopes(["workflows:delete"])
    assert bad.value.field == "scopes" and "workflows:delete" in str(bad.value)
    with pytest.raises(InvalidInput, match="at least one"):
        parse_scopes([])
    assert parse_role("admin") == "ADMIN"
    with pytest.raises(InvalidInput, match="role: 'boss' is not a role"):
        parse_role("boss")


def test_only_the_cli_operator_acts_without_a_workspace():
    assert Principal.operator().workspace_id is None and Principal.operator().can("workspace:delete")
    with pytest.raises(ValueError):
        Principal(None, "OWNER")
    with pytest.raises(ValueError):
        Principal(WS, "ROOT")
