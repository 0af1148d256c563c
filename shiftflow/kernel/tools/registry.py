"""The tool registry: the built-in tools plus those third-party packages declare.

A package adds tools through the ``shiftflow.tools`` entry point group; each entry point
names a ``Tool``, a list of them, or a function without arguments returning either::

    [project.entry-points."shiftflow.tools"]
    acme = "acme_tools:TOOLS"

Built-in names cannot be taken over: a plugin tool with a name already registered is
refused and reported, as is an entry point that fails to load, and the others still load
(one broken package must not stop a worker pool).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from importlib.metadata import EntryPoint, entry_points

from shiftflow.kernel.errors import NotFound, PermanentError
from shiftflow.kernel.tools.base import Tool

ENTRY_POINT_GROUP = "shiftflow.tools"
log = logging.getLogger(__name__)


class UnknownTool(NotFound):
    """Raised when no registered tool has the name asked for."""


class ToolRegistry:
    """Tools by name, with where each came from (``builtin`` or ``<distribution>:<entry point>``)."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self._sources: dict[str, str] = {}
        #: Problems met while loading plugins, one line each (also logged).
        self.problems: list[str] = []
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool, source: str = "builtin") -> None:
        """Register ``tool``.

        Raises:
            PermanentError: the name is taken (says by whom).
        """
        if tool.name in self._tools:
            raise PermanentError(f"tool {tool.name!r} from {source} is already registered by {self._sources[tool.name]}")
        self._tools[tool.name] = tool
        self._sources[tool.name] = source

    def get(self, name: str) -> Tool:
        """The tool called ``name``.

        Raises:
            UnknownTool: none is (the message lists the registered names).
        """
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownTool(f"unknown tool {name!r}; known tools: {', '.join(sorted(self._tools))}") from None

    def source(self, name: str) -> str:
        """Where the tool ``name`` came from."""
        self.get(name)
        return self._sources[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(sorted(self._tools.values(), key=lambda t: t.name))

    def __len__(self) -> int:
        return len(self._tools)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Add the tools every installed distribution declares in ``group``.

        Returns:
            The names added. Problems (an import error, a value that is no tool, a taken
            name) go to ``problems`` and the log; the other entry points still load.
        """
        added: list[str] = []
        for point in entry_points(group=group):
            source = _source(point)
            try:
                tools = _tools_of(point.load())
            except Exception as exc:  # noqa: BLE001 - a plugin's import may raise anything; report it, load the rest
                self._problem(f"{source}: cannot load: {type(exc).__name__}: {exc}")
                continue
            if not tools:
                self._problem(f"{source}: is not a Tool, a list of Tools, or a function returning them")
                continue
            for tool in tools:
                try:
                    self.add(tool, source)
                except PermanentError as exc:
                    self._problem(str(exc))
                    continue
                added.append(tool.name)
        return added

    def _problem(self, line: str) -> None:
        self.problems.append(line)
        log.warning("tool plugin refused: %s", line)


def _source(point: EntryPoint) -> str:
    dist = point.dist.name if point.dist is not None else "?"
    return f"{dist}:{point.name}"


def _tools_of(value: object) -> list[Tool]:
    if callable(value) and not isinstance(value, Tool):
        value = value()
    if isinstance(value, Tool):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Tool) for v in value):
        return list(value)
    return []


def builtin_tools() -> list[Tool]:
    """Every tool ShiftFlow ships."""
    from shiftflow.kernel.tools import browser, chat, http, mail, media_av, media_image

    return [http.TOOL, mail.TOOL, chat.TOOL, *browser.TOOLS, media_image.TOOL, *media_av.TOOLS]


@functools.cache
def default_registry() -> ToolRegistry:
    """The process's registry: built-ins, then the installed plugins (loaded once)."""
    registry = ToolRegistry(builtin_tools())
    registry.load_entry_points()
    return registry
