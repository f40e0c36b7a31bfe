"""The CuPy path against the NumPy path, on the same inputs.

On a GPU, in float64, CuPy must give NumPy's numbers for:

- every functional op, forward and backward, on the engine (``minires.fast``)
  and on the reference code, and each of the convolution's
  paths (the shifted grid and its backward by convolution, im2col chunks,
  col2im for strided convolutions and for the stem, several chunks of
  images), in the inputs' own memory layout, leaving ``dout`` untouched;
  ``im2col``/``col2im`` (engine and reference), the running-statistics update,
  ``softmax``/``log_softmax`` and the slow reference loops too;
- the grouped convolution (groups > 1, depthwise);
- every block type (train and eval mode: output, input gradient, every
  parameter gradient and the running statistics);
- one small model of each builder, the ImageNet layout included;
- SGD (momentum, Nesterov) and Adam steps, gradient clipping;
- a checkpoint written from the GPU (model and optimizer), read back on the
  GPU and on the CPU, and a finite-difference check of a block on the GPU;
- a short Trainer run (augmentation included) and its exact resume;
- ``minires --backend cupy train``, its checkpoint evaluated on both devices.

In float32, every op and a whole network keep float32 on the GPU and stay
within 1e-4 of float64.

Marked ``gpu``: skipped cleanly where CuPy or a GPU is missing (see
conftest.py); run them with ``python -m pytest -m gpu`` on a GPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest
from util import host, rel

import minires.fast
from minires import backend, nn
from minires import functional as F
from minires.fast import conv as fast_conv
from minires.models import (
    plain_cifar,
    preact_resnet_cifar,
    resnet18,
    resnet_cifar,
    resnext_cifar,
    wide_resnet_cifar,
)
from minires.nn import blocks
from minires.optim import SGD, Adam, AdamW, CosineAnnealingLR, clip_grad_norm_

pytestmark = pytest.mark.gpu


@pytest.fixture
def on_cupy():
    """Make CuPy the active backend for one test (NumPy again afterwards)."""
    backend.use("cupy")
    try:
        yield
    finally:
        backend.use("numpy")


def to_gpu(a):
    """A NumPy array on the GPU in the same memory layout (``cupy.asarray``
    of a non-contiguous array makes a C-order copy); anything else as is."""
    import cupy

    if not isinstance(a, np.ndarray):
        return a
    order = np.argsort(a.strides, kind="stable")[::-1]           # slowest axis first
    return cupy.asarray(np.ascontiguousarray(a.transpose(order))).transpose(np.argsort(order))


def cnhw(a: np.ndarray) -> np.ndarray:
    """The same values stored (C, N, H, W), as minires's conv outputs are."""
    return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)


def as_float32(a):
    return a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype == np.float64 else a


def _as_tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


# ---- every functional op ----------------------------------------------------------

def _ops(rng):
    """name -> (forward, backward, args, kwargs), float64 NumPy inputs."""
    x = rng.standard_normal((2, 3, 7, 6)) + 0.05
    x16 = rng.standard_normal((3, 4, 9, 8))
    x_stem = rng.standard_normal((2, 3, 8, 8))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    logits, y = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    conv_ = (F.conv2d_forward, F.conv2d_backward)
    return {
        "conv stride 2": (*conv_, (x, w, b), {"stride": 2, "padding": 1}),
        # stride 1, padding below the kernel, dout no wider than x: the
        # shifted grid, forward and backward by convolution
        "conv stride 1 (backward by convolution)":
            (*conv_, (x16, rng.standard_normal((4, 4, 3, 3)), None), {"padding": 1}),
        "conv stride 1 channel-major x":
            (*conv_, (cnhw(x16), rng.standard_normal((4, 4, 3, 3)), b), {"padding": 1}),
        "conv stride 1 no padding":
            (*conv_, (x16, rng.standard_normal((2, 4, 2, 3)), None), {}),
        # stride 1 with more output than input channels, 3 -> 16 like
        # ResNet-20's stem: the shifted grid forward, col2im backward
        "conv stem 3->16": (*conv_, (x_stem, rng.standard_normal((16, 3, 3, 3)), None),
                            {"padding": 1}),
        # padding as large as the kernel: im2col chunks
        "conv wide padding": (*conv_, (x, rng.standard_normal((4, 3, 2, 2)), b), {"padding": 2}),
        # the projection shortcut (option B) and the ImageNet stem
        "conv 1x1 stride 2": (*conv_, (x16, rng.standard_normal((8, 4, 1, 1)), None),
                              {"stride": 2}),
        "conv 7x7 stride 2": (*conv_, (x_stem, rng.standard_normal((4, 3, 7, 7)), None),
                              {"stride": 2, "padding": 3}),
        "conv stride (2, 1) padding (0, 1)":
            (*conv_, (x, w, None), {"stride": (2, 1), "padding": (0, 1)}),
        # groups > 1: the reference path (im2col, batched matmul, col2im)
        "conv grouped": (*conv_, (x16, rng.standard_normal((6, 2, 3, 3)), None),
                         {"stride": 2, "padding": 1, "groups": 2}),
        "conv depthwise": (*conv_, (x16, rng.standard_normal((4, 1, 3, 3)), None),
                           {"padding": 1, "groups": 4}),
        "conv naive": (F.conv2d_forward_naive, F.conv2d_backward_naive,
                       (x[:1, :, :4, :4], rng.standard_normal((2, 3, 2, 2)), b[:2]),
                       {"stride": 2, "padding": 1}),
        "linear": (F.linear_forward, F.linear_backward,
                   (rng.standard_normal((4, 5)), rng.standard_normal((3, 5)),
                    rng.standard_normal(3)), {}),
        "linear no bias": (F.linear_forward, F.linear_backward,
                           (rng.standard_normal((4, 5)), rng.standard_normal((3, 5)), None), {}),
        "flatten": (F.flatten_forward, F.flatten_backward, (x,), {}),
        "relu": (F.relu_forward, F.relu_backward, (x,), {}),
        "relu channel-major": (F.relu_forward, F.relu_backward, (cnhw(x16),), {}),
        "relu 1-d": (F.relu_forward, F.relu_backward, (rng.standard_normal(7) + 0.05,), {}),
        "add": (F.add_forward, F.add_backward, (x, rng.standard_normal(x.shape)), {}),
        "bn 4-d train": (F.batchnorm_forward, F.batchnorm_backward, (x, gamma, beta, rm, rv),
                         {"training": True}),
        "bn 4-d train channel-major": (F.batchnorm_forward, F.batchnorm_backward,
                                       (cnhw(x16), rng.uniform(0.5, 1.5, 4),
                                        rng.standard_normal(4), None, None),
                                       {"training": True}),
        "bn 4-d eval": (F.batchnorm_forward, F.batchnorm_backward, (x, gamma, beta, rm, rv),
                        {"training": False}),
        "bn 2-d train": (F.batchnorm_forward, F.batchnorm_backward,
                         (rng.standard_normal((6, 3)), gamma, beta, rm, rv), {"training": True}),
        "bn 2-d eval": (F.batchnorm_forward, F.batchnorm_backward,
                        (rng.standard_normal((6, 3)), gamma, beta, rm, rv), {"training": False}),
        "maxpool": (F.maxpool2d_forward, F.maxpool2d_backward, (x,),
                    {"kernel_size": 3, "stride": 2, "padding": 1}),
        "maxpool 2x2": (F.maxpool2d_forward, F.maxpool2d_backward, (x16,), {"kernel_size": 2}),
        "avgpool": (F.avgpool2d_forward, F.avgpool2d_backward, (x,), {"kernel_size": 2}),
        "avgpool 3x3 stride 1 padding 1": (F.avgpool2d_forward, F.avgpool2d_backward, (x,),
                                           {"kernel_size": 3, "stride": 1, "padding": 1}),
        "global avgpool": (F.global_avgpool2d_forward, F.global_avgpool2d_backward, (x,), {}),
        "cross-entropy": (F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward,
                          (logits, y), {}),
        "cross-entropy label smoothing": (F.softmax_cross_entropy_forward,
                                          F.softmax_cross_entropy_backward,
                                          (logits, y), {"label_smoothing": 0.1}),
    }


OPS = list(_ops(np.random.default_rng(0)))
CONV_OPS = [name for name in OPS if name.startswith("conv") and name != "conv naive"]


def _run_op(name, to=lambda a: a, dtype=np.float64):
    """Forward and backward of op ``name`` on inputs moved by ``to``;
    returns (out, grads, dout before, dout after)."""
    forward, backward, args, kwargs = _ops(np.random.default_rng(0))[name]
    cast = as_float32 if dtype == np.float32 else (lambda a: a)
    out, cache = forward(*(to(cast(a)) for a in args), **kwargs)
    if np.ndim(out):
        dout_host = cast(np.random.default_rng(1).standard_normal(tuple(out.shape)))
        if np.ndim(out) == 4:
            dout_host = cnhw(dout_host)          # as a conv-laid-out activation's gradient
        dout = to(dout_host)
    else:
        dout_host = dout = 1.0
    before = host(dout).copy() if np.ndim(out) else dout
    grads = _as_tuple(backward(dout, cache))
    after = host(dout) if np.ndim(out) else dout
    return out, grads, before, after


@pytest.mark.parametrize("mode", ["fast", "reference"])
@pytest.mark.parametrize("name", OPS)
def test_op_on_cupy_matches_numpy(name, mode):
    """On the engine, and on the reference code (MINIRES_FAST=0) too."""
    import cupy

    out, grads, _, _ = _run_op(name)
    with minires.fast.enabled(mode == "fast"):
        gout, ggrads, before, after = _run_op(name, to_gpu)
    assert isinstance(gout, cupy.ndarray) and gout.dtype == cupy.float64
    assert rel(gout, out) < 1e-12
    assert np.array_equal(before, after), "backward modified dout in place"
    assert len(ggrads) == len(grads)
    for i, (g, gg) in enumerate(zip(grads, ggrads, strict=True)):
        if g is None:
            assert gg is None, i
        else:
            assert isinstance(gg, cupy.ndarray) and gg.dtype == cupy.float64, i
            assert rel(gg, g) < 1e-10, i


@pytest.mark.parametrize("name", OPS)
def test_op_in_float32_on_cupy_stays_float32(name):
    """dtype follows the data on the GPU too; float32 within 1e-4 of float64."""
    import cupy

    out, grads, _, _ = _run_op(name)
    gout, ggrads, _, _ = _run_op(name, to_gpu, np.float32)
    assert gout.dtype == cupy.float32
    assert rel(gout, out) < 1e-4
    for i, (g, gg) in enumerate(zip(grads, ggrads, strict=True)):
        if g is not None:
            assert gg.dtype == cupy.float32, i
            assert rel(gg, g) < 1e-4, i


@pytest.mark.parametrize("images", [1, 2])
@pytest.mark.parametrize("name", CONV_OPS)
def test_conv_in_chunks_of_images_on_cupy_matches_numpy(name, images, monkeypatch):
    """On a GPU the whole batch is one chunk unless it exceeds
    ``GPU_CHUNK_BYTES``: force chunks of one image, and of two (a partial
    last chunk of a batch of 3), to run the chunked loops on CuPy."""
    out, grads, _, _ = _run_op(name)
    monkeypatch.setattr(fast_conv, "chunk_images", lambda *args, **kwargs: images)
    gout, ggrads, _, _ = _run_op(name, to_gpu)
    assert rel(gout, out) < 1e-12
    for g, gg in zip(grads, ggrads, strict=True):
        assert (g is None and gg is None) or rel(gg, g) < 1e-10


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), ((2, 3), (2, 1), 0),
                                                     (1, 2, 0)])
@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_im2col_and_col2im_on_cupy_match_numpy(kernel, stride, padding, mode):
    rng = np.random.default_rng(0)
    x = cnhw(rng.standard_normal((3, 2, 7, 6)))
    with minires.fast.enabled(mode == "fast"):
        cols = F.im2col(x, kernel, stride, padding)
        gcols = F.im2col(to_gpu(x), kernel, stride, padding)
    assert np.array_equal(host(gcols), cols)
    dcols = rng.standard_normal(cols.shape)
    dx = F.col2im(dcols, x.shape, kernel, stride, padding)
    gdx = F.col2im(to_gpu(dcols), x.shape, kernel, stride, padding)
    assert rel(gdx, dx) < 1e-13


def test_batchnorm_running_update_on_cupy_matches_numpy():
    rng = np.random.default_rng(0)
    x, gamma, beta = rng.standard_normal((4, 3, 5, 5)), rng.uniform(0.5, 1.5, 3), np.zeros(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    _, cache = F.batchnorm_forward(x, gamma, beta, rm, rv, training=True)
    want = F.batchnorm_running_update(rm, rv, cache, momentum=0.3)
    _, gcache = F.batchnorm_forward(*map(to_gpu, (x, gamma, beta, rm, rv)), training=True)
    got = F.batchnorm_running_update(to_gpu(rm), to_gpu(rv), gcache, momentum=0.3)
    for g, w in zip(got, want, strict=True):
        assert rel(g, w) < 1e-12


@pytest.mark.parametrize("fn", [F.softmax, F.log_softmax])
def test_softmax_on_cupy_matches_numpy(fn):
    logits = np.random.default_rng(0).standard_normal((5, 7)) * 30
    assert rel(fn(to_gpu(logits)), fn(logits)) < 1e-12
    assert rel(fn(to_gpu(logits), axis=0), fn(logits, axis=0)) < 1e-12


# ---- blocks and models --------------------------------------------------------------

BLOCKS = {
    "basic identity": lambda: blocks.BasicBlock(4, 4, stride=1, dtype="float64"),
    "basic A": lambda: blocks.BasicBlock(4, 8, stride=2, shortcut="A", dtype="float64"),
    "basic B": lambda: blocks.BasicBlock(4, 8, stride=2, shortcut="B", dtype="float64"),
    "basic C": lambda: blocks.BasicBlock(4, 4, stride=1, shortcut="C", dtype="float64"),
    "plain": lambda: blocks.PlainBlock(4, 8, stride=2, dtype="float64"),
    "bottleneck": lambda: blocks.Bottleneck(8, 2, stride=2, dtype="float64"),
    "bottleneck identity": lambda: blocks.Bottleneck(8, 2, stride=1, dtype="float64"),
    "preact": lambda: blocks.PreActBlock(4, 8, stride=2, dtype="float64"),
    "preact identity": lambda: blocks.PreActBlock(4, 4, stride=1, dtype="float64"),
    "preact bottleneck": lambda: blocks.PreActBottleneck(8, 2, stride=2, dtype="float64"),
    "resnext bottleneck": lambda: blocks.Bottleneck(8, 2, stride=2, dtype="float64", groups=2),
}

MODELS = {
    "resnet_cifar": lambda: resnet_cifar(8, widths=(4, 8, 8), dtype="float64"),
    "resnet_cifar shortcut B": lambda: resnet_cifar(8, shortcut="B", widths=(4, 8, 8),
                                                    dtype="float64"),
    "plain_cifar": lambda: plain_cifar(8, dtype="float64"),
    "preact_resnet_cifar": lambda: preact_resnet_cifar(8, dtype="float64"),
    "preact_resnet_cifar bottleneck": lambda: preact_resnet_cifar(11, dtype="float64"),
    "wide_resnet_cifar": lambda: wide_resnet_cifar(10, 1, dtype="float64"),
    "resnext_cifar": lambda: resnext_cifar(11, 2, 32, widths=(4, 8, 8), dtype="float64"),
    "resnet18 cifar stem": lambda: resnet18(num_classes=5, stem="cifar", dtype="float64"),
    # the ImageNet layout (7x7 stride-2 stem, max pool) on a 32x32 input
    "resnet18 imagenet stem": lambda: resnet18(num_classes=5, dtype="float64"),
}


def _channels(name):
    return 8 if "bottleneck" in name and name in BLOCKS else 4 if name in BLOCKS else 3


def _grads_on(make, x, dout_seed, device, training=True):
    """Forward and backward of a fresh module (weights from init seed 0) on
    ``device``; returns host copies of out, dx, every parameter gradient and
    the state dict (running statistics) afterwards, and whether ``dout`` was
    left untouched."""
    nn.init.manual_seed(0)
    module = make()
    if device == "cupy":
        backend.use("cupy")
    try:
        module.to(device=device)
        module.train(training)
        out = module(backend.asarray(x))
        dout = backend.asarray(np.random.default_rng(dout_seed).standard_normal(out.shape))
        before = host(dout).copy()
        dx = module.backward(dout)
        return (host(out), host(dx), {n: host(p.grad) for n, p in module.named_parameters()},
                {k: host(v) for k, v in module.state_dict().items()},
                np.array_equal(host(dout), before))
    finally:
        backend.use("numpy")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(BLOCKS) + list(MODELS))
def test_block_and_model_on_cupy_match_numpy(name, training):
    make = {**BLOCKS, **MODELS}[name]
    size = 32 if "imagenet" in name else 8
    x = np.random.default_rng(0).standard_normal((3, _channels(name), size, size))
    out, dx, grads, state, _ = _grads_on(make, x, 1, "numpy", training)
    gout, gdx, ggrads, gstate, untouched = _grads_on(make, x, 1, "cupy", training)
    assert untouched, "backward modified dout in place"
    assert rel(gout, out) < 1e-10 and rel(gdx, dx) < 1e-9
    assert ggrads.keys() == grads.keys() and grads
    for key, g in grads.items():
        assert rel(ggrads[key], g) < 1e-9, key
    assert gstate.keys() == state.keys()
    for key, v in state.items():              # running statistics, num_batches_tracked
        assert gstate[key].dtype == v.dtype and rel(gstate[key], v) < 1e-12, key


def test_gradcheck_of_a_block_on_cupy(on_cupy):
    """minires.gradcheck works on a module living on the GPU."""
    from minires.gradcheck import check_module

    nn.init.manual_seed(0)
    block = blocks.BasicBlock(3, 4, stride=2, shortcut="B", dtype="float64")
    block.to(device="cuda")
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    report = check_module(block, backend.asarray(x), num_samples=4)
    assert len(report) == 1 + len(list(block.parameters()))
    report.assert_ok(1e-6)


def test_model_moves_to_the_gpu_and_back():
    import cupy

    nn.init.manual_seed(0)
    model = resnet_cifar(8, widths=(4, 8, 8))
    want = {k: host(v).copy() for k, v in model.state_dict().items()}
    model.to(device="cuda")
    assert all(isinstance(v, cupy.ndarray) for v in model.state_dict().values())
    model.to(device="cpu", dtype="float64")
    for key, v in model.state_dict().items():
        assert isinstance(v, np.ndarray), key
        assert (v.dtype == np.float64 if want[key].dtype.kind == "f"
                else v.dtype == want[key].dtype), key
        assert np.array_equal(v, want[key].astype(v.dtype)), key


def test_float32_network_stays_float32_on_cupy(on_cupy):
    import cupy

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 10, 4)
    crit = nn.CrossEntropyLoss()
    nn.init.manual_seed(0)
    ref = resnet_cifar(8, widths=(4, 8, 8), dtype="float64")
    crit(ref(backend.asarray(x)), backend.asarray(y))
    ref.backward(crit.backward())
    model = resnet_cifar(8, widths=(4, 8, 8))          # float32 by default
    model.load_state_dict(ref.state_dict())
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = crit(model(backend.asarray(x, dtype="float32")), backend.asarray(y))
    dx = model.backward(crit.backward())
    assert loss.dtype == cupy.float32 and dx.dtype == cupy.float32
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert isinstance(p.grad, cupy.ndarray) and p.grad.dtype == cupy.float32, name
        assert rel(p.grad, q.grad) < 1e-4, name
    opt.step()
    assert all(p.data.dtype == cupy.float32 for p in model.parameters())
    assert all(s["momentum_buffer"].dtype == cupy.float32 for s in opt.state.values())


# ---- optimizers, checkpoints, the trainer ------------------------------------------

OPTIMIZERS = {
    "sgd momentum": lambda params: SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4),
    "sgd nesterov": lambda params: SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4,
                                       nesterov=True),
    "adam": lambda params: Adam(params, lr=1e-3, weight_decay=1e-4),
    "adamw": lambda params: AdamW(params, lr=1e-3, weight_decay=1e-2),
}


def _train_steps(make_opt, device, steps=3, clip=None):
    """``steps`` SGD/Adam steps of a small float64 ResNet on ``device``;
    returns the host state dict, the optimizer and the model."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 10, 4)
    nn.init.manual_seed(0)
    model = resnet_cifar(8, widths=(4, 8, 8), dtype="float64")
    if device == "cupy":
        backend.use("cupy")
    try:
        model.to(device=device)
        opt = make_opt(model.parameters())
        crit = nn.CrossEntropyLoss(label_smoothing=0.1)
        for _ in range(steps):
            crit(model(backend.asarray(x)), backend.asarray(y))
            model.backward(crit.backward())
            if clip is not None:
                clip_grad_norm_(model.parameters(), clip)
            opt.step()
            model.zero_grad()
        return {k: host(v).copy() for k, v in model.state_dict().items()}, opt, model
    finally:
        backend.use("numpy")


@pytest.mark.parametrize("name", list(OPTIMIZERS) + ["sgd clipped"])
def test_optimizer_steps_on_cupy_match_numpy(name):
    import cupy

    make = OPTIMIZERS["sgd momentum" if name == "sgd clipped" else name]
    clip = 0.5 if name == "sgd clipped" else None
    want, _, _ = _train_steps(make, "numpy", clip=clip)
    got, opt, _ = _train_steps(make, "cupy", clip=clip)
    for key, v in want.items():
        assert rel(got[key], v) < 1e-9 if v.dtype.kind == "f" else (got[key] == v).all(), key
    buffers = [a for s in opt.state.values() for a in s.values() if hasattr(a, "shape")]
    assert buffers and all(isinstance(a, cupy.ndarray) for a in buffers)


def test_checkpoint_from_the_gpu_resumes_on_the_gpu_and_loads_on_the_cpu(tmp_path):
    """Model and optimizer state saved from CuPy: a fresh CuPy model and
    optimizer loaded from the file continue exactly as the originals do, and
    a NumPy model loads the same weights."""
    import cupy

    from minires.checkpoint import (
        load_checkpoint,
        load_state_dict_file,
        save_checkpoint,
        save_state_dict,
    )

    make = OPTIMIZERS["sgd nesterov"]
    _, opt, model = _train_steps(make, "cupy", steps=2)
    save_checkpoint(tmp_path / "c.npz", model_state=model.state_dict(),
                    optimizer_state=opt.state_dict(), epoch=2)
    save_state_dict(tmp_path / "w.npz", model.state_dict())
    saved = load_checkpoint(tmp_path / "c.npz")
    assert saved["epoch"] == 2
    assert all(isinstance(v, np.ndarray) for v in saved["model_state"].values())
    for key, v in model.state_dict().items():
        assert np.array_equal(saved["model_state"][key], host(v)), key
        assert np.array_equal(load_state_dict_file(tmp_path / "w.npz")[key], host(v)), key

    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 10, 4)
    backend.use("cupy")
    try:
        twin = resnet_cifar(8, widths=(4, 8, 8), dtype="float64")
        twin.load_state_dict(saved["model_state"])
        twin_opt = make(twin.parameters())
        twin_opt.load_state_dict(saved["optimizer_state"])
        for m, o in ((model, opt), (twin, twin_opt)):
            crit = nn.CrossEntropyLoss()
            crit(m(backend.asarray(x)), backend.asarray(y))
            m.backward(crit.backward())
            o.step()
    finally:
        backend.use("numpy")
    assert all(isinstance(p.data, cupy.ndarray) for p in twin.parameters())
    for (key, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert np.array_equal(host(a), host(b)), key

    on_cpu = resnet_cifar(8, widths=(4, 8, 8), dtype="float64")
    on_cpu.load_state_dict(load_state_dict_file(tmp_path / "w.npz"))
    for key, v in on_cpu.state_dict().items():
        assert isinstance(v, np.ndarray) and np.array_equal(v, saved["model_state"][key]), key


def _trainer(device, out_dir, seed=0):
    """A float64 ResNet-8 on 24 random 3x8x8 images, with the paper's
    augmentation, SGD and a cosine schedule."""
    from minires.data import DataLoader
    from minires.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip
    from minires.train import Trainer

    rng = np.random.default_rng(0)
    images = rng.standard_normal((24, 3, 8, 8))
    labels = rng.integers(0, 3, 24)
    backend.use(device)
    nn.init.manual_seed(seed)
    model = resnet_cifar(8, num_classes=3, widths=(4, 8, 8), dtype="float64")
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    norm = Normalize([0.1, 0.0, -0.1], [1.0, 1.1, 0.9])
    train = DataLoader(images, labels, 8, shuffle=True, seed=seed,
                       transform=Compose([RandomCrop(8, padding=1), RandomHorizontalFlip(),
                                          norm]))
    return Trainer(model, opt, train, DataLoader(images, labels, 10, transform=norm),
                   scheduler=CosineAnnealingLR(opt, T_max=3), out_dir=out_dir,
                   progress=False, log=False)


def test_trainer_on_cupy_matches_numpy_and_resumes_exactly(tmp_path):
    import cupy

    try:
        cpu = _trainer("numpy", None)
        cpu.fit(3)
        gpu = _trainer("cupy", tmp_path / "straight")
        gpu.fit(3)
        assert isinstance(next(iter(gpu.model.parameters())).data, cupy.ndarray)
        assert (tmp_path / "straight" / "checkpoint.npz").exists()
        for a, b in zip(gpu.history, cpu.history, strict=True):
            for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
                assert abs(a[key] - b[key]) <= 1e-9 * max(1.0, abs(b[key])), key
        for key, v in cpu.model.state_dict().items():
            assert rel(gpu.model.state_dict()[key], v) < 1e-8, key

        first = _trainer("cupy", tmp_path / "resumed")
        first.fit(1)
        resumed = _trainer("cupy", tmp_path / "resumed", seed=123)
        resumed.resume(tmp_path / "resumed" / "checkpoint.npz")
        resumed.fit(3)
        for key, v in gpu.model.state_dict().items():
            assert np.array_equal(host(resumed.model.state_dict()[key]), host(v)), key
        assert [r["train_loss"] for r in resumed.history] == [r["train_loss"]
                                                              for r in gpu.history]
    finally:
        backend.use("numpy")


def test_cli_trains_on_cupy_and_its_checkpoint_evaluates_alike_on_the_cpu(tmp_path, capsys):
    """``minires --backend cupy train`` end to end; the checkpoint it writes
    gives the same test loss and accuracy evaluated on the GPU and the CPU."""
    import json

    from minires import cli

    argv = ["train", "--model", "resnet8", "--per-class", "10", "--batch-size", "32",
            "--epochs", "2", "--out", str(tmp_path), "--quiet"]
    try:
        assert cli.main(["--backend", "cupy", *argv]) == 0
        capsys.readouterr()
        results = {}
        for name in ("cupy", "numpy"):
            assert cli.main(["--backend", name, "evaluate", str(tmp_path / "checkpoint.npz"),
                             "--json"]) == 0
            results[name] = json.loads(capsys.readouterr().out)
    finally:
        backend.use("numpy")
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    gpu, cpu = results["cupy"], results["numpy"]
    assert gpu["images"] == cpu["images"] > 0
    assert abs(gpu["acc"] - cpu["acc"]) <= 1 / cpu["images"]
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=1e-5)
    assert gpu["loss"] == pytest.approx(history[-1]["test_loss"], rel=1e-5)
