"""Shared test setup.

- Tests marked ``gpu`` run only where CuPy and a GPU are usable.
- With ``MINIRES_CI=1`` (set by ``.ci/run``) any skipped test other than a
  ``gpu`` one fails the session: in CI the PyTorch cross-checks must run.
- CuPy is covered by ``tests/test_gpu.py`` (``python -m pytest -m gpu``):
  every op and conv path, every block, a model of each builder, float32,
  the optimizers, checkpoints, a Trainer run with exact resume and the
  command line, on the GPU against NumPy.
- The engine and the textbook: the op, layer, block and model tests
  (``BOTH_MODES`` below) run twice, ``[fast]`` with the engine on and
  ``[reference]`` with it off (``minires.fast.enabled(False)``, what
  ``MINIRES_FAST=0`` does), so every op, block and model is checked on the
  code the chapters teach as well as on the code that runs by default. The
  other tests run as the environment says (``MINIRES_FAST=0 python -m
  pytest`` runs them on the reference code; ``tests/test_fast_paths.py``
  switches the engine on where it tests it).
- ``MINIRES_BACKEND=cupy python -m pytest`` does not run the suite on the
  GPU. The variable decides where minires *creates* arrays (parameters,
  data-loader batches, ``backend.asarray``), not the NumPy arrays most
  tests build themselves: the op tests still compute on the CPU; tests that
  go through minires end to end (Trainer, command line, data loaders) run
  on the GPU and pass; and tests that hand NumPy arrays to a module or
  treat its parameters as NumPy arrays fail, its parameters being CuPy
  arrays ("Multiple namespaces for array inputs" and the like; on an H100:
  519 passed, 82 such failures in test_blocks, test_models, test_nn,
  test_finetune and test_fast_paths).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "minires",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("minires")


def _gpu_usable() -> bool:
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _gpu_usable():
        return
    skip = pytest.mark.skip(reason="no usable GPU (CuPy not installed or no device)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


_unexpected_skips: list[str] = []
_chapter_times: dict[str, float] = {}


def pytest_runtest_logreport(report):
    if report.skipped and os.environ.get("MINIRES_CI") == "1":
        if "gpu" not in report.keywords:
            _unexpected_skips.append(report.nodeid)
    if report.when == "call" and report.nodeid.endswith(".ipynb"):
        _chapter_times[report.nodeid] = report.duration


def pytest_terminal_summary(terminalreporter):
    """Each chapter's run time (the budget is 3 minutes on 2 cores)."""
    if _chapter_times:
        terminalreporter.write_sep("-", "chapter run times")
        for nodeid, seconds in sorted(_chapter_times.items()):
            terminalreporter.write_line(f"{seconds:7.1f} s  {nodeid}")


def pytest_sessionfinish(session, exitstatus):
    if _unexpected_skips:
        print(f"\nMINIRES_CI: {len(_unexpected_skips)} test(s) were skipped but CI must run them:")
        for nodeid in _unexpected_skips:
            print(f"  {nodeid}")
        session.exitstatus = 1


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# The files whose every test runs with the engine on and off, except the
# tests marked ``no_ops``: they build models or compare names and shapes
# without running an op, so they run once.
BOTH_MODES = frozenset({
    "test_conv.py", "test_norm.py", "test_linear_activation.py", "test_pool.py",
    "test_loss.py", "test_nn.py", "test_blocks.py", "test_models.py",
})
MODES = ("fast", "reference")


def pytest_generate_tests(metafunc):
    if (metafunc.definition.path.name in BOTH_MODES
            and metafunc.definition.get_closest_marker("no_ops") is None):
        metafunc.parametrize("engine", MODES, indirect=True)


@pytest.fixture(autouse=True)
def engine(request):
    """``[fast]``: the engine on; ``[reference]``: off, for one test of a
    ``BOTH_MODES`` file; elsewhere the switch is left as the environment set
    it. Restored afterwards either way. Yields the mode's name."""
    import minires.fast

    mode = getattr(request, "param", None)
    before = minires.fast.is_enabled()
    if mode is not None:
        minires.fast.enable(mode == "fast")
    if request.node.get_closest_marker("no_ops") is not None:
        # every public op asks the switch first: a no_ops test must not get there
        def ran_an_op() -> bool:
            raise AssertionError("a test marked no_ops ran an op of minires.functional")

        request.getfixturevalue("monkeypatch").setattr(minires.fast, "is_enabled", ran_an_op)
    try:
        yield mode
    finally:
        minires.fast.enable(before)
