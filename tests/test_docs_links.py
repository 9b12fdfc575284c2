"""Every relative link in README.md and docs/*.md leads somewhere: the file (or folder) exists, and a
``#anchor`` names a heading of the target as GitHub renders heading anchors (lowercase, punctuation removed,
spaces to hyphens, ``-1``, ``-2`` for repeats) or an explicit ``<a id|name="…">``."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the text may hold `code` and one level of brackets
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: markup dropped, lowercase, punctuation removed (hyphens and
    underscores kept), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters, digits and "_" (also non-ASCII letters)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    out = []
    for number, line in enumerate(prose_lines(path.read_text(encoding="utf-8")), 1):
        stripped = re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), line)  # links inside code spans are not links
        out.extend((number, target) for target in LINK.findall(stripped))
    return out


def broken_links(path: Path) -> list[str]:
    problems = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:, …
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)} (link {number}: {target})"
        if not dest.exists():
            problems.append(f"{where}: {file_part} does not exist")
            continue
        if anchor:
            if dest.is_dir() or dest.suffix.lower() != ".md":
                problems.append(f"{where}: an anchor into something that is not a markdown page")
            elif unquote(anchor) not in anchors(dest):
                problems.append(f"{where}: no heading with the anchor #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def test_slugs_follow_github() -> None:
    assert slug("Receiving webhooks: `payrecon receive`") == "receiving-webhooks-payrecon-receive"
    assert slug("The demo's day, class by class") == "the-demos-day-class-by-class"
    assert slug("Orange's notif_url") == "oranges-notif_url"
    assert slug("Where unfinished work lives: PostgreSQL") == "where-unfinished-work-lives-postgresql"
    assert slug("Development") == "development"


def test_the_checker_finds_a_broken_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Page A\n\n## Some section\n\n## Some section\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n\n[ok](docs/a.md#some-section) [ok](docs/a.md#some-section-1) [ok](#top) [ok](docs/)\n"
        "[web](https://example.com/#x) `[in code](nowhere.md)`\n\n```\n[in a fence](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == []
    page.write_text(
        "# Top\n\n[a](docs/a.md#no-such) [b](docs/missing.md) [c](#nope) [d](docs/a.md#page-a)\n", encoding="utf-8"
    )
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert "#no-such" in problems[0] and "docs/missing.md does not exist" in problems[1] and "#nope" in problems[2]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_leads_somewhere(page: Path) -> None:
    assert links(page) or page != ROOT / "README.md", "the README links its docs pages"
    assert broken_links(page) == []


def test_the_readme_links_every_docs_page() -> None:
    """A page nobody links to is a page nobody finds."""
    linked = set()
    for _, target in links(ROOT / "README.md"):
        file_part = target.partition("#")[0]
        if file_part and not re.match(r"^[a-z][a-z0-9+.-]*:", file_part):
            linked.add((ROOT / unquote(file_part)).resolve())
    pages = {p.resolve() for p in (ROOT / "docs").rglob("*.md")}
    assert pages - linked == set()


def test_the_readme_opens_with_the_two_set_up_commands_and_ci_runs_the_test_one() -> None:
    """The first two code blocks of the README are the demo and the test suite; ``.ci/run`` runs the second
    verbatim."""
    blocks = re.findall(r"^```sh\n(.*?)\n```$", (ROOT / "README.md").read_text(encoding="utf-8"), re.S | re.M)
    demo, suite = blocks[0], blocks[1]
    assert demo == "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/payrecon demo"
    assert suite == "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/pytest -n 2"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci[-1] == suite


def test_the_report_csv_columns_are_documented_in_order() -> None:
    """docs/reports.md's two column tables name exactly the CSV files' columns, in the files' order."""
    from reconciliation.reports.run import CSV_COLUMNS, PAYOUT_CSV_COLUMNS

    section = (ROOT / "docs" / "reports.md").read_text().split("### CSV columns", 1)[1].split("\n#", 1)[0]
    tables = [re.findall(r"^\| `([a-z_]+)` \|", block, re.M) for block in section.split("| column |")[1:]]
    assert tables == [list(CSV_COLUMNS), list(PAYOUT_CSV_COLUMNS)]
