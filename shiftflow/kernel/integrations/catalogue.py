"""The integration catalogue: the built-in integrations plus those third-party packages declare.

A package adds integrations through the ``shiftflow.integrations`` entry point group, as
tools are added through ``shiftflow.tools``; each entry point names an ``Integration``, a
list of them, or a function without arguments returning either::

    [project.entry-points."shiftflow.integrations"]
    acme = "acme_integrations:INTEGRATION"

A plugin cannot take a key already registered; such an integration, and an entry point
that fails to load or names no integration, is refused and reported in ``problems``
(and the log), and the others still load. An integration naming a tool the tool
registry does not have is kept, and the unknown name reported.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from importlib.metadata import EntryPoint, entry_points

from shiftflow.kernel.errors import NotFound, PermanentError
from shiftflow.kernel.integrations.base import Integration

ENTRY_POINT_GROUP = "shiftflow.integrations"
log = logging.getLogger(__name__)


class UnknownIntegration(NotFound):
    """Raised when no integration of the catalogue has the key asked for."""


class IntegrationCatalogue:
    """Integrations by key, with where each came from (``builtin`` or ``<distribution>:<entry point>``)."""

    def __init__(self, integrations: Iterable[Integration] = ()) -> None:
        self._entries: dict[str, Integration] = {}
        self._sources: dict[str, str] = {}
        #: Problems met while loading plugins, one line each (also logged).
        self.problems: list[str] = []
        for integration in integrations:
            self.add(integration)

    def add(self, integration: Integration, source: str = "builtin") -> None:
        """Register ``integration``.

        Raises:
            PermanentError: the key is taken (says by whom).
        """
        if integration.key in self._entries:
            raise PermanentError(f"integration {integration.key!r} from {source} is already registered by "
                                 f"{self._sources[integration.key]}")
        self._entries[integration.key] = integration
        self._sources[integration.key] = source

    def get(self, key: str) -> Integration:
        """The integration ``key``.

        Raises:
            UnknownIntegration: none has it (the message lists the known keys).
        """
        try:
            return self._entries[key]
        except KeyError:
            raise UnknownIntegration(f"unknown integration {key!r}; known integrations: "
                                     f"{', '.join(sorted(self._entries))}") from None

    def source(self, key: str) -> str:
        """Where the integration ``key`` came from."""
        self.get(key)
        return self._sources[key]

    def for_tool(self, tool: str) -> list[Integration]:
        """The integrations whose connections the tool ``tool`` may use."""
        return [i for i in self if i.serves(tool)]

    def check_tool(self, tool: str, key: str) -> Integration:
        """The integration ``key``, after checking that a connection of it may serve ``tool``.

        Raises:
            UnknownIntegration: no such integration.
            PermanentError: it does not serve the tool (the message names those that do).
        """
        integration = self.get(key)
        if not integration.serves(tool):
            fitting = ", ".join(i.key for i in self.for_tool(tool)) or "none"
            raise PermanentError(f"connection: a {key} connection cannot be used by tool {tool} "
                                 f"(integrations it takes: {fitting})")
        return integration

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Integration]:
        return iter(sorted(self._entries.values(), key=lambda i: i.key))

    def __len__(self) -> int:
        return len(self._entries)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Add the integrations every installed distribution declares in ``group``.

        Returns:
            The keys added; problems go to ``problems`` and the log.
        """
        added: list[str] = []
        for point in entry_points(group=group):
            source = _source(point)
            try:
                found = _integrations_of(point.load())
            except Exception as exc:  # noqa: BLE001 - a plugin's import may raise anything; report it, load the rest
                self._problem(f"{source}: cannot load: {type(exc).__name__}: {exc}")
                continue
            if not found:
                self._problem(f"{source}: is not an Integration, a list of them, or a function returning them")
                continue
            for integration in found:
                try:
                    self.add(integration, source)
                except PermanentError as exc:
                    self._problem(str(exc))
                    continue
                added.append(integration.key)
        return added

    def unknown_tools(self, known: Iterable[str]) -> list[str]:
        """``key: tool`` for every tool an integration names that is not in ``known``."""
        names = set(known)
        return [f"{i.key}: {t}" for i in self for t in i.tools if t not in names]

    def _problem(self, line: str) -> None:
        self.problems.append(line)
        log.warning("integration plugin refused: %s", line)


def _source(point: EntryPoint) -> str:
    dist = point.dist.name if point.dist is not None else "?"
    return f"{dist}:{point.name}"


def _integrations_of(value: object) -> list[Integration]:
    if callable(value) and not isinstance(value, Integration):
        value = value()
    if isinstance(value, Integration):
        return [value]
    if isinstance(value, list | tuple) and value and all(isinstance(v, Integration) for v in value):
        return list(value)
    return []


def builtin_integrations() -> list[Integration]:
    """Every integration ShiftFlow ships."""
    from shiftflow.kernel.integrations import (
        chat,
        coingecko,
        http,
        llm,
        oauth2_integration,
        s3,
        sideshift,
        smtp,
    )

    return [http.INTEGRATION, smtp.INTEGRATION, chat.SLACK, chat.DISCORD, s3.INTEGRATION, oauth2_integration.INTEGRATION,
            sideshift.INTEGRATION, coingecko.INTEGRATION, llm.OPENAI, llm.ANTHROPIC]


@functools.cache
def default_catalogue() -> IntegrationCatalogue:
    """The process's catalogue: built-ins, then the installed plugins (loaded once).

    Tools the integrations name that the tool registry lacks are reported in ``problems``.
    """
    from shiftflow.kernel.tools.registry import default_registry

    catalogue = IntegrationCatalogue(builtin_integrations())
    catalogue.load_entry_points()
    for line in catalogue.unknown_tools(tool.name for tool in default_registry()):
        catalogue._problem(f"names an unknown tool: {line}")
    return catalogue
