"""Every file in chapters/solutions/ passes every checker it runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from minires.exercises import CheckResult

SOLUTIONS = sorted((Path(__file__).resolve().parents[1] / "chapters" / "solutions").glob("*.py"))


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"solution_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_solutions():
    assert SOLUTIONS, "chapters/solutions/ holds no solution files"


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solution_passes_its_checkers(path):
    results = load(path).checks()
    assert results, f"{path.name}: checks() ran no checker"
    for result in results:
        assert isinstance(result, CheckResult), type(result)
        assert result.implemented, str(result)
        assert result.passed, str(result)
