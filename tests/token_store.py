"""An in-memory ``TokenStore`` (kernel/integrations/oauth2.py) standing for the engine's
connection table in the OAuth2 tests: credentials per connection, every save kept."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from shiftflow.kernel.errors import ToolUnavailable
from shiftflow.kernel.integrations.oauth2 import TokenSet, merge_tokens


class FakeStore:
    """The engine's token persistence, in memory: credentials per connection, every save kept."""

    def __init__(self, credentials: Mapping[str, Any] | None = None, connection_id: str = "conn-1") -> None:
        self.rows: dict[str, dict[str, Any]] = {connection_id: dict(credentials)} if credentials else {}
        self.saves: list[tuple[str, TokenSet]] = []
        self.fail_save = False
        self._lock = threading.Lock()

    def load(self, connection_id: str) -> Mapping[str, Any] | None:
        with self._lock:
            row = self.rows.get(connection_id)
            return dict(row) if row is not None else None

    def save(self, connection_id: str, tokens: TokenSet) -> None:
        if self.fail_save:
            raise ToolUnavailable("store down")
        with self._lock:
            self.saves.append((connection_id, tokens))
            self.rows[connection_id] = merge_tokens(self.rows[connection_id], tokens)
