"""The CuPy path against the NumPy path, on the same float64 inputs.

Every functional op (including each of the convolution's fast paths), every
block type, one small model of each builder, the float32 dtype, the
optimizers, a checkpoint and a short Trainer run: on the GPU they must give
the NumPy numbers. Marked ``gpu``: skipped cleanly where CuPy or a GPU is
missing (see conftest.py); run them with ``python -m pytest -m gpu`` on a
GPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest
from util import host, rel

from minires import backend, nn
from minires import functional as F
from minires.models import (
    plain_cifar,
    preact_resnet_cifar,
    resnet18,
    resnet_cifar,
    wide_resnet_cifar,
)
from minires.nn import blocks

pytestmark = pytest.mark.gpu


@pytest.fixture
def on_cupy():
    """Make CuPy the active backend for one test (NumPy again afterwards)."""
    backend.use("cupy")
    try:
        yield
    finally:
        backend.use("numpy")


def _ops(rng):
    x = rng.standard_normal((2, 3, 7, 6)) + 0.05
    x16 = rng.standard_normal((3, 4, 9, 8))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    logits, y = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    return {
        "conv stride 2": (F.conv2d_forward, F.conv2d_backward, (x, w, b),
                          {"stride": 2, "padding": 1}),
        # stride 1, padding below the kernel, dout no wider than x: the
        # shifted grid forward and backward by convolution
        "conv shifted grid": (F.conv2d_forward, F.conv2d_backward,
                              (x16, rng.standard_normal((4, 4, 3, 3)), None),
                              {"stride": 1, "padding": 1}),
        # stride 1 with more output than input channels (the stem): col2im
        "conv stem": (F.conv2d_forward, F.conv2d_backward,
                      (x, rng.standard_normal((8, 3, 3, 3)), None), {"padding": 1}),
        # padding as large as the kernel: im2col chunks
        "conv wide padding": (F.conv2d_forward, F.conv2d_backward,
                              (x, rng.standard_normal((4, 3, 2, 2)), b), {"padding": 2}),
        "linear": (F.linear_forward, F.linear_backward,
                   (rng.standard_normal((4, 5)), rng.standard_normal((3, 5)),
                    rng.standard_normal(3)), {}),
        "flatten": (F.flatten_forward, F.flatten_backward, (x,), {}),
        "relu": (F.relu_forward, F.relu_backward, (x,), {}),
        "add": (F.add_forward, F.add_backward, (x, rng.standard_normal(x.shape)), {}),
        "bn_train": (F.batchnorm_forward, F.batchnorm_backward, (x, gamma, beta, rm, rv),
                     {"training": True}),
        "bn_eval": (F.batchnorm_forward, F.batchnorm_backward, (x, gamma, beta, rm, rv),
                    {"training": False}),
        "bn_2d": (F.batchnorm_forward, F.batchnorm_backward,
                  (rng.standard_normal((6, 3)), gamma, beta, rm, rv), {"training": True}),
        "maxpool": (F.maxpool2d_forward, F.maxpool2d_backward, (x,),
                    {"kernel_size": 3, "stride": 2, "padding": 1}),
        "avgpool": (F.avgpool2d_forward, F.avgpool2d_backward, (x,), {"kernel_size": 2}),
        "gap": (F.global_avgpool2d_forward, F.global_avgpool2d_backward, (x,), {}),
        "cross-entropy": (F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward,
                          (logits, y), {"label_smoothing": 0.1}),
    }


OPS = list(_ops(np.random.default_rng(0)))


def _as_tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


@pytest.mark.parametrize("name", OPS)
def test_op_on_cupy_matches_numpy(name):
    import cupy

    forward, backward, args, kwargs = _ops(np.random.default_rng(0))[name]
    out, cache = forward(*args, **kwargs)
    dout = np.random.default_rng(1).standard_normal(np.shape(out)) if np.ndim(out) else 1.0
    grads = _as_tuple(backward(dout, cache))
    gargs = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    gout, gcache = forward(*gargs, **kwargs)
    assert isinstance(gout, cupy.ndarray)
    gdout = cupy.asarray(dout) if isinstance(dout, np.ndarray) else dout
    ggrads = _as_tuple(backward(gdout, gcache))
    assert rel(host(gout), out) < 1e-12
    assert len(ggrads) == len(grads)
    for g, gg in zip(grads, ggrads, strict=True):
        if g is None:
            assert gg is None
        else:
            assert isinstance(gg, cupy.ndarray)
            assert rel(host(gg), g) < 1e-10


def test_float32_stays_float32_on_cupy(on_cupy):
    import cupy

    nn.init.manual_seed(0)
    model = resnet_cifar(8, widths=(4, 8, 8))          # float32 by default
    x = cupy.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8)), dtype="float32")
    out = model(x)
    dx = model.backward(cupy.ones_like(out))
    assert out.dtype == cupy.float32 and dx.dtype == cupy.float32
    assert all(p.grad.dtype == cupy.float32 for p in model.parameters())


BLOCKS = {
    "basic A": lambda: blocks.BasicBlock(4, 8, stride=2, shortcut="A", dtype="float64"),
    "basic B": lambda: blocks.BasicBlock(4, 8, stride=2, shortcut="B", dtype="float64"),
    "basic C": lambda: blocks.BasicBlock(4, 4, stride=1, shortcut="C", dtype="float64"),
    "plain": lambda: blocks.PlainBlock(4, 8, stride=2, dtype="float64"),
    "bottleneck": lambda: blocks.Bottleneck(8, 2, stride=2, dtype="float64"),
    "preact": lambda: blocks.PreActBlock(4, 8, stride=2, dtype="float64"),
    "preact bottleneck": lambda: blocks.PreActBottleneck(8, 2, stride=2, dtype="float64"),
}

MODELS = {
    "resnet_cifar": lambda: resnet_cifar(8, widths=(4, 8, 8), dtype="float64"),
    "plain_cifar": lambda: plain_cifar(8, dtype="float64"),
    "preact_resnet_cifar": lambda: preact_resnet_cifar(11, dtype="float64"),
    "wide_resnet_cifar": lambda: wide_resnet_cifar(10, 1, dtype="float64"),
    "resnet18": lambda: resnet18(num_classes=5, stem="cifar", dtype="float64"),
}


def _grads_on(make, x, dout_seed, device):
    """Forward and backward of a fresh module (weights from init seed 0) on
    ``device``; returns host copies of out, dx and every parameter gradient."""
    nn.init.manual_seed(0)
    module = make()
    if device == "cupy":
        backend.use("cupy")
    try:
        module.to(device=device)
        module.train()
        out = module(backend.asarray(x))
        dout = np.random.default_rng(dout_seed).standard_normal(out.shape)
        dx = module.backward(backend.asarray(dout))
        return host(out), host(dx), {n: host(p.grad) for n, p in module.named_parameters()}
    finally:
        backend.use("numpy")


@pytest.mark.parametrize("name", list(BLOCKS) + list(MODELS))
def test_block_and_model_on_cupy_match_numpy(name):
    make = {**BLOCKS, **MODELS}[name]
    channels = 8 if "bottleneck" in name else 4 if name in BLOCKS else 3
    x = np.random.default_rng(0).standard_normal((3, channels, 8, 8))
    out, dx, grads = _grads_on(make, x, 1, "numpy")
    gout, gdx, ggrads = _grads_on(make, x, 1, "cupy")
    assert rel(gout, out) < 1e-10 and rel(gdx, dx) < 1e-9
    assert ggrads.keys() == grads.keys() and grads
    for key, g in grads.items():
        assert rel(ggrads[key], g) < 1e-9, key


@pytest.mark.parametrize("make", ["sgd", "adam"])
def test_optimizer_steps_on_cupy_match_numpy(make):
    from minires.optim import SGD, Adam

    def run(device):
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 10, 4)
        nn.init.manual_seed(0)
        model = resnet_cifar(8, widths=(4, 8, 8), dtype="float64")
        if device == "cupy":
            backend.use("cupy")
        try:
            model.to(device=device)
            opt = (SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4,
                       nesterov=True) if make == "sgd"
                   else Adam(model.parameters(), lr=1e-3, weight_decay=1e-4))
            crit = nn.CrossEntropyLoss()
            for _ in range(3):
                crit(model(backend.asarray(x)), backend.asarray(y))
                model.backward(crit.backward())
                opt.step()
                model.zero_grad()
            return {k: host(v) for k, v in model.state_dict().items()}
        finally:
            backend.use("numpy")

    want, got = run("numpy"), run("cupy")
    for key, v in want.items():
        assert rel(got[key], v) < 1e-9 if v.dtype.kind == "f" else (got[key] == v).all(), key


def test_checkpoint_of_a_cupy_model_round_trips(tmp_path, on_cupy):
    import cupy

    from minires.checkpoint import load_checkpoint, save_checkpoint

    nn.init.manual_seed(0)
    model = resnet_cifar(8, widths=(4, 8, 8))
    save_checkpoint(tmp_path / "c.npz", model_state=model.state_dict(), epoch=3)
    saved = load_checkpoint(tmp_path / "c.npz")
    assert saved["epoch"] == 3
    twin = resnet_cifar(8, widths=(4, 8, 8))
    twin.load_state_dict(saved["model_state"])
    for (key, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert isinstance(b, cupy.ndarray) and (host(a) == host(b)).all(), key


def test_trainer_epoch_on_cupy(on_cupy):
    from minires.data import DataLoader
    from minires.optim import SGD
    from minires.train import Trainer

    rng = np.random.default_rng(0)
    images = rng.standard_normal((24, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 3, 24)
    nn.init.manual_seed(0)
    model = resnet_cifar(8, num_classes=3, widths=(4, 8, 8))
    trainer = Trainer(model, SGD(model.parameters(), lr=0.05, momentum=0.9),
                      DataLoader(images, labels, 8, shuffle=True),
                      DataLoader(images, labels, 8), progress=False, log=False)
    history = trainer.fit(2)
    assert len(history) == 2
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["test_acc"] <= 1 for r in history)


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
