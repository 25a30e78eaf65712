"""The README and docs/: every relative link resolves, and no text names a work item.

A moved page or a renamed results file breaks a link silently; these checks make it fail
the suite instead. Work-item numbers ("issue 18") mean nothing to a user, so neither the
code nor the docs may carry them.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target)
WORK_ITEM = re.compile(r"\b(issue|task|ticket)s? ?#?\d+\b", re.IGNORECASE)


def relative_links(page: Path) -> list[str]:
    """Link targets of a markdown page that point into the repository (no URLs, no anchors)."""
    targets = [m.group(1) for m in LINK.finditer(page.read_text())]
    return [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_there_are_concept_pages_linked_from_the_readme():
    linked = {Path(t).name for t in relative_links(ROOT / "README.md")}
    for page in ("model.md", "pruning.md", "zero-shot.md", "selection.md", "finetuning.md", "scale.md", "benchmarks.md"):
        assert (ROOT / "docs" / page).is_file() and page in linked, page


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    missing = [t for t in relative_links(page) if t and not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_the_link_scan_sees_links_and_skips_urls(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[a](docs/x.md#part) [b](https://example.org) [c](#anchor) ![d](img.png)")
    assert relative_links(page) == ["docs/x.md", "img.png"]


def test_no_work_item_numbers_in_code_or_docs():
    files = [*PAGES, *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "skmm_jax").rglob("*.py"),
             *(ROOT / "prune_jax").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    found = [f"{f.relative_to(ROOT)}:{n}: {line.strip()}" for f in files if f.name != "test_docs.py"
             for n, line in enumerate(f.read_text().splitlines(), 1) if WORK_ITEM.search(line)]
    assert not found, "work-item numbers:\n" + "\n".join(found)
