"""Connection secrets for ``{{ secrets.<connection>.<field> }}`` references.

Secrets are decrypted only inside the worker that makes the call, only for the
workspace of the execution, and only when a step's inputs reference them; what is
stored and logged is rendered again with every secret masked. What comes back (an
outside service may echo a header or a token in its answer or its error) is scrubbed
of the values of every connection the step used before it is stored or logged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from shiftflow.kernel import redaction
from shiftflow.kernel.definition import SECRET_STEP_TYPES
from shiftflow.kernel.expressions import Masked, Unavailable
from shiftflow.kernel.secretbox import vault_for
from shiftflow.kernel.settings import get_settings
from shiftflow.models.tables.integrations import Connection, Integration


def referenced(template: Any) -> bool:
    """True when ``template`` mentions ``secrets.`` anywhere (cheap check before decrypting)."""
    if isinstance(template, str):
        return "secrets." in template
    if isinstance(template, list):
        return any(referenced(v) for v in template)
    if isinstance(template, dict):
        return any(referenced(v) for v in template.values())
    return False


#: Renders every ``secrets.*`` reference as ``***`` (for stored inputs and logs).
MASKED = Masked()

#: ``secrets`` in the context of a step that may not use them (the definition check
#: refuses such a reference; a version stored before that check meets this instead).
UNAVAILABLE = Unavailable(
    f"secrets are available only to {', '.join(sorted(SECRET_STEP_TYPES))} steps, in what they send; "
    "this step would store the value in clear")


def allowed(step_type: str) -> bool:
    """True when a step of ``step_type`` may render ``secrets.*`` references."""
    return step_type in SECRET_STEP_TYPES


class _WorkspaceSecrets(Mapping[str, Any]):
    """Decrypts one workspace's active connections by name, on first use."""

    def __init__(self, workspace_id: Any) -> None:
        self.workspace_id = workspace_id
        self._cache: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._cache:
            row = Connection.get_or_none((Connection.workspace == self.workspace_id) & (Connection.name == name)
                                         & (Connection.is_active == True))  # noqa: E712 - peewee expression
            if row is None:
                raise KeyError(name)
            self._cache[name] = vault_for(get_settings().secret_keys).decrypt(row.credentials)
        return self._cache[name]

    def __contains__(self, name: object) -> bool:
        try:
            self[str(name)]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._cache)

    def used_values(self) -> list[str]:
        """The string values of every connection decrypted so far (what a step may have sent)."""
        found: list[str] = []
        stack: list[Any] = list(self._cache.values())
        while stack:
            value = stack.pop()
            if isinstance(value, str):
                found.append(value)
            elif isinstance(value, Mapping):
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)
        return found

    def __len__(self) -> int:
        return len(self._cache)


def scrubber(used: Mapping[str, Any]) -> Callable[[Any], Any]:
    """A function that replaces, in any string of a value (recursively), every secret value
    of the connections in ``used`` (``for_workspace``'s mapping after rendering) by ``***``
    (``kernel.redaction.scrubber``; the identity when no connection was used).
    """
    return redaction.scrubber(used.used_values() if isinstance(used, _WorkspaceSecrets) else [])


def for_workspace(workspace_id: Any) -> Mapping[str, Any]:
    """The lazily decrypted secrets of one workspace."""
    return _WorkspaceSecrets(workspace_id)


def store_connection(workspace_id: Any, integration_key: str, name: str, credentials: dict[str, Any]) -> Connection:
    """Create or replace a workspace connection, encrypting its credentials.

    The integration is found by its key (``crm``, ``gmail``...), created as a custom
    integration with API-key auth if the catalogue does not have it.
    """
    vault = vault_for(get_settings().secret_keys)
    integration, _ = Integration.get_or_create(
        key=integration_key, defaults={"name": integration_key, "category": "custom", "auth_type": "API_KEY"})
    row = Connection.get_or_none((Connection.workspace == workspace_id) & (Connection.name == name))
    if row is None:
        return Connection.create(workspace=workspace_id, integration=integration.id, name=name,
                                 credentials=vault.encrypt(credentials), key_id=vault.current_key_id)
    row.credentials, row.key_id = vault.encrypt(credentials), vault.current_key_id
    row.save()
    return row
