"""Every relative link and anchor in README.md, docs/ and the folders' READMEs resolves.

Anchors follow GitHub's rule: a heading lowercased, punctuation other than ``-`` and ``_``
dropped, spaces as hyphens, repeats numbered ``-1``, ``-2``; ``<a id=...>`` counts too. Code
blocks are skipped; web links are not fetched (the machines that run the tests are offline).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"```.*?```", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading: str) -> str:
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text, seen, out = FENCE.sub("", path.read_text("utf-8")), {}, set()
    for line in text.splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            s = slug(heading.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out | set(re.findall(r"<a (?:name|id)=\"([^\"]+)\"", text))


def broken_links(path: Path) -> list[str]:
    """The links of markdown file ``path`` whose file or anchor does not exist."""
    bad = []
    for target in LINK.findall(FENCE.sub("", path.read_text("utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no heading with that anchor in {dest.name})")
    return bad


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/README.md")),
            *sorted(ROOT.glob("*/*/README.md"))]


def test_every_link_and_anchor_resolves():
    bad = {str(p.relative_to(ROOT)): b for p in pages() if (b := broken_links(p))}
    assert not bad, f"broken links: {bad}"


def test_the_checker_finds_a_broken_anchor_and_file(tmp_path):
    (tmp_path / "other.md").write_text("# Memory growth: does it hold?\n## Notes\n## Notes\n", "utf-8")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#memory-growth-does-it-hold) [b](other.md#notes-1) [c](#top)\n"
                    "[d](other.md#nowhere) [e](missing.md) [f](https://example.org/#x)\n# Top\n"
                    "```\n[g](ignored.md)\n```\n", "utf-8")
    assert broken_links(page) == ["other.md#nowhere (no heading with that anchor in other.md)",
                                  "missing.md (no such file)"]
