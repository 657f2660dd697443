"""The README stays a front door, and the documentation behind it holds together.

README.md is at most 250 lines; every relative link of README.md and docs/*.md names a file
that exists (and a heading of it, when it has an anchor); every docs/*.md can be reached from
README.md by following links; nothing tells readers to install from a package index where the
project is not published. test_readme.py runs the documents' code blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 250

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"(`+).*?\1")
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> Iterator[str]:
    """The lines outside fenced code blocks."""
    fence: str | None = None
    for line in text.splitlines():
        opening = _FENCE.match(line)
        if fence is None and opening:
            fence = opening[1]
        elif fence is not None and line.strip().startswith(fence) and not line.strip(fence[0]):
            fence = None
        elif fence is None:
            yield line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return "".join(c for c in text.lower() if c.isalnum() or c in " -_").replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose(path.read_text()):
        heading = _HEADING.match(line)
        if not heading:
            continue
        base = slug(heading[2])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> Iterator[str]:
    for line in prose(path.read_text()):
        yield from _LINK.findall(_CODE_SPAN.sub("", line))


def relative(target: str) -> bool:
    return not re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)


def resolve(document: Path, target: str) -> tuple[Path, str]:
    file, _, anchor = target.partition("#")
    return ((document.parent / file).resolve() if file else document), anchor


def broken_links(document: Path) -> list[str]:
    broken = []
    for target in filter(relative, links(document)):
        path, anchor = resolve(document, target)
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.name}")
    return broken


def test_the_readme_is_a_front_door() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_the_readmes_set_up_commands_are_the_ones_ci_runs() -> None:
    readme = README.read_text()
    for command in (
        "pip install . && sessionkeeper run",
        "pip install -e '.[test]' && python -m pytest",
    ):
        assert f"```sh\n{command}\n```" in readme, command
    assert (
        "\npip install -e '.[test]' && python -m pytest || status=$?\n"
        in (ROOT / ".ci" / "run").read_text()
    )


@pytest.mark.parametrize("document", DOCUMENTS, ids=[d.name for d in DOCUMENTS])
def test_every_relative_link_resolves(document: Path) -> None:
    assert broken_links(document) == []


def test_every_document_is_reachable_from_the_readme() -> None:
    reached, pending = {README}, [README]
    while pending:
        document = pending.pop()
        for target in filter(relative, links(document)):
            path, _ = resolve(document, target)
            if path.suffix == ".md" and path.exists() and path not in reached:
                reached.add(path)
                pending.append(path)
    unreached = [str(d.relative_to(ROOT)) for d in DOCUMENTS if d not in reached]
    assert unreached == [], "link these from README.md or docs/README.md"


def test_nothing_is_installed_from_a_package_index() -> None:
    # The project is not published: extras come from a checkout or a built wheel.
    for document in DOCUMENTS:
        assert not re.search(r"pip install [^\n`]*['\"]?sessionkeeper\[", document.read_text()), (
            document
        )


# -- the checks themselves can fail ------------------------------------------------------------

SAMPLE = """# Title

## The `begin_turn` call, again!

See [here](#the-begin_turn-call-again), [there](#title), [gone](#nowhere).

```toml
# not a heading
x = "[not a link](missing.md)"
```

Inline `[no link](missing.md)`; [a file](missing.md); [web](https://example.com/x.md).

## Title
"""


def test_anchors_links_and_broken_ones_are_found(tmp_path: Path) -> None:
    sample = tmp_path / "sample.md"
    sample.write_text(SAMPLE)
    assert anchors(sample) == {"title", "the-begin_turn-call-again", "title-1"}
    assert list(links(sample)) == [
        "#the-begin_turn-call-again",
        "#title",
        "#nowhere",
        "missing.md",
        "https://example.com/x.md",
    ]
    assert broken_links(sample) == [
        "#nowhere: no heading #nowhere in sample.md",
        "missing.md: no such file",
    ]
