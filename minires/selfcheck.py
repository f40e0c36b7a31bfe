"""Gradient checks of every op and block, for ``minires gradcheck``.

A student's first sanity check of an install: each backward pass of the
library against centred finite differences in float64 on small random inputs.
``run_all()`` returns rows ``(check, tensor, relative error)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import functional as F
from .gradcheck import check_module, check_op


def _distinct(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Distinct values away from 0: no ReLU kink, no max-pool tie within the step."""
    n = int(np.prod(shape))
    v = (rng.permutation(n) + 1.0) / n * rng.choice([-1.0, 1.0], size=n) + 0.3 / n
    return v.reshape(shape)


def _op_checks(rng: np.random.Generator) -> list[tuple[str, Callable[[], dict]]]:
    x4 = _distinct(rng, 2, 3, 6, 5)
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    y = rng.integers(0, 5, 4)

    def bn(training: bool) -> Callable[..., Any]:
        def forward(x, gamma, beta):
            return F.batchnorm_forward(x, gamma, beta, rm, rv, training=training)

        return forward

    def bn2d(x, gamma, beta):  # (N, C) input: BatchNorm1d's case
        return F.batchnorm_forward(x, gamma, beta, rm, rv, training=True)

    def conv_no_bias(x, w):
        return F.conv2d_forward(x, w, None, stride=1, padding=1)

    def conv_no_bias_backward(dout, cache):
        return F.conv2d_backward(dout, cache)[:2]

    return [
        ("linear", lambda: check_op(F.linear_forward, F.linear_backward,
                                    rng.standard_normal((4, 5)), rng.standard_normal((3, 5)),
                                    rng.standard_normal(3))),
        ("relu", lambda: check_op(F.relu_forward, F.relu_backward, x4)),
        ("add (skip connection)", lambda: check_op(F.add_forward, F.add_backward, x4,
                                                   rng.standard_normal(x4.shape))),
        ("flatten", lambda: check_op(F.flatten_forward, F.flatten_backward, x4)),
        ("conv2d 3x2 stride 1 pad 1", lambda: check_op(
            F.conv2d_forward, F.conv2d_backward, x4, w, b, stride=1, padding=1)),
        ("conv2d 3x2 stride 2 pad 0", lambda: check_op(
            F.conv2d_forward, F.conv2d_backward, x4, w, b, stride=2, padding=0)),
        ("conv2d no bias", lambda: check_op(conv_no_bias, conv_no_bias_backward, x4, w)),
        ("conv2d 3x3 groups 3 stride 2", lambda: check_op(
            F.conv2d_forward, F.conv2d_backward, x4, rng.standard_normal((6, 1, 3, 3)),
            rng.standard_normal(6), stride=2, padding=1, groups=3)),
        ("batchnorm train", lambda: check_op(bn(True), F.batchnorm_backward, x4, gamma, beta)),
        ("batchnorm eval", lambda: check_op(bn(False), F.batchnorm_backward, x4, gamma, beta)),
        ("batchnorm (N, C)", lambda: check_op(bn2d, F.batchnorm_backward,
                                              rng.standard_normal((6, 3)), gamma, beta)),
        ("maxpool2d 3 stride 2 pad 1", lambda: check_op(
            F.maxpool2d_forward, F.maxpool2d_backward, x4, 3, 2, 1)),
        ("avgpool2d 2 stride 2", lambda: check_op(
            F.avgpool2d_forward, F.avgpool2d_backward, x4, 2, 2, 0)),
        ("global avgpool", lambda: check_op(F.global_avgpool2d_forward,
                                            F.global_avgpool2d_backward, x4)),
        ("softmax cross-entropy", lambda: check_op(
            F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward,
            rng.standard_normal((4, 5)), y, 0.1, wrt=[0])),
    ]


def _block_checks(rng: np.random.Generator, quick: bool) -> list[tuple[str, Callable]]:
    from .models import resnet_cifar
    from .nn import blocks

    specs: list[tuple[str, Callable[[], Any], tuple[int, ...]]] = []
    for mode in (["train"] if quick else ["train", "eval"]):
        specs += [
            (f"BasicBlock A stride 2 ({mode})", lambda: blocks.BasicBlock(2, 4, 2, "A"),
             (2, 2, 6, 6)),
            (f"BasicBlock B stride 2 ({mode})", lambda: blocks.BasicBlock(2, 4, 2, "B"),
             (2, 2, 6, 6)),
            (f"BasicBlock C stride 1 ({mode})", lambda: blocks.BasicBlock(3, 3, 1, "C"),
             (2, 3, 5, 5)),
            (f"PlainBlock stride 2 ({mode})", lambda: blocks.PlainBlock(2, 4, 2),
             (2, 2, 6, 6)),
            (f"Bottleneck B stride 2 ({mode})", lambda: blocks.Bottleneck(4, 2, 2, "B"),
             (2, 4, 5, 5)),
            (f"Bottleneck groups 2 (ResNeXt) stride 2 ({mode})",
             lambda: blocks.Bottleneck(4, 2, 2, "B", groups=2, base_width=64),
             (2, 4, 5, 5)),
            (f"PreActBlock stride 1 ({mode})", lambda: blocks.PreActBlock(3, 3, 1),
             (2, 3, 5, 5)),
            (f"PreActBottleneck stride 2 ({mode})",
             lambda: blocks.PreActBottleneck(4, 2, 2), (2, 4, 5, 5)),
        ]
    checks = []
    for name, make, shape in specs:
        def run(make=make, shape=shape, train="(train)" in name) -> dict:
            block = make().train(train)
            if not train:  # non-trivial running statistics
                for m in block.modules():
                    if hasattr(m, "running_var"):
                        m.running_mean = rng.standard_normal(m.num_features).astype(np.float32)
                        m.running_var = rng.uniform(0.5, 2, m.num_features).astype(np.float32)
            return check_module(block, _distinct(rng, *shape), seed=int(rng.integers(1 << 30)))

        checks.append((name, run))
    if not quick:
        checks.append(("resnet_cifar(8), sampled", lambda: check_module(
            resnet_cifar(8, num_classes=3), _distinct(rng, 2, 3, 8, 8), num_samples=12)))
    return checks


def run_all(quick: bool = False, seed: int = 0) -> list[tuple[str, str, float]]:
    """Run every check; rows ``(check, tensor, max relative error)``."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, check in _op_checks(rng) + _block_checks(rng, quick):
        report = check()
        if quick and len(report) > 3:  # blocks: input and the worst parameter
            worst = max((k for k in report if k != "input"), key=report.__getitem__)
            report = {"input": report["input"], worst: report[worst]}
        rows += [(name, tensor, err) for tensor, err in report.items()]
    return rows
