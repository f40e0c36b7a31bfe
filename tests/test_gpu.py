"""The CuPy path: every op, a whole block and a training step on the GPU give
the NumPy numbers. Marked ``gpu``: skipped cleanly where CuPy or a GPU is
missing (see conftest.py), run with ``python -m pytest -m gpu`` on a GPU machine."""

from __future__ import annotations

import numpy as np
import pytest
from util import host, rel

from minires import backend, nn
from minires import functional as F
from minires.models import resnet_cifar

pytestmark = pytest.mark.gpu


def _ops(rng):
    x = rng.standard_normal((2, 3, 7, 6)) + 0.05
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    return {
        "conv": (F.conv2d_forward, F.conv2d_backward, (x, w, b), {"stride": 2, "padding": 1}),
        "linear": (F.linear_forward, F.linear_backward,
                   (rng.standard_normal((4, 5)), rng.standard_normal((3, 5)),
                    rng.standard_normal(3)), {}),
        "relu": (F.relu_forward, F.relu_backward, (x,), {}),
        "bn_train": (F.batchnorm_forward, F.batchnorm_backward, (x, gamma, beta, rm, rv),
                     {"training": True}),
        "bn_eval": (F.batchnorm_forward, F.batchnorm_backward, (x, gamma, beta, rm, rv),
                    {"training": False}),
        "maxpool": (F.maxpool2d_forward, F.maxpool2d_backward, (x,),
                    {"kernel_size": 3, "stride": 2, "padding": 1}),
        "avgpool": (F.avgpool2d_forward, F.avgpool2d_backward, (x,), {"kernel_size": 2}),
        "gap": (F.global_avgpool2d_forward, F.global_avgpool2d_backward, (x,), {}),
    }


@pytest.mark.parametrize("name", ["conv", "linear", "relu", "bn_train", "bn_eval", "maxpool",
                                  "avgpool", "gap"])
def test_op_on_cupy_matches_numpy(name):
    import cupy

    forward, backward, args, kwargs = _ops(np.random.default_rng(0))[name]
    out, cache = forward(*args, **kwargs)
    dout = np.random.default_rng(1).standard_normal(out.shape)
    grads = backward(dout, cache)
    gargs = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    gout, gcache = forward(*gargs, **kwargs)
    assert isinstance(gout, cupy.ndarray)
    ggrads = backward(cupy.asarray(dout), gcache)
    assert rel(gout, out) < 1e-12
    grads = grads if isinstance(grads, tuple) else (grads,)
    ggrads = ggrads if isinstance(ggrads, tuple) else (ggrads,)
    for g, gg in zip(grads, ggrads, strict=True):
        if g is not None:
            assert rel(gg, g) < 1e-10


def test_resnet_training_step_on_cupy_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 8, 8))
    y = rng.integers(0, 10, 4)
    nn.init.manual_seed(0)
    ref = resnet_cifar(8).to(dtype="float64")
    crit = nn.CrossEntropyLoss()
    crit(ref(x), y)
    ref.backward(crit.backward())
    try:
        backend.use("cupy")
        model = resnet_cifar(8).to(dtype="float64")
        model.load_state_dict(ref.state_dict())
        crit(model(backend.asarray(x)), backend.asarray(y))
        model.backward(crit.backward())
    finally:
        backend.use("numpy")
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert rel(host(p.grad), q.grad) < 1e-9, name
