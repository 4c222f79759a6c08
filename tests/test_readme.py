"""The README is a front door: one screen of what it is, a short tour, and links into docs/ that all lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import PROJECT_ROOT

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
# Pages linked now whose text other branches of this round are writing; empty once they are merged.
WRITTEN_ELSEWHERE: set[str] = set()  # pages other work writes, not yet here


def linked_files(page: Path) -> set[str]:
    """The project files `page` links to (relative links, anchors dropped), relative to the project root."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    local = [target for target in targets if not re.match(r"[a-z]+:", target)]
    return {str((page.parent / target).resolve().relative_to(PROJECT_ROOT)) for target in local}


def test_the_readme_is_at_most_300_lines():
    assert len((PROJECT_ROOT / "README.md").read_text().splitlines()) <= 300


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_of_the_page_leads_to_a_file_of_the_project(page):
    missing = {target for target in linked_files(page) if not (PROJECT_ROOT / target).exists()}
    assert missing <= WRITTEN_ELSEWHERE


def test_the_readme_links_every_reference_page():
    pages = {f"docs/{path.name}" for path in (PROJECT_ROOT / "docs").glob("*.md")}
    assert pages <= linked_files(PROJECT_ROOT / "README.md")
