"""Every ```python block in README.md runs as written, in order, sharing one namespace (a tour
builds on its earlier blocks)."""

import pathlib
import re

import pytest

pytestmark = pytest.mark.slow  # runs every README block

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
_namespace: dict = {"__name__": "readme"}


def _heading(index: int) -> str:
    """The README section a block sits in, for the test id."""
    text = README.read_text(encoding="utf-8")
    start = [m.start() for m in re.finditer(r"^```python\n", text, re.M)][index]
    heads = re.findall(r"^#+ (.*)$", text[:start], re.M)
    return heads[-1] if heads else "top"


@pytest.mark.parametrize("index", range(len(BLOCKS)),
                         ids=[f"{i}-{_heading(i)[:30]}" for i in range(len(BLOCKS))])
def test_readme_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), _namespace)


def test_readme_has_python_blocks():
    assert BLOCKS, "README.md has no ```python blocks"
