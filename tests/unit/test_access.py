"""Roles, permissions and scopes (pure), API-key text, cursors and timestamps."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

import pytest

from shiftflow.kernel.storable import unstorable
from shiftflow.models.manage import apikeys, paging
from shiftflow.models.manage.access import (
    MATRIX,
    PERMISSIONS,
    READ,
    ROLES,
    Principal,
    parse_role,
    parse_scopes,
)
from shiftflow.models.manage.plain import parse_time, stamp
from shiftflow.models.manage.problems import Forbidden, InvalidInput
from shiftflow.producers.api import app, spec

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


def test_api_key_text_shape_and_hash():
    text, prefix = apikeys.generate()
    assert text.startswith(prefix + "_") and prefix.startswith("sfk_") and len(prefix) == 16
    secret = text[len(prefix) + 1 :]
    assert len(secret) == 43  # 32 random bytes, url-safe base64: 256 bits
    assert apikeys.hash_key(text) == hashlib.sha256(text.encode()).hexdigest()
    assert len({apikeys.generate()[0] for _ in range(200)}) == 200


def test_cursor_round_trip_and_rejection():
    at, row_id = dt.datetime(2025, 3, 1, 12, 30, 0, 123456), uuid.uuid4()
    assert paging.decode_cursor(paging.encode_cursor(at, row_id)) == (at, row_id)
    for bad in ("", "%%%", "bm90IGpzb24", paging.encode_cursor(at, row_id)[:-3]):
        with pytest.raises(InvalidInput, match="cursor"):
            paging.decode_cursor(bad)
    assert paging.parse_limit(None) == 50
    for bad_limit in ("0", "201", "ten"):
        with pytest.raises(InvalidInput, match="limit"):
            paging.parse_limit(bad_limit)


def test_timestamps_in_and_out():
    assert parse_time("2025-01-31T12:00:00+02:00", "since") == dt.datetime(2025, 1, 31, 10, 0)
    assert parse_time("2025-01-31T12:00:00Z", "since") == dt.datetime(2025, 1, 31, 12, 0)
    with pytest.raises(InvalidInput, match="^until: "):
        parse_time("yesterday", "until")
    assert stamp(dt.datetime(2025, 1, 31, 12, 0)) == "2025-01-31T12:00:00.000000Z"
    assert stamp(None) is None
    assert unstorable({"a": ["ok", "x\x00"]}) and unstorable("\ud800") and unstorable({"k": 1}) is None


def test_the_openapi_document_is_complete():
    """Every operation has a handler, a permission that exists, a tenant marker and an example body."""
    assert app.missing_handlers() == []
    ids = [op["operationId"] for _, _, op in spec.operations()]
    assert len(ids) == len(set(ids))
    for _method, path, op in spec.operations():
        assert op["x-permission"] in (None, *PERMISSIONS), path
        assert op["x-tenant"] in ("workspace", "global"), path
        if "requestBody" in op:
            assert "example" in op["requestBody"]["content"]["application/json"], path
        for code in op["responses"]:
            assert code in ("200", "201", "202", "204") or "Error" in str(op["responses"][code]), (path, code)
    assert set(ROLES) == set(MATRIX)
