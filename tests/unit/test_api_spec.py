"""``producers.api.spec``: the OpenAPI document is complete (and ``api.app`` has a handler for each operation)."""

from __future__ import annotations

from shiftflow.models.manage.access import MATRIX, PERMISSIONS, ROLES
from shiftflow.producers.api import app, spec


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
