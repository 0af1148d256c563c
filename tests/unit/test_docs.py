"""What the repository cites is in the repository: no file outside it, every docs/ path and
heading a comment or a page points to exists (docs/architecture.md explains the design)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Where citations live: code, tests, build files, deploy files and the docs themselves.
SCANNED = ["shiftflow", "tests", "bench", "scripts", "deploy", "docs", ".ci", "Makefile", "pyproject.toml",
           "README.md"]
SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".sh", ".sql", ".cfg", ".ini", ".txt", ".conf", ".json", ""}

#: Design notes a person who clones the repository does not have (spelled in pieces, so this
#: file does not match itself).
OUTSIDE = re.compile(r"\b(?:DESIGN|reliability|sideshift-api)\.md\b|\bshared(?=/)")

#: ``docs/<page>.md`` or ``docs/<page>.md#<anchor>`` anywhere; ``(<page>.md#<anchor>)`` inside docs/.
DOCS_PATH = re.compile(r"\bdocs/([A-Za-z0-9_.-]+\.(?:md|json))(?:#([A-Za-z0-9_-]+))?")
RELATIVE_LINK = re.compile(r"\]\(([A-Za-z0-9_.-]+\.md)?(?:#([A-Za-z0-9_-]+))?\)")


def _files() -> list[Path]:
    out: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        out += [p for p in candidates if "__pycache__" not in p.parts and p.suffix in SUFFIXES]
    return out


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ""


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to '-'."""
    kept = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page."""
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *#*$", _text(page), re.MULTILINE)}


def test_slug_matches_github():
    assert slug("13. One order per swap (ShiftFlow's rule)") == "13-one-order-per-swap-shiftflows-rule"
    assert slug("Planning: inline steps and queued steps") == "planning-inline-steps-and-queued-steps"


def test_nothing_cites_a_file_outside_the_repository():
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in _files()
             for n, line in enumerate(_text(p).splitlines(), 1) if OUTSIDE.search(line)]
    assert not found, "\n".join(found)


def _citations() -> list[tuple[str, Path, str | None]]:
    cited: list[tuple[str, Path, str | None]] = []
    for path in _files():
        for n, line in enumerate(_text(path).splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{n}"
            for m in DOCS_PATH.finditer(line):
                cited.append((where, ROOT / "docs" / m.group(1), m.group(2)))
            if path.suffix == ".md" and path.parent == ROOT / "docs":
                for m in RELATIVE_LINK.finditer(line):
                    if m.group(1) or m.group(2):
                        cited.append((where, path.parent / (m.group(1) or path.name), m.group(2)))
    return cited


def test_every_cited_docs_page_and_heading_exists():
    cited = _citations()
    assert any(page.name == "architecture.md" for _, page, _ in cited)
    missing = [f"{where}: {page.relative_to(ROOT)}" + (f"#{anchor}" if anchor else "")
               for where, page, anchor in cited
               if not page.is_file() or (anchor and page.suffix == ".md" and anchor not in anchors(page))]
    assert not missing, "\n".join(missing)



@pytest.mark.parametrize("page", ["architecture.md", "benchmarks.md", "seed-mapping.md"])
def test_the_readme_links_the_design_pages(page):
    assert f"(docs/{page})" in _text(ROOT / "README.md")
