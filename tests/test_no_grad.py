"""``minires.no_grad()``: forwards that keep no caches (issue 14, item 20)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import minires
from minires import nn
from minires.data import DataLoader
from minires.models import get_model
from minires.optim import SGD
from minires.train import Trainer, evaluate


def caches(model):
    return [name for name, m in model.named_modules() if m.__dict__.get("_cache") is not None]


def test_no_grad_keeps_no_cache_and_gives_the_same_output(rng):
    nn.init.manual_seed(0)
    model = get_model("resnet8", in_channels=1).eval()
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    ref = model(x)
    assert caches(model)                           # a normal forward keeps them
    for m in model.modules():
        m._cache = None
    with minires.no_grad():
        assert not minires.is_grad_enabled()
        out = model(x)
    assert minires.is_grad_enabled()
    assert np.array_equal(out, ref)
    assert caches(model) == []
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(np.ones_like(out))
    model(x)                                       # outside: a backward works again
    model.backward(np.ones_like(out))


def test_no_grad_nests_restores_after_an_error_and_decorates():
    with minires.no_grad():
        with minires.no_grad():
            assert not minires.is_grad_enabled()
        assert not minires.is_grad_enabled()
    assert minires.is_grad_enabled()
    with pytest.raises(KeyError), minires.no_grad():
        {}["missing"]
    assert minires.is_grad_enabled()

    @minires.no_grad()
    def infer():
        return minires.is_grad_enabled()

    assert infer() is False and minires.is_grad_enabled()


class Probe(nn.Module):
    """Records whether each forward ran with caches enabled."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(minires.is_grad_enabled())
        self._cache = True
        return x

    def backward(self, dout):
        self._take_cache(dout)
        return dout


def test_evaluate_and_the_trainers_test_pass_run_under_no_grad(rng):
    probe = Probe()
    model = nn.Sequential(probe, nn.Flatten(), nn.Linear(4, 3))
    x = rng.standard_normal((12, 1, 2, 2)).astype(np.float32)
    y = np.arange(12) % 3
    evaluate(model, DataLoader(x, y, 4))
    assert probe.seen == [False] * 3
    probe.seen.clear()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1), DataLoader(x, y, 6),
                      DataLoader(x, y, 12), progress=False, log=False)
    trainer.fit(1)
    assert probe.seen == [True, True, False]       # two training batches, one test batch
    assert caches(model) == []


def test_no_grad_evaluation_takes_far_less_memory(rng):
    nn.init.manual_seed(0)
    model = get_model("resnet20").eval()
    batches = [rng.standard_normal((32, 3, 16, 16)).astype(np.float32) for _ in range(2)]

    def peak(ctx):
        for m in model.modules():
            m._cache = None
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        with ctx:
            for x in batches:
                model(x)
        top = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        return top

    class Nothing:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    kept, dropped = peak(Nothing()), peak(minires.no_grad())
    assert dropped < 0.5 * kept, (dropped, kept)
