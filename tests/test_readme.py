"""Every fenced ``python`` block of README.md runs as written.

The blocks of one ``##`` section run in order in one namespace, so a block may build on the
ones before it in its section (and on nothing else); each section starts from a fresh
namespace, in a temporary working directory (blocks that write files write there), from seed 0
(``conftest.py``). A README edit that breaks a snippet fails here, naming the section and the
block's first line in README.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

_FENCE = re.compile(r"^(`{3,})(\S*)\s*$")


class Block(NamedTuple):
    """One fenced block: its section heading, first line number in README.md, language, code."""

    section: str
    line: int
    lang: str
    code: str


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block of ``text`` with the ``##`` section it sits in (CommonMark fences)."""
    blocks: list[Block] = []
    section = ""
    fence: str | None = None
    lang, start, body = "", 0, []  # type: ignore[var-annotated]
    for number, line in enumerate(text.splitlines(), start=1):
        if fence is None:
            m = _FENCE.match(line)
            if m:
                fence, lang, start, body = m.group(1), m.group(2).lower(), number + 1, []
            elif line.startswith("## "):
                section = line[3:].strip()
            continue
        if line.strip() == fence:
            blocks.append(Block(section, start, lang, "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    if fence is not None:
        raise ValueError(f"README.md: the fence opened before line {start} is never closed")
    return blocks


def python_sections(text: str) -> dict[str, list[Block]]:
    """The ``python`` blocks grouped by section, sections and blocks in README order."""
    out: dict[str, list[Block]] = {}
    for b in readme_blocks(text):
        if b.lang == "python":
            out.setdefault(b.section, []).append(b)
    return out


SECTIONS = python_sections(README.read_text(encoding="utf-8"))


def test_the_extractor_finds_fences_sections_and_languages():
    text = ("# t\n```python\na = 1\n```\n## One\n```python\nb = a\n```\n```bash\nls\n```\n"
            "## Two\n````python\nc = '```'\n````\n```\nplain\n```\n")
    blocks = readme_blocks(text)
    assert [(b.section, b.line, b.lang) for b in blocks] == [
        ("", 3, "python"), ("One", 7, "python"), ("One", 10, "bash"), ("Two", 14, "python"),
        ("Two", 17, "")]
    assert blocks[3].code == "c = '```'\n"
    assert list(python_sections(text)) == ["", "One", "Two"]
    with pytest.raises(ValueError, match="never closed"):
        readme_blocks("```python\nx = 1\n")


def test_readme_has_python_blocks_in_the_sections_we_document():
    # guards the extractor against a silent zero: these sections carry runnable examples
    for name in ("A short example", "More conjugate models", "Can I trust this fit?",
                 "Variational autoencoder"):
        assert name in SECTIONS, name


@pytest.mark.parametrize("section", list(SECTIONS))
def test_readme_section_runs(section, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"readme_{section}"}
    for block in SECTIONS[section]:
        code = compile(block.code, f"README.md, line {block.line} ({section})", "exec")
        exec(code, namespace)  # noqa: S102 - the README's own examples are the code under test


# ----------------------------------------------------------------------------- the layout table
_ROW = re.compile(r"^((?:│   |    )*)(├── |└── )?(\S+)")


def layout_paths(block: str) -> set[str]:
    """The path of every row of the Layout section's tree drawing (a folder's ends in ``/``)."""
    paths: set[str] = set()
    stack: list[str] = []
    for line in block.splitlines():
        m = _ROW.match(line)
        if m is None:
            continue
        depth = len(m.group(1)) // 4 + (m.group(2) is not None)
        stack = [*stack[:depth], m.group(3)]
        paths.add("".join(stack))
    return paths


def test_layout_paths_follow_the_tree_drawing():
    drawing = "a/   x\n├── b.py   y\n├── c/   z\n│   └── d.py  w\n└── e.py\nf.txt  v\n"
    assert layout_paths(drawing) == {"a/", "a/b.py", "a/c/", "a/c/d.py", "a/e.py", "f.txt"}


def test_the_layout_table_is_the_tree_in_full():
    # Every tracked file of the library, the models, the benchmarks, the tools, the top of
    # tests/ and the repository root has a row, and every row names a path that exists.
    # Sub-package __init__.py files and committed results folders' contents are left out.
    import subprocess

    root = README.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout: nothing lists the tracked files")
    (block,) = [b.code for b in readme_blocks(README.read_text(encoding="utf-8"))
                if b.section == "Layout" and b.lang == "text"]
    rows = layout_paths(block)
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.split()
    wanted = [f for f in tracked
              if (f.split("/")[0] in ("pyro_vi", "models", "benchmarks", "tools") or "/" not in f
                  or f.startswith(".ci/") or (f.startswith("tests/") and f.count("/") == 1))
              and not (f.endswith("/__init__.py") and f != "pyro_vi/__init__.py")
              and "/results/" not in f]
    assert [f for f in wanted if f not in rows] == []
    # the test folders are one row ("factors/, cavi/, ... mirror ..."): each is named in it
    folders = {f.split("/")[1] + "/" for f in tracked if f.startswith("tests/") and f.count("/") >= 2}
    (mirror,) = [line for line in block.splitlines() if "mirror" in line]
    assert sorted(d for d in folders if d not in mirror.split("   ")[0].replace(",", " ").split()) == []
    assert sorted(p for p in rows if "," not in p and not (root / p).exists()) == []
