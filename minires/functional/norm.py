"""Batch normalization (Ioffe and Szegedy 2015), PyTorch's conventions.

Shapes: ``x`` (N, C, H, W) or (N, C); ``gamma``, ``beta``, ``running_mean``,
``running_var`` (C,). Statistics are per channel over the M = N*H*W (or N)
values of that channel.

Training mode normalizes with the batch statistics, ``mean`` and the *biased*
variance ``var = mean((x - mean)**2)``, with ``eps`` inside the square root::

    xhat = (x - mean) / sqrt(var + eps)
    out  = gamma * xhat + beta

Eval mode uses ``running_mean`` and ``running_var`` instead: a fixed affine
map of ``x`` per channel.

The forward pass is pure: it does not touch the running statistics.
``batchnorm_running_update`` returns the new ones, PyTorch's rule with the
*unbiased* variance and ``momentum`` the weight of the new batch::

    running_mean = (1 - momentum) * running_mean + momentum * mean
    running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)

Backward in training mode (every sum is per channel over the M values)::

    dbeta  = sum(dout)
    dgamma = sum(dout * xhat)
    dx     = gamma / (M * sqrt(var + eps)) * (M * dout - dbeta - xhat * dgamma)

The last line is the compact form of the chain rule through ``mean`` and
``var``: ``dout`` minus its projections onto the constant direction and onto
``xhat``, the two directions the normalization removes. In eval mode the
statistics are constants and ``dx = gamma / sqrt(running_var + eps) * dout``.

float32 accuracy: a per-channel sum over N*H*W values, taken naively along the
non-contiguous N axis, adds the values one after another and can lose two
digits for large batches. Here every per-channel reduction is a product in
BLAS over one row per channel (``channel_rows``): ``channel_sum`` multiplies
the rows by a ones vector, ``channel_dot`` takes one dot product per channel
(the variance and ``dgamma`` without forming the full-size products). BLAS
accumulates in many independent partial sums, so the float32 results stay
within about 1e-7 of float64, and a reduction reads its input once, 2 to 4x
faster than the elementwise product and sum it replaces. The rows are a free
view of memory laid out (C, N, H, W), the layout of ``conv2d_forward``'s
outputs; any other layout is copied into rows first.

The engine: on NumPy and CuPy, ``minires.fast.norm.batchnorm_forward`` and
``batchnorm_backward`` (``minires/fast/norm.py``) stand in for the pair here
in training mode, with the same signatures and results: the same arithmetic,
a few channels at a time over the CPU threads, into preallocated arrays. The
public ops ``minires.functional.batchnorm_forward`` ... choose between the two
(see ``minires/functional/__init__.py``); ``MINIRES_FAST=0`` runs this file's
code everywhere.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import backend
from ..backend import Array


class BatchNormCache(NamedTuple):
    """What ``batchnorm_backward`` (and ``batchnorm_running_update``) need."""

    training: bool       # batch statistics (True) or running statistics (False)
    xc: Array            # centred input, shape of x: x - mean (eval: x - running_mean)
    gamma: Array         # (C,)
    inv_std: Array       # (C,) 1 / sqrt(var + eps)
    mean: Array | None   # (C,) batch mean; None in eval mode
    var: Array | None    # (C,) biased batch variance; None in eval mode
    count: int           # M, the number of values per channel


def per_channel(v: Array, ndim: int) -> Array:
    """(C,) -> (1, C, 1, 1) for ndim 4, (1, C) for ndim 2: broadcasts against x."""
    xp = backend.namespace(v)
    return xp.reshape(v, (1, v.shape[0]) + (1,) * (ndim - 2))


def channel_rows(a: Array) -> Array:
    """(N, C, H, W) -> (C, N*H*W), or (N, C) -> (C, N): one row per channel.

    A view when ``a`` is stored channel by channel ((C, N, H, W) memory, as
    ``conv2d_forward`` lays out its output); otherwise the reshape copies it
    (in C order, so the rows, and every reduction over them, do not depend on
    the memory layout of ``a``).
    """
    xp = backend.namespace(a)
    axes = (1, 0, 2, 3) if a.ndim == 4 else (1, 0)
    # through 1-D: a copy in C order unless the rows already are (a plain
    # reshape of a 2-D transpose to its own shape would keep its layout)
    return xp.reshape(xp.reshape(xp.permute_dims(a, axes), (-1,)), (a.shape[1], -1))


def channel_sum(a: Array) -> Array:
    """Per-channel sum of ``a`` (N, C, H, W) over (N, H, W), or of (N, C) over N.

    Returns (C,): one product ``row @ ones`` per channel in BLAS, accurate in
    float32 (module docstring).
    """
    xp = backend.namespace(a)
    rows = channel_rows(a)
    c, m = rows.shape
    # a stack of C products (1, M) @ (M, 1), not one (C, M) @ (M,): each
    # channel's sum is then the same whichever other channels are summed in
    # the same call (BLAS's matrix-vector kernels take rows in blocks), so the
    # engine, which sums a few channels at a time, gives these numbers to the
    # last bit
    sums = xp.matmul(xp.reshape(rows, (c, 1, m)), xp.ones((m, 1), dtype=a.dtype))
    return xp.reshape(sums, (c,))


def channel_dot(a: Array, b: Array) -> Array:
    """Per-channel sum of ``a * b`` (same shapes as for ``channel_sum``), as one
    dot product per channel: a stack of C products (1, M) @ (M, 1), so the
    full-size array ``a * b`` is never formed. Returns (C,).
    """
    xp = backend.namespace(a, b)
    rows_a, rows_b = channel_rows(a), channel_rows(b)
    c, m = rows_a.shape
    dots = xp.matmul(xp.reshape(rows_a, (c, 1, m)), xp.reshape(rows_b, (c, m, 1)))
    return xp.reshape(dots, (c,))


def check_batchnorm(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any,
                    training: bool, op: str) -> int:
    """Validate the arguments of ``batchnorm_forward``; return M, the number of
    values per channel."""
    ndim = getattr(x, "ndim", None)
    if ndim not in (2, 4):
        got = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"{op}: expected x of shape (N, C, H, W) or (N, C), got {got}")
    if not backend.namespace(x).isdtype(x.dtype, "real floating"):
        raise ValueError(f"{op}: expected a floating-point x, got dtype {x.dtype}")
    c = x.shape[1]
    _check_vector(gamma, "gamma", c, x, op)
    _check_vector(beta, "beta", c, x, op)
    if not training or running_mean is not None:
        _check_vector(running_mean, "running_mean", c, x, op)
    if not training or running_var is not None:
        _check_vector(running_var, "running_var", c, x, op)
    count = x.shape[0] * (x.shape[2] * x.shape[3] if ndim == 4 else 1)
    if training and count < 2:
        raise ValueError(f"{op}: expected more than 1 value per channel when training, "
                         f"got input of shape {tuple(x.shape)}")
    return count


def _check_vector(v: Any, name: str, c: int, x: Array, op: str) -> None:
    if tuple(getattr(v, "shape", ())) != (c,):
        got = tuple(v.shape) if hasattr(v, "shape") else type(v).__name__
        raise ValueError(f"{op}: expected {name} of shape ({c},) for x of shape "
                         f"{tuple(x.shape)}, got {got}")
    if v.dtype != x.dtype:
        raise ValueError(f"{op}: expected {name} of dtype {x.dtype} (the dtype of x), "
                         f"got {v.dtype}")


def batchnorm_forward(x: Array, gamma: Array, beta: Array, running_mean: Array | None,
                      running_var: Array | None, training: bool = True,
                      momentum: float = 0.1, eps: float = 1e-5) -> tuple[Array, BatchNormCache]:
    """Normalize each channel, then scale by ``gamma`` and shift by ``beta``.

    Parameters
    ----------
    x : (N, C, H, W) or (N, C), floating point
    gamma, beta : (C,), dtype of ``x``
    running_mean, running_var : (C,), dtype of ``x``; read in eval mode only,
        never modified (may be None in training mode)
    training : True: batch statistics; False: running statistics
    momentum : not used here (the forward pass is pure); it belongs to
        ``batchnorm_running_update`` and is accepted so the call reads like
        ``torch.nn.functional.batch_norm``
    eps : added to the variance inside the square root

    Returns
    -------
    out : shape and dtype of ``x``
    cache : ``BatchNormCache``, for ``batchnorm_backward`` and, in training
        mode, ``batchnorm_running_update``
    """
    count = check_batchnorm(x, gamma, beta, running_mean, running_var, training,
                            "batchnorm_forward")
    xp, ndim = backend.namespace(x), x.ndim
    if training:
        mean = channel_sum(x) / count
        xc = x - per_channel(mean, ndim)                # x centred: xhat = xc * inv_std
        var = channel_dot(xc, xc) / count               # biased, as PyTorch normalizes
        inv_std = 1.0 / xp.sqrt(var + eps)
    else:
        mean = var = None
        inv_std = 1.0 / xp.sqrt(running_var + eps)
        xc = x - per_channel(running_mean, ndim)
    # out = gamma * xhat + beta = (gamma * inv_std) * xc + beta: xhat itself is
    # never formed (one full-size pass fewer); the cache keeps xc.
    out = xc * per_channel(gamma * inv_std, ndim)
    out += per_channel(beta, ndim)
    return out, BatchNormCache(bool(training), xc, gamma, inv_std, mean, var, count)


def batchnorm_running_update(running_mean: Array, running_var: Array, cache: BatchNormCache,
                             momentum: float = 0.1) -> tuple[Array, Array]:
    """New running statistics after one training batch (new arrays; the old
    ones are untouched).

    Parameters
    ----------
    running_mean, running_var : (C,)
    cache : from ``batchnorm_forward`` in training mode
    momentum : weight of the new batch (PyTorch's meaning; 0.1 by default)

    Returns
    -------
    new_running_mean : ``(1 - momentum) * running_mean + momentum * mean``, (C,)
    new_running_var : ``(1 - momentum) * running_var + momentum * var * M/(M-1)``,
        (C,), with the unbiased batch variance
    """
    if not cache.training:
        raise ValueError("batchnorm_running_update: expected a cache from training mode "
                         "(batch statistics), got one from eval mode")
    m = float(momentum)
    unbiased_var = cache.var * (cache.count / (cache.count - 1))
    new_mean = (1.0 - m) * running_mean + m * cache.mean
    new_var = (1.0 - m) * running_var + m * unbiased_var
    return new_mean, new_var


def batchnorm_backward(dout: Array, cache: BatchNormCache, need_param_grads: bool = True
                       ) -> tuple[Array, Array | None, Array | None, None, None]:
    """Gradients of batch norm, for a training-mode or an eval-mode cache.

    Parameters
    ----------
    dout : shape of ``x`` (left untouched)
    cache : from ``batchnorm_forward``
    need_param_grads : False returns None for ``dgamma`` and ``dbeta``

    Returns
    -------
    dx : shape and dtype of ``x``
    dgamma, dbeta : (C,), or None when ``need_param_grads`` is False
    None, None : for ``running_mean`` and ``running_var``, so that the
        positions line up with ``batchnorm_forward``'s arguments
    """
    xc, gamma, inv_std, m = cache.xc, cache.gamma, cache.inv_std, cache.count
    if tuple(dout.shape) != tuple(xc.shape):
        raise ValueError(f"batchnorm_backward: expected dout of shape {tuple(xc.shape)}, "
                         f"got {tuple(dout.shape)}")
    ndim = xc.ndim
    dgamma = dbeta = None
    if need_param_grads or cache.training:
        dbeta = channel_sum(dout)
        dgamma = channel_dot(dout, xc) * inv_std        # sum(dout * xhat), xhat = xc * inv_std
    if cache.training:
        # dx = gamma * inv_std * (dout - dbeta / M - xhat * dgamma / M), built
        # in place in one new buffer, starting from the xhat term (4 passes
        # over the data; the one-line expression takes 7 and 4 buffers)
        dx = xc * per_channel(-inv_std * dgamma / m, ndim)
        dx += dout
        dx -= per_channel(dbeta / m, ndim)
        dx *= per_channel(gamma * inv_std, ndim)
    else:
        dx = dout * per_channel(gamma * inv_std, ndim)
    if not need_param_grads:
        dgamma = dbeta = None
    return dx, dgamma, dbeta, None, None
