"""Every ```python block of README.md runs as written, on its own, in an empty folder.

A reader copies one block, not the page: so each block is written to a fresh
empty directory and run there with this interpreter in a child process, and
must exit with status 0. Blocks that are not meant to run (signatures, shell
commands) are fenced as something other than python.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

# An opening fence of exactly ```python (after any indent), up to the closing fence.
_BLOCK = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                    re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[str]:
    """The code of every ```python fenced block of ``text``, in order, indent removed."""
    blocks = []
    for m in _BLOCK.finditer(text):
        indent = m.group("indent")
        lines = m.group("body").splitlines()
        blocks.append("\n".join(line[len(indent):] if line.startswith(indent) else line
                                for line in lines) + "\n")
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def _first_line(code: str) -> str:
    return next((line.strip() for line in code.splitlines() if line.strip()), "(empty)")[:60]


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


def test_the_extractor_finds_only_python_blocks():
    text = (
        "a\n```python\nx = 1\n```\n```sh\nls\n```\n"
        "  ```python\n  y = 2\n  ```\n```text\nz\n```\n"
    )
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]


@pytest.mark.parametrize(
    "index", range(len(BLOCKS)), ids=[f"{i}:{_first_line(b)}" for i, b in enumerate(BLOCKS)]
)
def test_readme_block_runs_on_its_own(index, tmp_path):
    code = BLOCKS[index]
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(code, encoding="utf-8")
    r = subprocess.run(
        [sys.executable, str(script.name)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, f"README block {index} failed:\n{code}\n--- stderr:\n{r.stderr}"
