"""Checkers for chapter 02's layers: forward/backward pairs with a cache (the
fully connected layer, ReLU, softmax cross-entropy)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..functional import (
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .core import MISSING, Check, CheckResult, as_float64, rel_error


def check_relu(forward: Callable, backward: Callable) -> CheckResult:
    """Check a ReLU pair: ``forward(x) -> (out, cache)``,
    ``backward(dout, cache) -> dx``.

    Compared with :func:`minires.functional.relu_forward` /
    ``relu_backward`` on a float64 input of shape (4, 3, 5, 5) kept away
    from the kink at 0, with a random upstream gradient. ``dout`` must come
    back unmodified.
    """
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 5))
    x += np.where(x >= 0, 0.1, -0.1)                 # no input near the kink
    dout = rng.standard_normal(x.shape)
    out_ref, cache_ref = relu_forward(x)
    dx_ref = relu_backward(dout, cache_ref)

    check = Check("check_relu")
    x_given = x.copy()
    parts = check.unpack("forward(x)", check.call("forward(x)", forward, x_given),
                         ["out", "cache"])
    check.unchanged("x", x, x_given, by="a forward pass")
    if parts is None:
        return check.result()
    out, cache = parts
    check.compare("out", out, out_ref, tol=1e-12, mistakes=[
        (x, "out equals x: the negative inputs must become 0."),
    ])
    dout_given = dout.copy()
    dx = check.call("backward(dout, cache)", backward, dout_given, cache)
    if dx is not MISSING:
        check.compare("dx", dx, dx_ref, tol=1e-12, mistakes=[
            (dout, "dx equals dout: the gradient must be 0 where the input was negative."),
            (dout * (x <= 0), "dx passes the gradient where x <= 0: the mask is inverted."),
        ])
    check.unchanged("dout", dout, dout_given)
    return check.result()



# ---- the fully connected layer -----------------------------------------------------

def _linear_case(n: int, d_in: int, d_out: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in))
    w = rng.standard_normal((d_out, d_in))
    b = rng.standard_normal(d_out)
    dout = rng.standard_normal((n, d_out))
    return x, w, b, dout


_LINEAR_OUT_T = ("out = x @ w: minires stores w as (out_features, in_features), PyTorch's "
                 "layout, so out = x @ w.T + b.")
_LINEAR_DX_T = ("dx = dout @ w.T: with w of shape (D_out, D_in), dx (N, D_in) = dout (N, D_out) "
                "@ w (D_out, D_in); no transpose.")
_LINEAR_DW_T = ("dw = x.T @ dout has shape (D_in, D_out), the transpose of w's: dw_ji = "
                "sum_n dout_nj x_ni, so dw = dout.T @ x, of shape (D_out, D_in) like w.")


def _linear_probe(check: Check, forward: Callable, backward: Callable) -> None:
    """After an exception on the rectangular case: run the student's pair on a
    square one, where a transposed factor gives wrong numbers instead of an
    error, and name the transposes found (hints only)."""
    x, w, b, dout = _linear_case(6, 4, 4, seed=11)
    probe = Check("probe")
    parts = probe.unpack("forward", probe.call("forward", forward, x.copy(), w.copy(), b.copy()),
                         ["out", "cache"])
    if parts is None:
        return
    out, cache = parts

    def close(got: object, wrong: np.ndarray) -> bool:
        arr = as_float64(got)
        return arr is not None and arr.shape == wrong.shape and rel_error(arr, wrong) < 1e-8

    if close(out, x @ w + b):
        check.hint(_LINEAR_OUT_T)
    grads = probe.unpack("backward", probe.call("backward", backward, dout.copy(), cache),
                         ["dx", "dw", "db"])
    if grads is None:
        return
    if close(grads[0], dout @ w.T):
        check.hint(_LINEAR_DX_T)
    if close(grads[1], x.T @ dout):
        check.hint(_LINEAR_DW_T)


def check_linear(forward: Callable, backward: Callable) -> CheckResult:
    """Check a fully connected pair with minires's signatures
    (:func:`minires.functional.linear_forward` / ``linear_backward``)::

        forward(x, w, b) -> (out, cache)        out = x @ w.T + b
            x (N, D_in), w (D_out, D_in) as nn.Linear.weight, b (D_out,), out (N, D_out)
        backward(dout, cache) -> (dx, dw, db)
            dout (N, D_out) -> dx (N, D_in), dw (D_out, D_in), db (D_out,)

    Compared with minires on float64 inputs with N=4, D_in=5, D_out=3 (so
    that every shape differs), and a random upstream gradient, which must
    come back unmodified. When the student's code raises (a transposed
    factor usually does on these shapes), it is run once more on square
    weights to name the transposed factor.
    """
    x, w, b, dout = _linear_case(4, 5, 3, seed=10)
    out_ref, cache_ref = linear_forward(x, w, b)
    dx_ref, dw_ref, db_ref = linear_backward(dout, cache_ref)

    check = Check("check_linear")
    given = (x.copy(), w.copy(), b.copy())
    parts = check.unpack("forward(x, w, b)", check.call("forward(x, w, b)", forward, *given),
                         ["out", "cache"])
    for name, before, after in zip("xwb", (x, w, b), given, strict=True):
        check.unchanged(name, before, after, by="a forward pass")
    if parts is not None:
        out, cache = parts
        check.compare("out", out, out_ref, tol=1e-12, mistakes=[
            (x @ w.T, "out is missing the bias: out = x @ w.T + b."),
            (x @ w.T - b, "the bias is subtracted: out = x @ w.T + b."),
        ])
        dout_given = dout.copy()
        grads = check.unpack("backward(dout, cache)",
                             check.call("backward(dout, cache)", backward, dout_given, cache),
                             ["dx", "dw", "db"])
        if grads is not None:
            dx, dw, db = grads
            check.compare("dx", dx, dx_ref, tol=1e-12)
            check.compare("dw", dw, dw_ref, tol=1e-12, mistakes=[
                (x.T @ dout, _LINEAR_DW_T),
                (dw_ref / 4, "dw is divided by N: the layer's gradient is a sum over the batch; "
                             "the mean over the batch is the loss's job (its 1/N reaches dout)."),
            ])
            check.compare("db", db, db_ref, tol=1e-12, mistakes=[
                (dout, "db has one row per sample: the bias is used by every sample, so its "
                       "gradient sums theirs: db = dout.sum(axis=0)."),
                (dout.sum(axis=1), "db is summed over the wrong axis: sum over the batch "
                                   "(axis=0), keeping one entry per output feature."),
                (dout.mean(axis=0), "db is the mean of dout over the batch, not the sum: "
                                    "every sample adds its dout to the bias's gradient."),
            ])
        check.unchanged("dout", dout, dout_given)
    if check.implemented and any(" raised " in line for line in check.lines):
        _linear_probe(check, forward, backward)
    return check.result()


# ---- softmax cross-entropy -----------------------------------------------------------

def _cross_entropy_parts(logits: np.ndarray, y: np.ndarray, e: float = 0.0,
                         off_classes: bool = False) -> tuple[float, np.ndarray, np.ndarray]:
    """Loss, softmax p and target q (e / K everywhere, or e / (K - 1) on the
    other classes when ``off_classes``; the latter a convention to recognise)."""
    n, k = logits.shape
    onehot = np.eye(k)[y]
    q = (1 - e) * onehot + (e / (k - 1) * (1 - onehot) if off_classes else e / k)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-(q * logp).sum() / n), np.exp(logp), q


def check_softmax_cross_entropy(forward: Callable, backward: Callable) -> CheckResult:
    """Check a softmax cross-entropy pair with minires's signatures
    (:func:`minires.functional.softmax_cross_entropy_forward` / ``_backward``)::

        forward(logits, y, label_smoothing=0.0) -> (loss, cache)
            logits (N, K) float, y (N,) integer classes in [0, K);
            q = (1 - e) * onehot(y) + e / K  (e = label_smoothing, PyTorch's convention)
            loss = -(1/N) * sum_n sum_k q[n, k] * log softmax(logits[n])[k], a scalar
        backward(dout, cache) -> dlogits
            dout a python float (1.0 at the end of the graph) -> dlogits (N, K)
            = dout * (softmax(logits) - q) / N

    Three cases, each compared with minires (float64, N=5, K=4): plain
    targets with ``dout = 0.5`` (so an ignored ``dout`` shows); label
    smoothing 0.1; logits around 1000, where an exp without the row maximum
    subtracted first overflows. The logits passed in must come back unmodified.
    """
    rng = np.random.default_rng(20)
    n, k = 5, 4
    logits = rng.standard_normal((n, k)) * 2
    y = np.array([0, 3, 1, 1, 2])
    check = Check("check_softmax_cross_entropy")

    def run(label: str, z: np.ndarray, e: float | None, dout: float,
            loss_mistakes: list, grad_mistakes: list, hint_nonfinite: bool = False) -> None:
        kwargs = {} if e is None else {"label_smoothing": e}
        loss_ref, cache_ref = softmax_cross_entropy_forward(z, y, e or 0.0)
        grad_ref = softmax_cross_entropy_backward(dout, cache_ref)
        z_given = z.copy()
        what = f"forward(logits, y{', label_smoothing=' + str(e) if e is not None else ''})"
        parts = check.unpack(what, check.call(what, forward, z_given, y.copy(), **kwargs),
                             ["loss", "cache"])
        if parts is None:
            return
        if not np.array_equal(z_given, z):
            check.fail(f"{label}: the logits were modified in place; compute z = logits - max "
                       "into a new array")
        loss, cache = parts
        arr = as_float64(loss)
        if hint_nonfinite and arr is not None and not np.all(np.isfinite(arr)):
            check.fail(f"WRONG   loss{label}: {float(arr.ravel()[0]) if arr.size else arr}")
            check.hint("exp(1000) overflows to inf, and log(inf / inf) is NaN. Subtract each "
                       "row's maximum first, and compute log softmax(z) = z - log(sum(exp(z))) "
                       "on the shifted z (the log-sum-exp trick).")
            return
        check.compare(f"loss{label}", loss, loss_ref, tol=1e-10, mistakes=loss_mistakes)
        grad = check.call(f"backward({dout}, cache)", backward, dout, cache)
        if grad is not MISSING:
            ok = check.compare(f"dlogits{label}", grad, grad_ref, tol=1e-10,
                               mistakes=grad_mistakes)
            arr = as_float64(grad)
            if not ok and hint_nonfinite and arr is not None and not np.all(np.isfinite(arr)):
                check.hint("softmax(z) for logits around 1000 needs the row maximum subtracted "
                           "before exp, in the backward pass too (or keep p in the cache).")

    loss0, p, q = _cross_entropy_parts(logits, y)
    dout = 0.5
    run("", logits, None, dout,
        loss_mistakes=[
            (loss0 * n, "the loss is the sum over the batch: divide by N (the mean makes the "
                        "loss, and the step size, independent of the batch size)."),
            (loss0 / k, "the loss is divided by N * K: average over the N samples only."),
        ],
        grad_mistakes=[
            (dout * (p - q), "dlogits is missing the 1/N of the mean: dout * (p - q) / N."),
            (dout * p / n, "dlogits = p / N: subtract the target q (the one-hot of y), "
                           "dout * (p - q) / N."),
            ((p - q) / n, "dout is ignored: the gradient of dout * loss is dout * (p - q) / N "
                          "(here dout is 0.5)."),
            (dout * (p - q) / (n * k), "dlogits is divided by N * K: divide by N only."),
        ])
    if not check.implemented:
        return check.result()
    e = 0.1
    loss_s, _, q_s = _cross_entropy_parts(logits, y, e)
    loss_off, _, q_off = _cross_entropy_parts(logits, y, e, off_classes=True)
    run(" (label_smoothing=0.1)", logits, e, 1.0,
        loss_mistakes=[
            (loss0, "label_smoothing is ignored: the target is q = (1 - e) * onehot + e / K."),
            (loss_off, "the smoothing spreads e over the K - 1 other classes; PyTorch's (and "
                       "minires's) convention spreads e / K over all K: q = (1 - e) * onehot "
                       "+ e / K."),
        ],
        grad_mistakes=[
            ((p - q) / n, "label_smoothing is ignored in the gradient: (p - q) / N with the "
                          "smoothed q."),
            ((p - q_off) / n, "the smoothing spreads e over the K - 1 other classes; use "
                              "q = (1 - e) * onehot + e / K."),
        ])
    big = logits * 10 + 1000.0
    run(" (logits around 1000)", big, None, 1.0, loss_mistakes=[], grad_mistakes=[],
        hint_nonfinite=True)
    return check.result()
