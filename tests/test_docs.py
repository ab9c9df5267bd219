"""The documentation's links hold (issue 26, item 6: the README as a door, details in docs/).

- every relative link ``[text](target)`` (and ``![alt](target)``, ``[ref]: target``) in README.md, docs/*.md and
  experiments/results/*/README.md points to a file or folder that exists inside the repository;
- every ``#anchor`` points to a heading of its target, slugged as GitHub does (lowercase; punctuation other than
  ``-`` and ``_`` dropped; spaces to ``-``; repeats get ``-1``, ``-2``);
- links inside code (fenced blocks, inline spans) are not links and are not checked;
- the checker reports what it should (a broken file, a broken anchor, a link out of the repository);
- the README stays a door: under 260 lines, with its set-up commands, and every docs page reachable.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_README_LINES = 260


def doc_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md")),
            *sorted((root / "experiments" / "results").glob("*/README.md"))]


# --- parsing -------------------------------------------------------------------------------------------
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*\n.*?(?:^ {0,3}\1[ \t]*$|\Z)", re.M | re.S)
_INLINE_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.M)
_HTML_ID = re.compile(r"<a\s+[^>]*(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_LINE_ANCHOR = re.compile(r"^L\d+(?:-L\d+)?$")


def _blank(m: re.Match) -> str:
    """The match with every character but newlines turned to spaces: offsets (and line numbers) survive."""
    return re.sub(r"[^\n]", " ", m.group(0))


def strip_code(text: str) -> str:
    """Markdown text with code blocks, inline code and HTML comments blanked out (same length, same lines)."""
    text = _FENCE.sub(_blank, text)
    text = _COMMENT.sub(_blank, text)
    return _INLINE_CODE.sub(_blank, text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: markup dropped, lowercase, punctuation but - and _ dropped,
    spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file offers: its headings' slugs (repeats numbered) and explicit <a name/id>."""
    text = path.read_text(encoding="utf-8")
    seen: dict[str, int] = {}
    out = set()
    for m in _ATX.finditer(_FENCE.sub(_blank, text)):
        s = slug(m.group(2))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    out.update(_HTML_ID.findall(text))
    return out


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every link outside code."""
    clean = strip_code(text)
    found = [(m.start(1), m.group(1)) for m in _LINK.finditer(clean)]
    found += [(m.start(1), m.group(1)) for m in _REF_DEF.finditer(clean)]
    return sorted((clean.count("\n", 0, pos) + 1, target) for pos, target in found)


def check_links(files: list[Path], root: Path) -> tuple[list[str], int]:
    """Problems ("file:line: target: why") of every relative link and anchor in ``files``; and how many
    relative links were checked."""
    root = root.resolve()
    problems, checked, cache = [], 0, {}
    for f in files:
        rel = f.relative_to(root)
        for line, target in links(f.read_text(encoding="utf-8")):
            where = f"{rel}:{line}: {target}"
            if not target:
                problems.append(f"{where}: empty link")
                continue
            if _SCHEME.match(target) or target.startswith("//"):
                continue                                   # http(s), mailto, ...: not a file of the repository
            checked += 1
            path_part, _, anchor = target.partition("#")
            path_part = unquote(path_part)
            if not path_part:
                dest = f
            elif path_part.startswith("/"):
                dest = root / path_part.lstrip("/")
            else:
                dest = f.parent / path_part
            dest = dest.resolve()
            if dest != root and root not in dest.parents:
                problems.append(f"{where}: points outside the repository")
                continue
            if not dest.exists():
                problems.append(f"{where}: no such file or folder ({dest.relative_to(root)})")
                continue
            if not anchor:
                continue
            page = dest / "README.md" if dest.is_dir() else dest
            if page.suffix.lower() != ".md" or not page.is_file():
                if not (page.is_file() and _LINE_ANCHOR.match(anchor)):
                    problems.append(f"{where}: #{anchor} in a file that is not Markdown")
                continue
            if page not in cache:
                cache[page] = anchors(page)
            if unquote(anchor) not in cache[page]:
                problems.append(f"{where}: no heading #{anchor} in {page.relative_to(root)}")
    return problems, checked


# --- the repository's docs -----------------------------------------------------------------------------
def test_every_relative_link_and_anchor_in_the_docs_resolves():
    files = doc_files()
    assert REPO / "docs" / "index.md" in files and len(files) >= 10, files
    problems, checked = check_links(files, REPO)
    assert not problems, "broken links:\n" + "\n".join(problems)
    assert checked >= 50, f"only {checked} relative links found: the scan is broken"


def test_readme_stays_a_door():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    n = len(text.splitlines())
    assert n < MAX_README_LINES, f"README.md has {n} lines (limit {MAX_README_LINES}): move details to docs/"
    quick = text[text.index("## Quick start"):text.index("## Does it work?")]
    code = re.findall(r"```bash\n(.*?)```", quick, re.S)[0]
    assert re.search(r"^make demo\b", code, re.M) and re.search(r"^make test\b", code, re.M), code
    evidence = text[text.index("## Does it work?"):text.index("## What you can do")]
    for results in ("experiments/results/repro-cpu/", "experiments/results/glue-cpu/"):   # the evidence, linked
        assert f"]({results}" in evidence, results


def test_every_docs_page_is_listed_and_reachable_from_the_readme():
    pages = {p.name for p in (REPO / "docs").glob("*.md")} - {"index.md"}
    assert pages, "no docs pages"
    index = {Path(t.partition("#")[0]).name for _, t in links((REPO / "docs" / "index.md").read_text())}
    readme = {t.partition("#")[0] for _, t in links((REPO / "README.md").read_text())}
    assert pages <= index, f"docs/index.md does not list {sorted(pages - index)}"
    assert "docs/index.md" in readme
    missing = sorted({f"docs/{p}" for p in pages} - readme)
    assert not missing, f"README.md does not link {missing}"


# --- the checker itself --------------------------------------------------------------------------------
@pytest.mark.parametrize("heading, want", [
    ("Does it work? Measured on a CPU", "does-it-work-measured-on-a-cpu"),
    ("Back-translation (+BT)", "back-translation-bt"),
    ("Reliability: what a sweep survives", "reliability-what-a-sweep-survives"),
    ("`mixkd select` and the [budget](x.md)", "mixkd-select-and-the-budget"),
    ("snake_case stays", "snake_case-stays"),
    ("Zeit für Ärger", "zeit-für-ärger"),
])
def test_slug_follows_github(heading, want):
    assert slug(heading) == want


def test_the_checker_reports_broken_links_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# Page A\n\n## Real heading\n\n## Real heading\n\n```\n# not a heading\n```\n")
    (tmp_path / "data.csv").write_text("x\n")
    (tmp_path / "README.md").write_text(
        "# Top\n\n"
        "[ok](docs/a.md) [ok anchor](docs/a.md#real-heading) [second](docs/a.md#real-heading-1) [self](#top)\n"
        "[ok folder](docs/) [ok csv](data.csv) [web](https://example.com/missing.md) [mail](mailto:a@b.c)\n"
        "`[in code](docs/nowhere.md)` and\n\n```md\n[in a fence](docs/nowhere.md)\n```\n\n"
        "[gone](docs/missing.md)\n"
        "[bad anchor](docs/a.md#no-such-heading)\n"
        "[code heading](docs/a.md#not-a-heading)\n"
        "[bad self](#nope)\n"
        "[outside](../elsewhere.md)\n"
        "[csv anchor](data.csv#row)\n"
        "[ref]: docs/also-missing.md\n")
    problems, checked = check_links(doc_files(tmp_path), tmp_path)
    got = {(p.split(":")[1], p.split(": ")[1]) for p in problems}
    assert got == {("11", "docs/missing.md"), ("12", "docs/a.md#no-such-heading"), ("13", "docs/a.md#not-a-heading"),
                   ("14", "#nope"), ("15", "../elsewhere.md"), ("16", "data.csv#row"),
                   ("17", "docs/also-missing.md")}, problems
    assert checked == 13
    assert any("no such file" in p for p in problems) and any("no heading #no-such-heading" in p for p in problems)
