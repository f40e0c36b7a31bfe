"""Checker for chapter 11's exercise: a grouped convolution (ResNeXt's
building block) written with ungrouped ones.

A grouped convolution with ``G`` groups (PyTorch's meaning and layout) splits
the input channels into G contiguous blocks of ``C_in / G`` and the filters
into G contiguous blocks of ``C_out / G``; filter block g sees input block g
only. Its weight is ``(C_out, C_in / G, KH, KW)``.

The expected values are computed here *without* slicing by groups: the
grouped weight is spread into a dense ``(C_out, C_in, KH, KW)`` weight that is
zero outside its diagonal blocks, and the ordinary convolution of
:mod:`minires.functional` runs with it. The output and the input gradient are
those of the dense convolution; the weight gradient is the diagonal blocks of
the dense weight gradient (the off-diagonal blocks are not parameters).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..functional import conv2d_backward, conv2d_forward
from .core import Check, CheckResult, largest_error

TOL = 1e-10
"""A correct float64 answer is within about 1e-15 of the reference: group by
group or with a block-diagonal weight, the sums are the same."""

# (x shape, w shape, stride, padding, groups): two and three groups with
# different channels per group on each side, a stride-2 case, a depthwise
# convolution with two filters per channel, and groups=1 (an ordinary conv).
CONFIGS = [
    ((2, 4, 5, 5), (6, 2, 3, 3), 1, 1, 2),
    ((2, 6, 7, 6), (9, 2, 3, 3), 2, 1, 3),
    ((3, 4, 5, 6), (8, 1, 3, 3), 1, 0, 4),
    ((2, 3, 5, 5), (4, 3, 3, 3), 1, 1, 1),
]


def block_diagonal(w: np.ndarray, groups: int) -> np.ndarray:
    """The dense weight (C_out, C_in, KH, KW) of a grouped weight
    (C_out, C_in / G, KH, KW): block g of rows holds group g's filters in
    columns g*C_in/G ... (g+1)*C_in/G - 1, zeros elsewhere."""
    c_out, cg, kh, kw = w.shape
    og = c_out // groups
    dense = np.zeros((c_out, cg * groups, kh, kw), dtype=w.dtype)
    for g in range(groups):
        dense[g * og:(g + 1) * og, g * cg:(g + 1) * cg] = w[g * og:(g + 1) * og]
    return dense


def diagonal_blocks(dense: np.ndarray, groups: int) -> np.ndarray:
    """The inverse of :func:`block_diagonal`: the diagonal blocks of a dense
    (C_out, C_in, KH, KW) array, stacked as (C_out, C_in / G, KH, KW)."""
    c_out, c_in = dense.shape[:2]
    og, cg = c_out // groups, c_in // groups
    return np.concatenate([dense[g * og:(g + 1) * og, g * cg:(g + 1) * cg]
                           for g in range(groups)])


def reference(x, w, b, stride, padding, groups, dout):
    """(out, dx, dw, db) of the grouped convolution, through the dense
    block-diagonal weight (module docstring)."""
    dense = block_diagonal(w, groups)
    out, cache = conv2d_forward(x, dense, b, stride, padding)
    dx, d_dense, db = conv2d_backward(dout, cache)
    return (np.asarray(out), np.asarray(dx), diagonal_blocks(np.asarray(d_dense), groups),
            np.asarray(db))


# ---- typical wrong answers ---------------------------------------------------------

def _by_group(x, w, b, stride, padding, x_slices, w_slices, interleave=False):
    """A grouped convolution with a chosen (possibly wrong) assignment of
    channels to groups: group g convolves ``x[:, x_slices[g]]`` with
    ``w[w_slices[g]]``; the outputs are concatenated along the channels, or
    ``interleave``d (group g's outputs in channels g, g + G, g + 2G, ...)."""
    outs = []
    for xs, ws in zip(x_slices, w_slices, strict=True):
        o, _ = conv2d_forward(np.ascontiguousarray(x[:, xs]), np.ascontiguousarray(w[ws]),
                              None if b is None else b[ws], stride, padding)
        outs.append(np.asarray(o))
    if not interleave:
        return np.concatenate(outs, axis=1)
    out = np.concatenate(outs, axis=1)
    for g, o in enumerate(outs):
        out[:, g::len(outs)] = o
    return out


INTERLEAVED_HINT = (
    "{what} is what you get with groups of every G-th channel (channel c in group c % G). "
    "In PyTorch's layout, and minires's, a group is a contiguous block: group g reads input "
    "channels g*C_in/G ... (g+1)*C_in/G - 1 and owns the filters (output channels) "
    "g*C_out/G ... (g+1)*C_out/G - 1, that is x[:, g*cg:(g+1)*cg] and w[g*og:(g+1)*og] "
    "with cg = C_in // G and og = C_out // G (a reshape (C_out/G, G, ...) picks the wrong "
    "axis as the group axis).")
SAME_INPUT_HINT = (
    "{what} is what you get when every group reads the FIRST group's input channels "
    "x[:, :cg]: the slice of x must move with the group, x[:, g*cg:(g+1)*cg].")
BIAS_HINT = ("out is missing the bias: pass each group its own part b[g*og:(g+1)*og] "
             "(one number per filter).")
BATCH_AXIS_HINT = ("out stacks the groups along the batch axis: concatenate the groups' "
                   "outputs along the channel axis, np.concatenate(outs, axis=1).")
STACKED_HINT = ("out has the groups as a separate axis: the groups' outputs are blocks of "
                "channels, np.concatenate(outs, axis=1) gives (N, C_out, OH, OW).")
SHAPE_ERROR_HINT = (
    "a shape did not fit. Group g has C_in / G input channels and C_out / G filters: "
    "cg = C_in // groups, og = C_out // groups, then x[:, g*cg:(g+1)*cg] and "
    "w[g*og:(g+1)*og] for g in range(groups). `groups` is the number of groups, not the "
    "number of channels in each; and w is already (C_out, C_in / G, KH, KW), so it is "
    "sliced along its first axis only.")
CHANNELS_HINT = (
    "out has {got} channels instead of C_out = {c_out}: there are {groups} groups of "
    "og = C_out // groups = {og} filters each. `groups` is the number of groups, not the "
    "number of channels in each.")
SUMMED_HINT = (
    "{what} looks like the groups' gradients ADDED together. Gradients add where one value "
    "is used twice; here each group reads its own input channels and owns its own filters, "
    "so each group's {what} fills its own block: np.concatenate(..., axis={axis}).")
DENSE_DW_HINT = (
    "dw has the shape of a dense weight (C_out, C_in, KH, KW). The grouped weight is "
    "(C_out, C_in / G, KH, KW): each group's filters get the gradient of their own block; "
    "the off-diagonal blocks of a dense weight are not parameters (their gradient is not "
    "zero, but nothing may learn it).")


def _out_mistakes(x, w, b, stride, padding, groups, out_ref):
    """Typical wrong outputs with hints."""
    c_in, c_out = x.shape[1], w.shape[0]
    cg, og = c_in // groups, c_out // groups
    blocks_x = [slice(g * cg, (g + 1) * cg) for g in range(groups)]
    blocks_w = [slice(g * og, (g + 1) * og) for g in range(groups)]
    every_g = [slice(g, None, groups) for g in range(groups)]     # channel c in group c % G
    args = (x, w, b, stride, padding)
    out = []
    if b is not None:
        out.append((out_ref - b.reshape(1, -1, 1, 1), BIAS_HINT))
    if groups == 1:
        return out
    hint = INTERLEAVED_HINT.format(what="out")
    out += [(_by_group(*args, every_g, every_g, interleave=True), hint),
            (_by_group(*args, every_g, blocks_w), hint),
            (_by_group(*args, blocks_x, every_g), hint),
            (_by_group(*args, every_g, every_g), hint),
            (_by_group(*args, [slice(0, cg)] * groups, blocks_w),
             SAME_INPUT_HINT.format(what="out"))]
    groups_out = [out_ref[:, s] for s in blocks_w]
    out += [(np.concatenate(groups_out, axis=0), BATCH_AXIS_HINT),
            (np.stack(groups_out, axis=0), STACKED_HINT),
            (np.stack(groups_out, axis=1), STACKED_HINT)]
    return out


def _grad_mistakes(x, w, b, stride, padding, groups, dout, dx_ref, dw_ref, db_ref):
    """Typical wrong (dx, dw, db) with hints."""
    cg, og = x.shape[1] // groups, w.shape[0] // groups
    dx_m, dw_m, db_m = [], [], []
    if groups > 1:
        dx_m.append((sum(dx_ref[:, g * cg:(g + 1) * cg] for g in range(groups)),
                     SUMMED_HINT.format(what="dx", axis=1)))
        dw_m.append((sum(dw_ref[g * og:(g + 1) * og] for g in range(groups)),
                     SUMMED_HINT.format(what="dw", axis=0)))
        db_m.append((sum(db_ref[g * og:(g + 1) * og] for g in range(groups)),
                     SUMMED_HINT.format(what="db", axis=0)))
        # the dense weight's gradient, off-diagonal blocks and all
        _, cache = conv2d_forward(x, block_diagonal(w, groups), b, stride, padding)
        _, d_dense, _ = conv2d_backward(dout, cache)
        dw_m.append((np.asarray(d_dense), DENSE_DW_HINT))
    return dx_m, dw_m, db_m


def _describe(x_shape, w_shape, stride, padding, groups) -> str:
    return (f"x {tuple(x_shape)}, w {tuple(w_shape)}, groups {groups}, stride {stride}, "
            f"padding {padding}")


def _recording(fn: Callable, seen: list[Exception]) -> Callable:
    """``fn``, noting each ValueError it raises (a shape that did not fit)."""
    def run(*args):
        try:
            return fn(*args)
        except ValueError as exc:
            seen.append(exc)
            raise
    return run


def _check_config(forward: Callable, backward: Callable | None, config, seed: int
                  ) -> tuple[Check, float]:
    """One configuration: the check, and the largest relative error when it passed."""
    x_shape, w_shape, stride, padding, groups = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    out_ref = np.asarray(conv2d_forward(x, block_diagonal(w, groups), b, stride, padding)[0])
    dout = rng.standard_normal(out_ref.shape)
    _, dx_ref, dw_ref, db_ref = reference(x, w, b, stride, padding, groups, dout)

    check = Check("check_grouped_conv2d")
    seen: list[Exception] = []
    what = f"forward(x, w, b, stride={stride}, padding={padding}, groups={groups})"
    given = (x.copy(), w.copy(), b.copy())
    parts = check.unpack(what, check.call(what, _recording(forward, seen), *given, stride,
                                          padding, groups), ["out", "cache"])
    if seen:
        check.hint(SHAPE_ERROR_HINT)
    if parts is None:
        return check, float("nan")
    out, cache = parts
    ok = check.compare("out", out, out_ref, TOL,
                       mistakes=_out_mistakes(x, w, b, stride, padding, groups, out_ref))
    got = getattr(out, "shape", None)
    if not ok and got is not None and len(got) == 4 and got[0] == out_ref.shape[0] \
            and tuple(got[2:]) == out_ref.shape[2:] and got[1] != out_ref.shape[1]:
        check.hint(CHANNELS_HINT.format(got=got[1], c_out=w.shape[0], groups=groups,
                                        og=w.shape[0] // groups))
    for name, before, after in zip("xwb", (x, w, b), given, strict=True):
        check.unchanged(name, before, after, by="a forward pass")
    pairs = [(out, out_ref)]
    if backward is not None and not check.failed:
        dout_given = dout.copy()
        grads = check.unpack("backward(dout, cache)",
                             check.call("backward(dout, cache)", _recording(backward, seen),
                                        dout_given, cache), ["dx", "dw", "db"])
        if seen:
            check.hint(SHAPE_ERROR_HINT)
        if grads is None:
            return check, float("nan")
        dx_m, dw_m, db_m = _grad_mistakes(x, w, b, stride, padding, groups, dout,
                                          dx_ref, dw_ref, db_ref)
        for name, got, ref, mistakes in zip(("dx", "dw", "db"), grads, (dx_ref, dw_ref, db_ref),
                                            (dx_m, dw_m, db_m), strict=True):
            check.compare(name, got, ref, TOL, mistakes=mistakes)
            pairs.append((got, ref))
        check.unchanged("dout", dout, dout_given)
    if check.failed:
        return check, float("nan")
    return check, largest_error(pairs)


def check_grouped_conv2d(forward: Callable, backward: Callable | None = None) -> CheckResult:
    """Check a grouped convolution written with ungrouped ones (chapter 11).

    Parameters
    ----------
    forward : ``forward(x, w, b, stride, padding, groups) -> (out, cache)``
        x (N, C_in, H, W), w (C_out, C_in / groups, KH, KW), b (C_out,),
        ints stride, padding and groups; out (N, C_out, OH, OW). The cache is
        yours: whatever ``backward`` needs.
    backward : ``backward(dout, cache) -> (dx, dw, db)`` with the shapes of
        x, w and b, leaving ``dout`` untouched; optional (without it, only
        the forward pass is checked).

    Four configurations in turn (two and three groups with different channel
    counts per group on each side, stride 2, a depthwise convolution with
    two filters per channel, groups = 1), float64, against an ordinary
    convolution with a block-diagonal weight; the checker stops at the first
    configuration that fails and shows it in full. Recognised mistakes:
    groups of every G-th channel instead of contiguous blocks, every group
    reading the first group's input, a missing bias, the groups' outputs
    stacked on the wrong axis, a shape error or a wrong number of output
    channels from mixing up the number of groups with the channels per
    group, the groups' gradients added instead of concatenated, and the
    dense weight's gradient returned as dw.
    """
    result = Check("check_grouped_conv2d")
    parts = "out, dx, dw, db match" if backward is not None else "out matches"
    for k, config in enumerate(CONFIGS):
        header = _describe(*config)
        sub, err = _check_config(forward, backward, config, seed=1100 + k)
        summary = (f"ok      {header}: {parts} (largest relative error {err:.1e}; a correct "
                   f"answer is below {TOL:.0e})")
        if not result.merge(sub, header, summary, left=len(CONFIGS) - k - 1):
            break
    if backward is None and not result.failed:
        result.note("the forward pass is right; check_grouped_conv2d(forward, backward) "
                    "checks the gradients too")
    return result.result()


__all__ = ["block_diagonal", "check_grouped_conv2d", "diagonal_blocks"]
