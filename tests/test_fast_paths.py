"""The engine (``minires.fast``) against the reference code it stands in for.

Every fast function must give the numbers of its reference in
``minires.functional``, run on NumPy and on array-api-strict: conv chunked by
images and its input gradient by convolution, both over the shifted grid, or
by phases for strided convolutions; im2col by one strided view; ReLU by
maximum and a bitwise mask; batch norm and the skip connection's sum split
over threads. Every fast function must keep the channel-major layout of the
conv outputs it receives (the next conv's im2col reads it without a copy),
have its reference's signature and accept its reference's caches. The switch
(``MINIRES_FAST``, ``minires.fast.enable``) must change the code that runs.
Plus, for the whole network, float32 gradients of every ResNet-20 parameter
within 1e-4 of float64 (the benchmark reports the same figure).
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from util import host, rel, strict

import minires.fast
from minires import functional as F
from minires.fast import activation as fast_activation
from minires.fast import add as fast_add
from minires.fast import conv as fast_conv
from minires.fast import norm as fast_norm
from minires.fast import parallel
from minires.functional import activation, conv, norm
from minires.models import resnet_cifar
from minires.nn.loss import CrossEntropyLoss


@pytest.fixture(autouse=True)
def engine_on():
    """The tests here run the engine, whatever MINIRES_FAST says."""
    with minires.fast.enabled(True):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def cnhw(a: np.ndarray) -> np.ndarray:
    """The same values stored (C, N, H, W), as minires's conv outputs are."""
    return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)


# ---- convolution -----------------------------------------------------------------

@st.composite
def conv_cases(draw):
    n, c_in, c_out = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    assume(h + 2 * ph >= kh and w + 2 * pw >= kw)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    x = rng.standard_normal((n, c_in, h, w))
    if draw(st.booleans()):
        x = cnhw(x)
    b = rng.standard_normal(c_out) if draw(st.booleans()) else None
    return (x, rng.standard_normal((c_out, c_in, kh, kw)), b, (sh, sw), (ph, pw),
            rng.standard_normal((n, c_out, oh, ow)))


def run_conv(x, w, b, stride, padding, dout):
    out, cache = fast_conv.conv2d_forward(x, w, b, stride, padding)
    return (out, *fast_conv.conv2d_backward(dout, cache))


@pytest.mark.parametrize("chunk_bytes", [1, 700, None])
@given(case=conv_cases())
def test_fast_conv_equals_portable(case, chunk_bytes):
    """Chunks of one image, of a few images (a partial last chunk), or all
    images at once: the same numbers as the portable path."""
    x, w, b, stride, padding, dout = case
    original = fast_conv.CHUNK_BYTES
    try:
        fast_conv.CHUNK_BYTES = chunk_bytes or original
        fast = run_conv(x, w, b, stride, padding, dout)
    finally:
        fast_conv.CHUNK_BYTES = original
    portable = run_conv(*(strict(a) if isinstance(a, np.ndarray) else a for a in case))
    for name, f, p in zip(("out", "dx", "dw", "db"), fast, portable, strict=True):
        if p is None:
            assert f is None
            continue
        assert type(p).__module__.startswith("array_api_strict")
        assert rel(f, host(p)) <= 1e-13, name


@given(case=conv_cases())
def test_fast_im2col_equals_reference(case):
    """One strided view and one copy: the reference's matrix."""
    x, w, _, stride, padding, _ = case
    fast = fast_conv.im2col(x, w.shape[2:], stride, padding)
    np.testing.assert_array_equal(fast, conv.im2col(x, w.shape[2:], stride, padding))


@given(case=conv_cases(), chunk_bytes=st.integers(1, 2000))
def test_im2col_chunks_tile_the_im2col_matrix(case, chunk_bytes):
    x, w, _, stride, padding, _ = case
    kernel = w.shape[2:]
    cols_t = conv.im2col(x, kernel, stride, padding).T
    blocks = [(cols, block.copy())
              for cols, block in fast_conv.im2col_chunks(x, kernel, stride, padding, chunk_bytes)]
    assert blocks[0][0].start == 0 and blocks[-1][0].stop == cols_t.shape[1]
    for (a, _), (b, _) in zip(blocks, blocks[1:], strict=False):
        assert a.stop == b.start
    np.testing.assert_array_equal(np.concatenate([blk for _, blk in blocks], axis=1), cols_t)


@given(case=conv_cases())
def test_phase_col2im_equals_col2im(case):
    """Any stride, kernel and padding (the kernel smaller than the stride
    too, which leaves pixels no offset touches): dcols laid out on the
    phases' grid, zero off the outputs, add up to col2im's image, to the
    last bit (each pixel gets the same terms in the same order)."""
    x, w, _, stride, padding, _ = case
    n, c, h, wd = x.shape
    kernel = tuple(w.shape[2:])
    oh, ow = conv.conv2d_output_size((h, wd), kernel, stride, padding)
    rng = np.random.default_rng(n * 1000 + c)
    cols = rng.standard_normal((n * oh * ow, c * kernel[0] * kernel[1]))
    want = conv.col2im(cols, x.shape, kernel, stride, padding)
    hg, wg = fast_conv.phase_grid_size((oh, ow), kernel, stride)
    dcols_t = np.zeros((cols.shape[1], n, hg, wg))
    dcols_t[:, :, :oh, :ow] = cols.T.reshape(-1, n, oh, ow)
    dx_t = np.zeros((c, n, h, wd))
    fast_conv.phase_col2im(dcols_t.reshape(cols.shape[1], -1), x.shape, kernel, stride, padding, dx_t)
    np.testing.assert_array_equal(dx_t.transpose(1, 0, 2, 3), want)


@given(case=conv_cases())
def test_conv_backward_without_input_grad_gives_the_same_parameter_grads(case):
    """need_input_grad=False (a network's first layer) returns dx None and
    the very same dw and db, on the fast and on the portable path."""
    x, w, b, stride, padding, dout = case
    for arrays in ((x, w, b, dout), tuple(None if a is None else strict(a)
                                          for a in (x, w, b, dout))):
        xa, wa, ba, da = arrays
        _, cache = fast_conv.conv2d_forward(xa, wa, ba, stride, padding)
        full = fast_conv.conv2d_backward(da, cache)
        _, cache = fast_conv.conv2d_forward(xa, wa, ba, stride, padding)
        dx, dw, db = fast_conv.conv2d_backward(da, cache, need_input_grad=False)
        assert dx is None
        np.testing.assert_array_equal(host(dw), host(full[1]))
        if b is None:
            assert db is None
        else:
            np.testing.assert_array_equal(host(db), host(full[2]))
        _, cache = fast_conv.conv2d_forward(xa, wa, ba, stride, padding)
        assert fast_conv.conv2d_backward(da, cache, False, False) == (None, None, None)


@given(case=conv_cases(), chunk_bytes=st.integers(1, 4000))
def test_shifted_grid_holds_the_im2col_columns_at_every_output_position(case, chunk_bytes):
    """At the grid positions that are outputs, the shifted slices are exactly
    the im2col columns; the rest of the grid is dropped by grid_interior."""
    x, w, _, _, padding, _ = case
    kernel = w.shape[2:]
    assume(padding[0] < kernel[0] and padding[1] < kernel[1])
    n, c = x.shape[:2]
    oh, ow = conv.conv2d_output_size(x.shape[2:], kernel, (1, 1), padding)
    want = conv.im2col(x, kernel, 1, padding).T          # (C*KH*KW, N*OH*OW)
    want = want.reshape(-1, n, oh, ow)
    seen = []
    for images, cols_t, grid in fast_conv.shifted_grid(x, kernel, padding, chunk_bytes):
        assert cols_t.shape == (want.shape[0], (images.stop - images.start) * grid[0] * grid[1])
        np.testing.assert_array_equal(fast_conv.grid_interior(cols_t, grid, (oh, ow)),
                                      want[:, images])
        seen.append(images)
    assert seen[0].start == 0 and seen[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(seen, seen[1:], strict=False))
    with pytest.raises(ValueError, match="padding below the kernel size"):
        next(fast_conv.shifted_grid(x, kernel, kernel))


@pytest.mark.parametrize("kernel, padding", [((3, 3), (1, 1)), ((3, 3), (0, 0)),
                                             ((3, 2), (2, 1)), ((5, 3), (2, 0))])
def test_shifted_grid_reads_padding_as_zeros_next_to_inf(kernel, padding):
    """The shifted slices read the neighbouring row or image where im2col
    reads padding; those entries must be set to zero, not multiplied by it:
    with inf and nan on every image's border the columns are still exactly
    im2col's (inf and nan where they are pixels, 0 where they are padding)."""
    x = np.ones((3, 2, 5, 6))
    x[:, :, 0], x[:, :, -1] = np.inf, -np.inf
    x[:, :, :, 0], x[:, :, :, -1] = np.nan, np.inf
    oh, ow = conv.conv2d_output_size(x.shape[2:], kernel, (1, 1), padding)
    want = conv.im2col(x, kernel, 1, padding).T.reshape(-1, 3, oh, ow)
    for images, cols_t, grid in fast_conv.shifted_grid(x, kernel, padding, chunk=2):
        np.testing.assert_array_equal(fast_conv.grid_interior(cols_t, grid, (oh, ow)),
                                      want[:, images])


@pytest.mark.parametrize("kernel, padding", [((3, 3), (1, 1)), ((3, 2), (0, 1)),
                                             ((1, 1), (0, 0)), ((5, 3), (4, 2))])
@pytest.mark.parametrize("x_layout", ["nchw", "cnhw"])
def test_backward_by_convolution_equals_col2im_and_im2col(rng, kernel, padding, x_layout):
    x = rng.standard_normal((3, 2, 7, 6))
    if x_layout == "cnhw":
        x = cnhw(x)
    w = rng.standard_normal((4, 2, *kernel))
    out, _ = fast_conv.conv2d_forward(x, w, None, 1, padding)
    dout = rng.standard_normal(out.shape)
    dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, 4)
    want_dx = conv.col2im(dout_mat @ w.reshape(4, -1), x.shape, kernel, 1, padding)
    want_dw = (dout_mat.T @ conv.im2col(x, kernel, 1, padding)).reshape(w.shape)
    dx, dw = fast_conv.conv2d_backward_by_convolution(dout, x, w, padding)
    assert dx.shape == x.shape and dw.shape == w.shape
    assert rel(dx, want_dx) <= 1e-13 and rel(dw, want_dw) <= 1e-13
    dx_only, none = fast_conv.conv2d_backward_by_convolution(dout, x, w, padding, False)
    assert none is None and rel(dx_only, dx) == 0.0
    with pytest.raises(ValueError, match="padding below the kernel size"):
        fast_conv.conv2d_backward_by_convolution(dout, x, w, kernel)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_outputs_and_input_grads_keep_the_channel_major_layout(rng, stride):
    """Speed, not values: out and dx are (N, C, H, W) views of (C, N, H, W) storage."""
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    out, cache = fast_conv.conv2d_forward(x, w, None, stride, 1)
    dx, dw, _ = fast_conv.conv2d_backward(cnhw(np.ones(out.shape, np.float32)), cache)
    for a in (out, dx):
        assert a.dtype == np.float32
        assert a.transpose(1, 0, 2, 3).flags.c_contiguous


def test_gradients_built_from_zeros_keep_the_channel_major_layout(rng):
    """Global average pooling's dx and option A's shortcut (both directions)
    are built from zeros: in the conv outputs' layout, so the batch norms
    and convs they reach read them without a copy."""
    from minires.functional import pool
    from minires.nn.blocks import ShortcutA

    x = cnhw(rng.standard_normal((4, 3, 6, 6)).astype(np.float32))
    _, cache = pool.global_avgpool2d_forward(x)
    dx = pool.global_avgpool2d_backward(np.ones((4, 3), np.float32), cache)
    np.testing.assert_array_equal(dx, np.full(x.shape, 1 / 36, np.float32))
    shortcut = ShortcutA(3, 5, 2)
    out = shortcut(x)
    dx_a = shortcut.backward(cnhw(np.ones(out.shape, np.float32)))
    for a in (dx, out, dx_a):
        assert a.dtype == np.float32 and a.transpose(1, 0, 2, 3).flags.c_contiguous


def test_conv_cache_keeps_x_not_cols(rng):
    """The cache must not hold a KH*KW times larger im2col matrix per layer."""
    x, w = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3))
    _, cache = fast_conv.conv2d_forward(x, w, None, 1, 1)
    arrays = [a for a in cache if isinstance(a, np.ndarray)]
    assert sum(a.size for a in arrays) == x.size + w.size


def test_conv_caches_are_the_references_and_interchangeable(rng):
    """The switch may change between a forward and a backward pass: each
    backward accepts the other forward's cache, with the same results."""
    for stride in (1, 2):
        x, w, b = (rng.standard_normal((3, 4, 7, 6)), rng.standard_normal((5, 4, 3, 3)),
                   rng.standard_normal(5))
        out, fast_cache = fast_conv.conv2d_forward(x, w, b, stride, 1)
        ref_out, ref_cache = conv.conv2d_forward(x, w, b, stride, 1)
        assert rel(out, ref_out) <= 1e-13
        assert len(fast_cache) == len(ref_cache)
        assert all(f is r or f == r for f, r in zip(fast_cache, ref_cache, strict=True))
        dout = rng.standard_normal(out.shape)
        want = conv.conv2d_backward(dout, ref_cache)
        for got in (fast_conv.conv2d_backward(dout, ref_cache),
                    conv.conv2d_backward(dout, fast_cache)):
            for g, e in zip(got, want, strict=True):
                assert rel(g, e) <= 1e-13


def test_grouped_convolutions_go_to_the_reference(rng, monkeypatch):
    """The engine computes one group only: any other ``groups`` (invalid
    values too, so that the reference's errors stand) goes to the reference,
    forward and backward, with the call as it came; ``groups=1`` runs the
    engine, with the reference's cache."""
    calls = []

    def spy(name):
        def record(*args, **kwargs):
            calls.append((name, args[-1]))
            return "reference"
        return record

    monkeypatch.setattr(conv, "conv2d_forward", spy("forward"))
    monkeypatch.setattr(conv, "conv2d_backward", spy("backward"))
    x, w = rng.standard_normal((2, 4, 5, 5)), rng.standard_normal((4, 2, 3, 3))
    for groups in (2, True, "2"):
        assert fast_conv.conv2d_forward(x, w, None, 1, 1, groups) == "reference"
        assert calls[-1] == ("forward", groups)
    out, cache = fast_conv.conv2d_forward(x, np.ones((4, 4, 3, 3)), None, 1, 1, groups=1)
    assert len(calls) == 3 and out.shape == (2, 4, 5, 5) and cache[5] == 1
    dout = np.ones(out.shape)
    assert fast_conv.conv2d_backward(dout, (*cache[:5], 2)) == "reference"
    assert calls[-1][0] == "backward" and len(calls) == 4
    dx, dw, _ = fast_conv.conv2d_backward(dout, cache)                  # one group: the engine
    assert len(calls) == 4 and dx.shape == x.shape and dw.shape == (4, 4, 3, 3)


# ---- ReLU --------------------------------------------------------------------------

def test_fast_relu_equals_portable(rng):
    x = rng.standard_normal((3, 4, 5, 6))
    x[0, 0, 0, :3] = [0.0, -0.0, np.nan]
    x[1, 1, 1, :2] = [np.inf, -np.inf]
    x[2, 3, 4, :2] = [1.0, -1.0]
    dout = rng.standard_normal(x.shape)
    dout[2, 3, 4, :2] = -0.0                               # passed on, blocked
    out, cache = fast_activation.relu_forward(x)
    out_s, cache_s = fast_activation.relu_forward(strict(x))
    np.testing.assert_array_equal(out, host(out_s))        # NaN where NaN
    dx = fast_activation.relu_backward(dout, cache)
    dx_s = host(fast_activation.relu_backward(strict(dout), cache_s))
    np.testing.assert_array_equal(dx, dx_s)
    # bit for bit: assert_array_equal takes -0.0 for 0.0 (the reference, as
    # PyTorch, keeps relu(-0.0) = -0.0, which maximum(x, 0) turned into +0.0)
    for got, want in ((out, host(out_s)), (dx, dx_s)):
        np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))
    assert np.signbit(out[0, 0, 0, 1]) and np.signbit(dx[2, 3, 4, 0])
    assert not np.signbit(dx[2, 3, 4, 1])


def test_fast_relu_backward_blocks_inf_and_nan_where_the_unit_is_off(rng):
    """dout * mask would turn inf * 0 into NaN; the fast path must give 0 there."""
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    off = np.argwhere(x <= 0)
    dout[tuple(off[0])], dout[tuple(off[1])] = np.inf, np.nan
    _, cache = fast_activation.relu_forward(x)
    dx = fast_activation.relu_backward(dout, cache)
    assert dx.dtype == np.float32 and np.isfinite(dx).all()
    np.testing.assert_array_equal(dx, np.where(x > 0, dout, 0))
    assert not np.signbit(dx[x <= 0]).any()                 # +0.0 where off, as where gives


# ---- the sum of the skip connection ------------------------------------------------

@pytest.mark.parametrize("n_threads", [1, 2])
def test_fast_add_equals_plus_and_keeps_the_layout(rng, threads, monkeypatch, n_threads):
    threads(n_threads)
    parts = []
    split = parallel.over_channels

    def spy(work, x):
        return split(lambda ch: (parts.append(ch), work(ch))[1], x)

    monkeypatch.setattr(parallel, "over_channels", spy)
    a = cnhw(rng.standard_normal((3, 4, 5, 6)).astype(np.float32))
    b = rng.standard_normal(a.shape).astype(np.float32)
    a0, b0 = a.copy(), b.copy()
    out = fast_add.add(a, b)
    # the fast path ran, its parts covering the channels once
    assert sorted((p.start, p.stop) for p in parts) == ([(0, 4)] if n_threads == 1
                                                        else [(0, 2), (2, 4)])
    np.testing.assert_array_equal(out, a + b)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)
    assert out.dtype == np.float32 and out.transpose(1, 0, 2, 3).flags.c_contiguous
    np.testing.assert_array_equal(host(fast_add.add(strict(a), strict(b))), a + b)


# ---- batch norm ------------------------------------------------------------------

@pytest.mark.parametrize("shape, layout", [((4, 3, 5, 6), "nchw"), ((4, 3, 5, 6), "cnhw"),
                                           ((6, 5), "nchw")])
def test_batchnorm_numpy_equals_portable_bit_for_bit_in_both_layouts(rng, shape, layout):
    x = rng.standard_normal(shape) * 3 + 1
    dout = rng.standard_normal(shape)
    if layout == "cnhw":
        x, dout = cnhw(x), cnhw(dout)
    c = shape[1]
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    for training in (True, False):
        got = _run_bn(training, x, gamma, beta, rm, rv, dout)
        want = _run_bn(training, *(strict(a) for a in (x, gamma, beta, rm, rv, dout)))
        for g, e in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, host(e))


def _run_bn(training, x, gamma, beta, rm, rv, dout):
    out, cache = fast_norm.batchnorm_forward(x, gamma, beta, rm, rv, training=training)
    dx, dgamma, dbeta, *_ = fast_norm.batchnorm_backward(dout, cache)
    return out, dx, dgamma, dbeta


def test_batchnorm_output_keeps_the_input_layout(rng):
    x = cnhw(rng.standard_normal((4, 3, 5, 5)).astype(np.float32))
    out, cache = fast_norm.batchnorm_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32),
                                        None, None)
    dx = fast_norm.batchnorm_backward(x, cache)[0]
    for a in (out, dx):
        assert a.dtype == np.float32 and a.transpose(1, 0, 2, 3).flags.c_contiguous


def test_batchnorm_and_relu_caches_are_interchangeable(rng):
    x = cnhw(rng.standard_normal((4, 3, 5, 6)))
    dout = rng.standard_normal(x.shape)
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    _, fast_cache = fast_norm.batchnorm_forward(x, gamma, beta, None, None)
    _, ref_cache = norm.batchnorm_forward(x, gamma, beta, None, None)
    want = norm.batchnorm_backward(dout, ref_cache)
    for got in (fast_norm.batchnorm_backward(dout, ref_cache),
                norm.batchnorm_backward(dout, fast_cache)):
        for g, e in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, e)
    _, fast_mask = fast_activation.relu_forward(x)
    _, ref_mask = activation.relu_forward(x)
    np.testing.assert_array_equal(fast_mask, ref_mask)
    np.testing.assert_array_equal(fast_activation.relu_backward(dout, ref_mask),
                                  activation.relu_backward(dout, fast_mask))


# ---- the dispatch and the switch ---------------------------------------------------

def test_each_fast_function_has_its_references_signature():
    """The public op shows the reference's signature and docstring, and holds
    both versions; the engine's version has the same signature."""
    modules = {"conv": conv, "norm": norm, "activation": activation}
    assert len(F.DISPATCHED) == 9
    # every op the table dispatches is listed (the tests below loop over the list)
    assert set(F.DISPATCHED) == {name for name, op in vars(F).items()
                                 if hasattr(op, "reference") and hasattr(op, "fast")}
    for name in F.DISPATCHED:
        op = getattr(F, name)
        reference, fast = op.reference, op.fast
        file = reference.__module__.rsplit(".", 1)[1]
        assert reference is getattr(modules.get(file) or sys.modules[reference.__module__], name)
        assert fast.__module__ == f"minires.fast.{file}" and fast.__name__ == name
        assert inspect.signature(op) == inspect.signature(reference)
        assert op.__doc__ == reference.__doc__
        assert inspect.signature(fast) == inspect.signature(reference), name


def _calls(run) -> set[tuple[str, str]]:
    """(file relative to minires/, function) of every Python function that
    ``run()`` calls on this thread."""
    root = str(Path(minires.fast.__file__).parents[1]) + os.sep
    seen: set[tuple[str, str]] = set()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(root):
            seen.add((frame.f_code.co_filename[len(root):], frame.f_code.co_name))

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return seen


def _train_step():
    from minires import nn

    nn.init.manual_seed(0)
    model = resnet_cifar(8, widths=(4, 8, 8), dtype="float32")
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    criterion = CrossEntropyLoss()
    criterion(model(x), np.array([1, 2]))
    model.backward(criterion.backward())
    return {k: p.grad for k, p in model.named_parameters()}


ENGINE_FILES = {f"fast{os.sep}{name}.py" for name in ("conv", "norm", "activation", "add")}


def _where(fn) -> tuple[str, str]:
    """(file relative to minires/, function) of ``fn``, as ``_calls`` names it."""
    root = str(Path(minires.fast.__file__).parents[1]) + os.sep
    return fn.__code__.co_filename[len(root):], fn.__code__.co_name


def test_the_switch_changes_the_code_that_runs():
    """Not only a flag: with the engine off, a training step through the
    layers calls no function of the engine's files, and the reference of
    every dispatched op (im2col, col2im, convolution, batch norm, ReLU and
    sum); with it on, the engine's, and the reference of no dispatched op
    (nor col2im): a fast function that handed every call to its reference
    would pass the comparisons with the reference, but not this. The
    gradients agree."""
    references = {_where(getattr(F, name).reference) for name in F.DISPATCHED}
    results = {}
    for on in (True, False):
        with minires.fast.enabled(on):
            assert minires.fast.is_enabled() is on
            grads = {}
            called = _calls(lambda grads=grads: grads.update(_train_step()))
        results[on] = grads
        files = {file for file, _ in called}
        reference = {(f"functional{os.sep}{file}.py", name) for file, name in [
            ("conv", "col2im"), ("conv", "im2col"), ("activation", "relu_forward"),
            ("activation", "relu_backward"), ("add", "add")]}
        if on:
            assert ENGINE_FILES <= files, files
            assert (f"fast{os.sep}parallel.py", "over_chunks") in called
            assert {(f"functional{os.sep}conv.py", "col2im"),
                    (f"functional{os.sep}activation.py", "relu_forward")}.isdisjoint(called)
            assert not references & called, references & called
        else:
            assert files.isdisjoint(ENGINE_FILES | {f"fast{os.sep}parallel.py"}), files
            assert reference <= called, reference - called
            assert references <= called, references - called
    for name, g in results[True].items():
        assert rel(g, results[False][name]) <= 1e-4, name


def test_minires_fast_0_in_the_environment_runs_the_reference():
    """MINIRES_FAST=0 in a fresh process: the switch is off, no function of
    the engine's ops runs in a training step and no work is shared over
    threads (``parallel.threads()`` reads the thread count); BLAS runs on one
    thread beside minires's count of two (the thread policy does not depend
    on the switch: two BLAS threads made the reference 4-8x slower next to
    another busy process)."""
    code = (
        "import os, test_fast_paths as t, minires.fast as fast\n"
        "from threadpoolctl import threadpool_info\n"
        "called = t._calls(t._train_step)\n"
        "print(fast.is_enabled(), sorted({f for f, _ in called} & t.ENGINE_FILES), "
        "sorted(n for f, n in called if f == os.path.join('fast', 'parallel.py') "
        "and n.startswith('over_')), "
        "sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))\n"
    )
    env = dict(os.environ, MINIRES_FAST="0", MINIRES_THREADS="2", OPENBLAS_NUM_THREADS="2")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent),
                                         str(Path(minires.fast.__file__).parents[2]),
                                         env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "False [] [] [1]"


def test_the_switch_reads_minires_fast_and_rejects_other_words(monkeypatch):
    for value, on in [("0", False), ("off", False), ("False", False), ("1", True),
                      ("yes", True), ("", True)]:
        monkeypatch.setenv("MINIRES_FAST", value)
        monkeypatch.setattr(minires.fast, "_on", None)
        assert minires.fast.is_enabled() is on, value
    monkeypatch.setenv("MINIRES_FAST", "fast")
    monkeypatch.setattr(minires.fast, "_on", None)
    with pytest.raises(ValueError, match="MINIRES_FAST: expected 1 or 0.*'fast'"):
        minires.fast.is_enabled()
    minires.fast.enable(True)
    with minires.fast.enabled(False):
        assert not minires.fast.is_enabled()
        with minires.fast.enabled(True):
            assert minires.fast.is_enabled()
        assert not minires.fast.is_enabled()
    assert minires.fast.is_enabled()


def test_no_file_of_functional_imports_the_engine_or_uses_its_tricks():
    """The textbook stays the textbook: no name of the engine, no NumPy-only
    branch, no strided views, no threads in the code (docstrings and comments
    aside) of any file of minires/functional/ but the dispatch point."""
    import io
    import tokenize

    banned = {"fast", "parallel", "is_numpy", "is_numpy_like", "native", "as_strided",
              "stride_tricks", "threading", "ThreadPoolExecutor", "concurrent"}
    folder = Path(conv.__file__).parent
    files = sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")
    assert {p.name for p in files} >= {"conv.py", "norm.py", "activation.py", "add.py"}
    for path in files:
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        names = {t.string for t in tokens if t.type == tokenize.NAME}
        assert not names & banned, (path.name, names & banned)
    assert len((folder / "conv.py").read_text().splitlines()) <= 350


# ---- the whole network -------------------------------------------------------------

def _grads(model, x, y):
    criterion = CrossEntropyLoss()
    criterion(model(x), y)
    model.backward(criterion.backward())
    return {name: host(p.grad).astype(np.float64) for name, p in model.named_parameters()}


def test_small_resnet_fast_paths_match_portable(rng):
    """Every fast path at once: a small ResNet on NumPy against array-api-strict."""
    model = resnet_cifar(8, widths=(4, 8, 8), dtype="float64")
    twin = resnet_cifar(8, widths=(4, 8, 8), dtype="float64")
    twin.load_state_dict(model.state_dict())
    twin.to(device="array_api_strict")
    x, y = rng.standard_normal((3, 3, 12, 12)), rng.integers(0, 10, 3)
    fast = _grads(model, x, y)
    portable = _grads(twin, strict(x), strict(y))
    for name, g in fast.items():
        assert rel(g, portable[name]) <= 1e-10, name


def test_resnet20_float32_gradients_agree_with_float64():
    """Max-norm relative error of each float32 parameter gradient <= 1e-4.

    The weights are seeded: for a few draws (init seed 1, say) a pre-activation
    lies within float32's rounding of 0, its ReLU is on in one precision and
    off in the other, and that single unit moves a weight gradient by ~1e-2
    relative. That is the kink of ReLU, not lost accuracy; the seed keeps
    the test about accumulation error and independent of test order."""
    from minires import nn

    nn.init.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3, 32, 32)), rng.integers(0, 10, 8)
    model64 = resnet_cifar(20, dtype="float64")
    model32 = resnet_cifar(20, dtype="float32")
    model32.load_state_dict(model64.state_dict())
    g64 = _grads(model64, x, y)
    g32 = _grads(model32, x.astype(np.float32), y)
    errors = {name: rel(g32[name], g) for name, g in g64.items()}
    assert len(errors) == 59             # 19 convs, 19 batch norms (2 each), fc (2)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, (worst, errors[worst])


# ---- threads (minires.fast.parallel) ---------------------------------------------------

def test_parts_cover_the_range_in_order():
    assert parallel.parts(5, 2) == [slice(0, 2), slice(2, 5)]
    assert parallel.parts(2, 8) == [slice(0, 1), slice(1, 2)]
    assert parallel.parts(7, 1) == [slice(0, 7)]
    assert parallel.parts(128, 2, grain=12) == [slice(0, 60), slice(60, 128)]   # 11 chunks: 5 + 6
    assert parallel.parts(3, 4, grain=10) == [slice(0, 3)]
    for n, k, grain in [(1, 3, 1), (10, 3, 1), (128, 2, 1), (128, 2, 22), (17, 4, 3)]:
        got = parallel.parts(n, k, grain)
        assert got[0].start == 0 and got[-1].stop == n and len(got) <= k
        assert all(p.start % grain == 0 for p in got)
        assert all(a.stop == b.start and a.stop > a.start for a, b in zip(got, got[1:],
                                                                        strict=False))


@pytest.fixture
def threads(monkeypatch):
    """Set minires's thread count for one test, restoring it afterwards; the
    test's small arrays are split too (no minimum size)."""
    monkeypatch.setattr(parallel, "MIN_PARALLEL_SIZE", 0)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_CHANNELS_SIZE", 0)
    before = parallel.threads()
    yield parallel.set_threads
    parallel.set_threads(before)


def _conv_bn_relu(x, w, stride, padding, dout, gamma, beta):
    out, c_cache = fast_conv.conv2d_forward(x, w, None, stride, padding)
    y, b_cache = fast_norm.batchnorm_forward(out, gamma, beta, None, None)
    z, r_cache = fast_activation.relu_forward(y)
    dy = fast_activation.relu_backward(dout, r_cache)
    dout_bn, dgamma, dbeta, *_ = fast_norm.batchnorm_backward(dy, b_cache)
    dx, dw, _ = fast_conv.conv2d_backward(dout_bn, c_cache)
    return z, dx, dw, dgamma, dbeta


@pytest.mark.parametrize("stride, c_in, c_out", [(1, 4, 4), (1, 2, 5), (2, 3, 6)])
def test_threads_give_the_single_thread_numbers(rng, threads, stride, c_in, c_out):
    """Convolution (every fast path: the shifted grid, col2im, stride 2), batch
    norm and ReLU on 1, 2 and 3 threads, on a batch of 5 images in chunks of
    2 (uneven parts): the same numbers to the last bit, so results do not
    depend on the machine's cores."""
    x = cnhw(rng.standard_normal((5, c_in, 9, 7)))
    w = rng.standard_normal((c_out, c_in, 3, 3))
    gamma, beta = rng.uniform(0.5, 1.5, c_out), rng.standard_normal(c_out)
    oh, ow = conv.conv2d_output_size((9, 7), (3, 3), (stride, stride), (1, 1))
    dout = rng.standard_normal((5, c_out, oh, ow))
    results = {}
    original = fast_conv.CHUNK_BYTES
    try:
        for n in (1, 2, 3):
            threads(n)
            # chunks of 2 images on every path (the im2col and the grid columns
            # of one image are about 1.5 and 2.7 KiB here)
            fast_conv.CHUNK_BYTES = 2 * 8 * 9 * c_in * 10 * 9 + 1
            results[n] = _conv_bn_relu(x, w, stride, 1, dout, gamma, beta)
    finally:
        fast_conv.CHUNK_BYTES = original
    for n in (2, 3):
        for name, a, b in zip(("out", "dx", "dw", "dgamma", "dbeta"), results[n], results[1],
                              strict=True):
            assert a.shape == b.shape, (n, name)
            np.testing.assert_array_equal(a, b, err_msg=f"{n} threads: {name}")


def _share_chunks(x, chunk, pause=0.02):
    """``over_chunks`` with a work that records which thread took which
    chunk. The other threads wait until the calling thread has its first
    chunk, and it then pauses ``pause`` s per chunk, so each thread, if
    there are several, gets some. Returns (results, {thread: chunks})."""
    import threading
    import time

    taken, started = {}, threading.Event()
    main = threading.current_thread()

    def work(chunks):
        mine = taken.setdefault(threading.current_thread().name, [])
        results = []
        for images in chunks:
            if threading.current_thread() is main:
                started.set()
                time.sleep(pause)
            else:
                started.wait(5)
            mine.append(images)
            results.append((images.start, images.stop))
        return results

    return parallel.over_chunks(work, x, chunk), taken


def test_over_chunks_hands_each_chunk_to_the_thread_that_asks(threads):
    """The calling thread is slow here: the other thread takes most chunks
    (fixed halves would give it 4 of the 9), every chunk is taken once, and
    the results come back in chunk order."""
    threads(2)
    results, taken = _share_chunks(np.zeros((17, 2)), 2, pause=0.05)
    want = [(a, min(a + 2, 17)) for a in range(0, 17, 2)]
    assert results == want
    assert sorted((s.start, s.stop) for part in taken.values() for s in part) == want
    assert len(taken) == 2
    assert max(len(part) for part in taken.values()) >= 7           # the faster thread's share


def test_over_chunks_rejects_work_that_loses_results_or_chunks(threads):
    threads(2)
    x = np.zeros((8, 2))
    with pytest.raises(RuntimeError, match="results"):       # one result short
        parallel.over_chunks(lambda chunks: [c.start for c in chunks][1:], x, 1)
    with pytest.raises(RuntimeError, match="before the end"):  # one chunk per thread only
        parallel.over_chunks(lambda chunks: [next(iter(chunks)).start], x, 1)


def test_threads_step_aside_when_blas_is_multithreaded(threads):
    """Two threads calling a multi-threaded OpenBLAS at once can give wrong
    products: over_chunks runs the work once, on all chunks, then."""
    from threadpoolctl import threadpool_limits

    threads(2)
    x = np.zeros((6, 2))
    assert len(_share_chunks(x, 1)[1]) == 2
    with threadpool_limits(limits=2, user_api="blas"):
        results, taken = _share_chunks(x, 1)
        assert list(taken.values()) == [[slice(k, k + 1) for k in range(6)]]
        assert results == [(k, k + 1) for k in range(6)]
    threads(1)
    assert len(_share_chunks(x, 1)[1]) == 1


def test_small_arrays_and_cupy_run_on_one_thread(threads, monkeypatch):
    threads(2)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_SIZE", 13)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_CHANNELS_SIZE", 17)
    # convolutions from 13 elements
    assert len(_share_chunks(np.zeros((3, 2, 2)), 1)[1]) == 1
    assert len(_share_chunks(np.zeros((4, 2, 2)), 1)[1]) == 2
    assert len(_share_chunks(strict(np.zeros((4, 4))), 1)[1]) == 1             # not NumPy
    # batch norm and ReLU from 17
    for x, want in [(np.zeros((2, 4, 2)), [slice(0, 4)]),
                    (np.zeros((2, 6, 2)), [slice(0, 3), slice(3, 6)])]:
        calls = []
        parallel.over_channels(calls.append, x)
        assert sorted(calls, key=lambda s: s.start) == want, x.shape
