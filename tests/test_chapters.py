"""The chapter notebooks are committed clean and follow the course's shape.

nbmake executes each of them (see pyproject.toml); these tests check what
execution cannot: no committed outputs, the version printed at the top, the
summary and the exercises, and that every chapter is listed where students
and teachers look for it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]-*.ipynb"))
IDS = [p.stem for p in CHAPTERS]


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


COURSE = 12  # chapters 00-11: from finite differences to fine-tuning and beyond


def test_the_whole_course_is_there_numbered_in_order():
    numbers = [int(p.name[:2]) for p in CHAPTERS]
    assert numbers == list(range(COURSE)), f"expected chapters 00 to {COURSE - 1:02d}, got {IDS}"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_committed_without_outputs(path):
    for i, cell in enumerate(cells(path)):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name}: cell {i} has outputs committed"
            assert cell.get("execution_count") is None, \
                f"{path.name}: cell {i} has an execution count committed"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_kernel_is_python3(path):
    meta = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    assert meta.get("kernelspec", {}).get("name") == "python3", path.name


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_prints_the_version_at_the_top(path):
    code = [source(c) for c in cells(path) if c["cell_type"] == "code"][:3]
    assert any("minires.__version__" in s for s in code), \
        f"{path.name}: one of the first three code cells must print minires.__version__"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_has_goals_summary_and_exercises(path):
    md = "\n".join(source(c) for c in cells(path) if c["cell_type"] == "markdown")
    headings = [h.strip().lower() for h in re.findall(r"^#+\s*(.+)$", md, flags=re.M)]
    assert any("summary" in h for h in headings), f"{path.name}: no Summary section"
    assert any(h.startswith("exercise") for h in headings), f"{path.name}: no Exercises"
    if path.name[:2] != "00":
        count = sum(1 for h in headings if re.match(r"exercise\s+\d", h))
        assert count >= 2, f"{path.name}: {count} numbered exercises, at least 2 expected"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_no_solutions_in_student_notebooks(path):
    text = "\n".join(source(c) for c in cells(path))
    assert "import solutions" not in text and "from solutions" not in text, \
        f"{path.name}: a student notebook must not import the solutions"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_listed_in_course_plan_and_readme(path):
    plan = (ROOT / "chapters" / "README.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert path.name in plan, f"{path.name} is missing from chapters/README.md"
    assert path.name in readme, f"{path.name} is missing from README.md's chapter list"
