"""The engine's batch norm: the arithmetic of ``minires/functional/norm.py``,
a few channels at a time over the CPU threads.

Stands in for: ``batchnorm_forward`` and ``batchnorm_backward`` of
``minires.functional.norm`` in training mode, with the same signatures and
the same numbers to the last bit (the tests compare them). Eval mode, and
arrays outside NumPy and CuPy, go to the reference.

Batch norm is independent channel by channel, so the channels can be cut
into parts (``minires.fast.parallel.over_channels``) that run at the same
time. Each part repeats the reference's arithmetic on its slice of the
channels, with the reference's own per-channel sums (``channel_sum``,
``channel_dot``, whose result for a channel does not depend on the other
channels summed in the same call), writing into its slices of preallocated
arrays through ``out=`` (outside the Array API standard), so no full-size
temporary is made.

What it buys, measured with ``benchmarks/engine.py`` (ResNet-20's shapes,
batch 128, float32, the 2-core development VM while other work shared it):
on one thread nothing (0.96-1.03x the reference's speed: the same arithmetic);
on two, timed alone, 0.5-1.1x of the reference's speed, and in a training
step 1.00-1.01x (0.96-1.21x over repetitions): the parts of each call wait for
the other thread, and a busy machine makes them wait longer. When it was
written, on the same VM without other work, batch norm took about 0.6x the
time of the single-threaded code on arrays from 2**19 elements
(``parallel.MIN_PARALLEL_CHANNELS_SIZE``; smaller ones stay on one thread).
"""

from __future__ import annotations

from .. import backend
from ..backend import Array
from ..functional import norm as reference
from ..functional.norm import BatchNormCache, channel_dot, channel_sum, per_channel
from . import parallel


def batchnorm_forward(x: Array, gamma: Array, beta: Array, running_mean: Array | None,
                      running_var: Array | None, training: bool = True,
                      momentum: float = 0.1, eps: float = 1e-5) -> tuple[Array, BatchNormCache]:
    """``minires.functional.norm.batchnorm_forward``, part by part of the
    channels over the CPU threads (training mode, NumPy and CuPy; anything
    else goes to the reference).

    Measured: see the module docstring (about the reference's speed here).

    Parameters
    ----------
    x : (N, C, H, W) or (N, C), floating point
    gamma, beta : (C,), dtype of ``x``
    running_mean, running_var : (C,) or None in training mode; never modified
    training, momentum, eps : as in the reference

    Returns
    -------
    out : shape, dtype and memory layout of ``x``
    cache : ``BatchNormCache``, as the reference's
    """
    if not (training and backend.is_numpy_like(backend.namespace(x))):
        return reference.batchnorm_forward(x, gamma, beta, running_mean, running_var,
                                           training, momentum, eps)
    count = reference.check_batchnorm(x, gamma, beta, running_mean, running_var, training,
                                      "batchnorm_forward")
    xp = backend.namespace(x)
    lib, ndim = backend.native(xp), x.ndim
    out, xc = lib.empty_like(x), lib.empty_like(x)

    def channels(ch: slice) -> tuple[Array, Array, Array]:
        x_part, xc_part, out_part = x[:, ch], xc[:, ch], out[:, ch]
        mean = channel_sum(x_part) / count
        lib.subtract(x_part, per_channel(mean, ndim), out=xc_part)
        var = channel_dot(xc_part, xc_part) / count
        inv_std = 1.0 / xp.sqrt(var + eps)
        lib.multiply(xc_part, per_channel(gamma[ch] * inv_std, ndim), out=out_part)
        out_part += per_channel(beta[ch], ndim)
        return mean, var, inv_std

    parts = parallel.over_channels(channels, x)
    mean, var, inv_std = (xp.concat([p[k] for p in parts]) for k in range(3))
    return out, BatchNormCache(True, xc, gamma, inv_std, mean, var, count)


def batchnorm_backward(dout: Array, cache: BatchNormCache, need_param_grads: bool = True
                       ) -> tuple[Array, Array | None, Array | None, None, None]:
    """``minires.functional.norm.batchnorm_backward``, part by part of the
    channels over the CPU threads (a training-mode cache, NumPy and CuPy;
    anything else goes to the reference).

    Measured: see the module docstring (about the reference's speed here).

    Parameters
    ----------
    dout : shape of ``x`` (left untouched)
    cache : from either ``batchnorm_forward``
    need_param_grads : False returns None for ``dgamma`` and ``dbeta``

    Returns
    -------
    dx : shape and dtype of ``x``
    dgamma, dbeta : (C,), or None when ``need_param_grads`` is False
    None, None : for ``running_mean`` and ``running_var``
    """
    xc, gamma, inv_std, m = cache.xc, cache.gamma, cache.inv_std, cache.count
    if not (cache.training and tuple(dout.shape) == tuple(xc.shape)
            and backend.is_numpy_like(backend.namespace(dout, xc))):
        return reference.batchnorm_backward(dout, cache, need_param_grads)
    xp = backend.namespace(dout, xc)
    lib, ndim = backend.native(xp), xc.ndim
    dx = lib.empty_like(dout)

    def channels(ch: slice) -> tuple[Array, Array]:
        dout_part, xc_part, dx_part = dout[:, ch], xc[:, ch], dx[:, ch]
        dbeta = channel_sum(dout_part)
        dgamma = channel_dot(dout_part, xc_part) * inv_std[ch]
        lib.multiply(xc_part, per_channel(-inv_std[ch] * dgamma / m, ndim), out=dx_part)
        dx_part += dout_part
        dx_part -= per_channel(dbeta / m, ndim)
        dx_part *= per_channel(gamma[ch] * inv_std[ch], ndim)
        return dgamma, dbeta

    parts = parallel.over_channels(channels, xc)
    if not need_param_grads:
        return dx, None, None, None, None
    dgamma, dbeta = (xp.concat([p[k] for p in parts]) for k in range(2))
    return dx, dgamma, dbeta, None, None
