"""Checkers for chapter 04's exercises: batch normalization in training mode.

Expected values come from :mod:`minires.functional` (``batchnorm_forward``
and ``batchnorm_backward`` in training mode). The typical wrong answers that
get a hint are computed here in plain NumPy by :func:`_batchnorm_variant`, a
batch norm with one switch per mistake.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..functional import batchnorm_backward, batchnorm_forward
from .core import Check, CheckResult, largest_error

TOL = 1e-9
"""A correct float64 answer is within about 1e-15 of minires's, whichever
order it sums in."""

EPS = 1e-5

# (N, C, H, W) shapes: the first has a channel of small variance (1e-4, so
# that eps matters) and H*W > 1 (so that statistics per activation differ
# from statistics per channel); the last is a batch of 1x1 maps, M = N = 16.
BN_CONFIGS = [(4, 3, 5, 5), (6, 2, 3, 4), (16, 4, 1, 1)]


def _inputs(shape, seed: int):
    """x with a different mean and spread in each channel (one of them tiny),
    gamma away from 1 and from 0, beta, and a random upstream gradient."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    mean = rng.uniform(-3.0, 3.0, c)
    spread = rng.uniform(0.5, 3.0, c)
    spread[0] = 0.01                                     # variance 1e-4: eps visible
    x = mean.reshape(1, -1, 1, 1) + spread.reshape(1, -1, 1, 1) * rng.standard_normal(shape)
    gamma = rng.uniform(0.5, 2.0, c)
    beta = rng.standard_normal(c)
    dout = rng.standard_normal(shape)
    return x, gamma, beta, dout


def _batchnorm_variant(x, gamma, beta, dout, eps=EPS, axes=(0, 2, 3), ddof=0,
                       eps_outside=False, mean_term=True, var_term=True):
    """Batch norm's (out, dx, dgamma, dbeta), exactly, for the right answer
    (the defaults) or one with a typical mistake:

    - ``axes``: the axes the statistics are taken over ((0, 2, 3) per
      channel; (0,) per activation; (1, 2, 3) per image; (2, 3) per image
      and channel);
    - ``ddof=1``: the unbiased variance, ``sum(xc**2) / (M - 1)``;
    - ``eps_outside``: ``xc / (sqrt(var) + eps)``;
    - ``mean_term=False``: the gradient through the batch mean dropped;
    - ``var_term=False``: the gradient through the batch variance dropped.

    With ``xhat = xc * s(v)``, ``v = sum(xc**2) / D``, ``g = gamma * dout``:
    ``dxc = s * g + xc * s'(v) * 2 / D * sum(g * xc)`` (the variance path),
    then ``dx = dxc - mean(dxc)`` (the mean path).
    """
    g4 = gamma.reshape(1, -1, 1, 1)
    m = int(np.prod([x.shape[a] for a in axes]))
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    d = m - ddof
    v = (xc ** 2).sum(axis=axes, keepdims=True) / d
    if eps_outside:
        s = 1.0 / (np.sqrt(v) + eps)
        ds = -s ** 2 / (2.0 * np.sqrt(v))
    else:
        s = 1.0 / np.sqrt(v + eps)
        ds = -0.5 * s ** 3
    xhat = xc * s
    out = g4 * xhat + beta.reshape(1, -1, 1, 1)
    g = g4 * dout
    dxc = s * g
    if var_term:
        dxc = dxc + xc * ds * (2.0 / d) * (g * xc).sum(axis=axes, keepdims=True)
    dx = dxc - dxc.mean(axis=axes, keepdims=True) if mean_term else dxc
    return out, dx, (dout * xhat).sum(axis=(0, 2, 3)), dout.sum(axis=(0, 2, 3))


def _mistakes(x, gamma, beta, dout):
    """(out, dx, dgamma, dbeta) mistake lists for :meth:`Check.compare`."""
    v = {name: _batchnorm_variant(x, gamma, beta, dout, **kw) for name, kw in {
        "per activation": {"axes": (0,)},
        "per image": {"axes": (1, 2, 3)},
        "per image and channel": {"axes": (2, 3)},
        "unbiased": {"ddof": 1},
        "eps outside": {"eps_outside": True},
        "no mean term": {"mean_term": False},
        "no var term": {"var_term": False},
        "no statistics terms": {"mean_term": False, "var_term": False},
    }.items()}
    out_ref, dx_ref, _, _ = _batchnorm_variant(x, gamma, beta, dout)
    per_activation = ("the statistics are taken per activation, over N only: batch norm after "
                      "a convolution normalizes each CHANNEL over (N, H, W), mean and var of "
                      "shape (1, C, 1, 1) (axis=(0, 2, 3)), so that every pixel of a feature "
                      "map is treated alike.")
    per_image = ("the statistics are taken over each image (axis=(1, 2, 3), that is layer "
                 "norm): batch norm takes them per channel over the batch, axis=(0, 2, 3).")
    per_map = ("the statistics are taken over each image's map (axis=(2, 3), that is instance "
               "norm): batch norm takes them per channel over the batch, axis=(0, 2, 3).")
    unbiased = ("the normalization uses the unbiased variance (divided by M - 1): batch norm "
                "normalizes with the biased variance, mean((x - mean)**2), divided by M = "
                "N*H*W. The unbiased one belongs only to the running variance.")
    eps_outside = ("eps is outside the square root, (x - mean) / (sqrt(var) + eps): it goes "
                   "inside, (x - mean) / sqrt(var + eps), as in PyTorch (and in the backward "
                   "pass, d/dvar of (var + eps)**-0.5).")
    no_gamma = ("out is the normalized x without gamma and beta: out = gamma * xhat + beta, "
                "with gamma and beta of shape (C,) broadcast as (1, C, 1, 1).")
    out_m = [(v["per activation"][0], per_activation), (v["per image"][0], per_image),
             (v["per image and channel"][0], per_map), (v["unbiased"][0], unbiased),
             (v["eps outside"][0], eps_outside),
             ((out_ref - beta.reshape(1, -1, 1, 1)) / gamma.reshape(1, -1, 1, 1), no_gamma)]
    dx_m = [
        (v["no mean term"][1], "dx is missing the gradient through the batch mean: mean "
         "depends on every x, so dx has a term -sum(dout * gamma * inv_std) / M per channel "
         "(in the compact form, the -sum(dout) = -dbeta term)."),
        (v["no var term"][1], "dx is missing the gradient through the batch variance: var "
         "depends on every x, so dx has a term -xhat * sum(dout * xhat) / M per channel, times "
         "gamma * inv_std (in the compact form, the -xhat * dgamma term)."),
        (v["no statistics terms"][1], "dx treats mean and var as constants (dx = gamma * "
         "inv_std * dout): that is the eval-mode gradient. In training mode both statistics "
         "depend on x and each adds a term."),
        (dx_ref / gamma.reshape(1, -1, 1, 1), "dx is missing the factor gamma: out = gamma * "
         "xhat + beta, so dxhat = gamma * dout."),
        (np.zeros_like(dx_ref), "dx is zero everywhere. That is the exact gradient of "
         "sum(out), which does not depend on x (each channel of out sums to M * beta), but "
         "not of a loss with a random dout."),
        (v["per activation"][1], per_activation), (v["per image"][1], per_image),
        (v["per image and channel"][1], per_map), (v["unbiased"][1], unbiased),
        (v["eps outside"][1], eps_outside),
    ]
    one = "one number per channel, shape (C,): sum over the images and the pixels, axis=(0, 2, 3)"
    xc_hint = ("dgamma = sum(dout * xhat), with xhat the normalized input, not x itself or "
               "x - mean.")
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    dgamma_m = [((dout * x).sum(axis=(0, 2, 3)), xc_hint),
                ((dout * (x - mean)).sum(axis=(0, 2, 3)), xc_hint)]
    dgamma_m += [((dout * ((x - mean) / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + EPS)))
                  .sum(axis=axes), f"dgamma has {one}.") for axes in [0, (2, 3), (0, 2)]]
    dbeta_m = [(dout.sum(axis=axes), f"dbeta has {one}.") for axes in [0, (2, 3), (0, 2)]]
    return out_m, dx_m, dgamma_m, dbeta_m


def _check_batchnorm_config(forward, backward, shape, seed: int) -> tuple[Check, float]:
    x, gamma, beta, dout = _inputs(shape, seed)
    out_ref, cache_ref = batchnorm_forward(x, gamma, beta, None, None, training=True, eps=EPS)
    dx_ref, dgamma_ref, dbeta_ref = batchnorm_backward(dout, cache_ref)[:3]
    out_m, dx_m, dgamma_m, dbeta_m = _mistakes(x, gamma, beta, dout)

    check = Check("check_batchnorm")
    what = "forward(x, gamma, beta, eps=1e-5)"
    given = (x.copy(), gamma.copy(), beta.copy())
    parts = check.unpack(what, check.call(what, forward, *given, EPS), ["out", "cache"])
    for name, before, after in zip(("x", "gamma", "beta"), (x, gamma, beta), given,
                                   strict=True):
        check.unchanged(name, before, after, by="a forward pass")
    if parts is None:
        return check, float("nan")
    out, cache = parts
    check.compare("out", out, out_ref, TOL, mistakes=out_m)
    dout_given = dout.copy()
    what = "backward(dout, cache)"
    grads = check.unpack(what, check.call(what, backward, dout_given, cache),
                         ["dx", "dgamma", "dbeta"])
    if grads is None:
        return check, float("nan")
    dx, dgamma, dbeta = grads
    check.compare("dx", dx, dx_ref, TOL, mistakes=dx_m)
    check.compare("dgamma", dgamma, dgamma_ref, TOL, mistakes=dgamma_m)
    check.compare("dbeta", dbeta, dbeta_ref, TOL, mistakes=dbeta_m)
    check.unchanged("dout", dout, dout_given)
    if check.failed:
        return check, float("nan")
    pairs = [(out, out_ref), (dx, dx_ref), (dgamma, dgamma_ref), (dbeta, dbeta_ref)]
    return check, largest_error(pairs)


def check_batchnorm(forward: Callable, backward: Callable) -> CheckResult:
    """Check batch norm in training mode over the channels of (N, C, H, W).

    Parameters
    ----------
    forward : ``forward(x, gamma, beta, eps=1e-5) -> (out, cache)``: x
        (N, C, H, W), gamma and beta (C,); statistics per channel over
        (N, H, W), the biased variance, eps inside the square root. The
        cache is yours: only ``out`` and the gradients are compared.
    backward : ``backward(dout, cache) -> (dx, dgamma, dbeta)`` with the
        shapes of x, gamma and beta; it must leave ``dout`` untouched.

    Compared with ``minires.functional.batchnorm_forward`` /
    ``batchnorm_backward`` (training mode) on three shapes, with channels of
    different means and spreads (one with variance 1e-4, where eps matters),
    gamma away from 1 and a **random** upstream gradient (through
    ``sum(out)`` every dx that sums to zero per channel would pass). Stops at
    the first shape that fails. Hints for: statistics per activation (over N
    only), per image or per map; the unbiased variance in the normalization;
    eps outside the square root; a dx without the term through the mean, the
    variance or both; gamma missing; dgamma from x instead of xhat; sums over
    the wrong axes.
    """
    result = Check("check_batchnorm")
    for k, shape in enumerate(BN_CONFIGS):
        header = f"x {shape}"
        sub, err = _check_batchnorm_config(forward, backward, shape, seed=k)
        summary = (f"ok      {header}: out, dx, dgamma, dbeta match (largest relative error "
                   f"{err:.1e}; a correct answer is below {TOL:.0e})")
        if not result.merge(sub, header, summary, left=len(BN_CONFIGS) - k - 1,
                            what="shapes"):
            break
    return result.result()

