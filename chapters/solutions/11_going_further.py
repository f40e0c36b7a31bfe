"""Solutions to chapter 11's exercise: a grouped convolution written with
ungrouped ones, forward and backward.

Group g reads the contiguous block of input channels ``g*cg ... (g+1)*cg - 1``
(``cg = C_in // groups``) and owns the filters ``g*og ... (g+1)*og - 1``
(``og = C_out // groups``): rows of ``w``, which is already
(C_out, C_in / groups, KH, KW). Each group is an ordinary convolution; the
outputs, and on the way back the input gradients and the weight gradients,
are concatenated, never added: no value is shared between groups.
"""

from __future__ import annotations

import numpy as np

from minires.exercises import CheckResult, check_grouped_conv2d
from minires.functional import conv2d_backward, conv2d_forward


def grouped_conv2d_forward(x, w, b, stride, padding, groups):
    """x (N, C_in, H, W), w (C_out, C_in/G, KH, KW), b (C_out,) or None
    -> out (N, C_out, OH, OW), cache (the groups' caches)."""
    cg, og = x.shape[1] // groups, w.shape[0] // groups
    outs, caches = [], []
    for g in range(groups):
        x_g = x[:, g * cg:(g + 1) * cg]
        w_g = w[g * og:(g + 1) * og]
        b_g = None if b is None else b[g * og:(g + 1) * og]
        out_g, cache_g = conv2d_forward(x_g, w_g, b_g, stride, padding)
        outs.append(out_g)
        caches.append(cache_g)
    return np.concatenate(outs, axis=1), (caches, og, b is not None)


def grouped_conv2d_backward(dout, cache):
    """dout (N, C_out, OH, OW) -> dx (N, C_in, H, W), dw (C_out, C_in/G, KH, KW),
    db (C_out,) or None."""
    caches, og, has_bias = cache
    dxs, dws, dbs = [], [], []
    for g, cache_g in enumerate(caches):
        dx_g, dw_g, db_g = conv2d_backward(dout[:, g * og:(g + 1) * og], cache_g)
        dxs.append(dx_g)
        dws.append(dw_g)
        dbs.append(db_g)
    db = np.concatenate(dbs) if has_bias else None
    return np.concatenate(dxs, axis=1), np.concatenate(dws, axis=0), db


def checks() -> list[CheckResult]:
    return [check_grouped_conv2d(grouped_conv2d_forward),
            check_grouped_conv2d(grouped_conv2d_forward, grouped_conv2d_backward)]


if __name__ == "__main__":
    for result in checks():
        print(result)
