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


def test_the_readmes_first_screen_names_both_fronts_ports():
    first_screen = "\n".join((PROJECT_ROOT / "README.md").read_text().splitlines()[:24])
    assert "port 8501" in first_screen and "8500" in first_screen  # TF Serving's REST and gRPC ports


def test_the_readme_is_at_most_300_lines():
    assert len((PROJECT_ROOT / "README.md").read_text().splitlines()) <= 300


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_of_the_page_leads_to_a_file_of_the_project(page):
    missing = {target for target in linked_files(page) if not (PROJECT_ROOT / target).exists()}
    assert missing <= WRITTEN_ELSEWHERE


def test_the_readme_links_every_reference_page():
    pages = {f"docs/{path.name}" for path in (PROJECT_ROOT / "docs").glob("*.md")}
    assert pages <= linked_files(PROJECT_ROOT / "README.md")


def named_files(page: Path) -> set[str]:
    """The project files a page names in code spans (`shim/service.py`, `scripts/nginx.conf`)."""
    spans = re.findall(r"`([\w./-]+\.(?:py|conf|yaml|md|sh))`", page.read_text())
    return {span for span in spans if "/" in span and not span.startswith(("/", "."))}


def test_the_development_page_traces_each_request_path_through_files_that_exist():
    page = PROJECT_ROOT / "docs" / "development.md"
    named = named_files(page)
    assert {"shim/rest/tf_serving.py", "shim/rest/v2.py", "shim/grpc/tf_serving.py", "shim/grpc/v2.py"} <= named
    assert "shim/service.py" in named and "shim/torchserve.py" in named
    assert sorted(path for path in named if not (PROJECT_ROOT / path).exists()) == []
