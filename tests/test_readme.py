"""The README's Python tour runs as written (and its first lines give the two commands)."""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_tour_runs():
    text = README.read_text(encoding="utf-8")
    block = text.split("## Python API in five minutes", 1)[1].split("```python", 1)[1]
    block = block.split("```", 1)[0]
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)
    assert scope["res"].holds and scope["back"].holds and scope["run"].holds


def test_first_lines_give_the_two_commands():
    head = README.read_text(encoding="utf-8").split("## ", 1)[0]
    assert 'pip install -e . && nfbound bound' in head
    assert 'pip install -e ".[test]" && pytest' in head
