"""Checkers for chapter 07's residual blocks: the skip connection as a
module, and the basic block with a hand-written backward pass.

Both compare the student's module with minires's on the same weights, in
float64 and in training mode, with a random upstream gradient, and recognise
the typical mistakes of a residual backward pass: the shortcut's gradient
dropped (``dx`` only through ``F``), the residual branch's gradient
overwritten by the shortcut's (``=`` where the two must be added), the ReLU
before the sum instead of after it, a missing or mis-strided projection, one
ReLU module used twice, an incoming gradient modified in place.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..nn import init
from ..nn.blocks import BasicBlock
from ..nn.layers import BatchNorm2d, Conv2d, ReLU
from ..nn.module import Identity, Module, Sequential
from .core import MISSING, Check, CheckResult, as_float64, rel_error

TOL = 1e-8
"""Relative error a correct float64 block reaches (about 1e-15 in practice)."""

BLOCK_CHILDREN = ("conv1", "bn1", "conv2", "bn2")

# (in_planes, planes, stride): identity shortcut; projection with stride 2;
# projection at stride 1 (the channels change, the size does not); projection
# at stride 2 with the channels kept (the size changes, the channels do not: a
# block that projects only where the channels change fails here).
BLOCK_CASES = ((4, 4, 1), (4, 8, 2), (4, 8, 1), (4, 4, 2))

_REUSED_RELU = "backward called without a matching forward"


@contextmanager
def _init_rng_kept() -> Iterator[None]:
    """Building the student's and the reference's modules draws initial
    weights from minires's generator; put its state back afterwards, so a
    notebook's later models do not depend on whether an exercise is solved."""
    rng = init.get_rng()
    state = copy.deepcopy(rng.bit_generator.state)
    try:
        yield
    finally:
        rng.bit_generator.state = state


def _randomize(module: Module, rng: np.random.Generator) -> None:
    """Fixed random float64 weights: He-scaled convs, BN scales near 1 and
    shifts near 0 (so that both matter), running statistics near (0, 1)."""
    for mod in module.modules():
        if isinstance(mod, Conv2d):
            fan_in = int(np.prod(mod.weight.shape[1:]))
            mod.weight.data = rng.standard_normal(mod.weight.shape) * np.sqrt(2.0 / fan_in)
            if mod.bias is not None:
                mod.bias.data = 0.1 * rng.standard_normal(mod.bias.shape)
        elif isinstance(mod, BatchNorm2d):
            c = mod.num_features
            mod.weight.data = 1.0 + 0.3 * rng.standard_normal(c)
            mod.bias.data = 0.3 * rng.standard_normal(c)
            mod.running_mean = 0.1 * rng.standard_normal(c)
            mod.running_var = 1.0 + 0.1 * rng.random(c)


def _grads(module: Module) -> dict[str, Any]:
    return {name: p.grad for name, p in module.named_parameters()}


def _compare_grads(check: Check, label: str, module: Module, expected: dict[str, Any],
                   wrong: dict[str, Any] | None = None, wrong_hint: str = "",
                   prefix: str = "") -> bool:
    """Compare every parameter gradient of ``module`` with ``expected`` (name
    -> array): one line for all that pass, one for all whose values are off
    (each with its relative error), one per missing or mis-shaped gradient."""
    got = _grads(module)
    worst, wrong_values, ok = 0.0, [], True
    for name, g_ref in expected.items():
        what = f"{prefix}{name}.grad"
        if got.get(name) is None:
            check.fail(f"{label} {what} is None; expected an array of shape {np.shape(g_ref)}")
            check.hint(f"{what} is None: that layer's backward was never called.")
            ok = False
            continue
        sub = Check(check.name)
        mistakes = [(wrong[name], wrong_hint)] if wrong else []
        if sub.compare(what, got[name], g_ref, TOL, mistakes=mistakes):
            worst = max(worst, rel_error(as_float64(got[name]), as_float64(g_ref)))
            continue
        ok = False
        for h in sub.hints:
            check.hint(h)
        arr = as_float64(got[name])
        if arr is not None and arr.shape == np.shape(g_ref) and np.all(np.isfinite(arr)):
            wrong_values.append(f"{what} ({rel_error(arr, as_float64(g_ref)):.1e})")
        else:
            for line in sub.lines:
                check.fail(f"{label} {line}")
    if wrong_values:
        check.fail(f"WRONG   {label} {len(wrong_values)} of {len(expected)} parameter "
                   f"gradients, relative errors: {', '.join(wrong_values)}; a correct answer "
                   f"is below {TOL:.0e}")
    if ok:
        check.note(f"ok      {label} all {len(expected)} parameter gradients: largest "
                   f"relative error {worst:.1e} (a correct answer is below {TOL:.0e})")
    return ok


def _as_module(check: Check, what: str, value: Any) -> Module | None:
    if value is MISSING:
        return None
    if not isinstance(value, Module):
        check.fail(f"{what} returned a {type(value).__name__}, not a minires.nn.Module "
                   "(derive your class from nn.Module and call super().__init__())")
        return None
    return value


# ---- the skip connection as a module -----------------------------------------

def check_residual_wrapper(residual_class: Callable[[Module], Module]) -> CheckResult:
    """Check a module ``residual_class(inner)`` computing ``inner(x) + x``,
    whose ``backward(dout)`` returns ``inner.backward(dout) + dout``.

    Two inner modules are tried, in training mode and float64:
    ``Sequential(Conv2d 3x3, BatchNorm2d, ReLU, Conv2d 3x3)`` on a
    (4, 3, 5, 5) input, and ``Identity`` (then ``H(x) = 2x``: its backward
    returns ``dout`` itself, so adding into it in place changes ``dout``).
    The output, ``dx`` and the inner module's parameter gradients are
    compared with ``inner(x) + x`` computed directly; ``dout`` must come back
    unmodified.
    """
    with _init_rng_kept():
        return _check_residual_wrapper(residual_class)


def _check_residual_wrapper(residual_class: Callable[[Module], Module]) -> CheckResult:
    check = Check("check_residual_wrapper")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 3, 5, 5))
    dout = rng.standard_normal(x.shape)
    conv_inner = Sequential(Conv2d(3, 3, 3, padding=1, dtype="float64"),
                            BatchNorm2d(3, dtype="float64"), ReLU(),
                            Conv2d(3, 3, 3, padding=1, dtype="float64"))
    _randomize(conv_inner, rng)
    for label, inner in (("F = conv-BN-ReLU-conv", conv_inner), ("F = identity", Identity())):
        ref = copy.deepcopy(inner)
        f_x = ref(x.copy())
        out_ref = f_x + x
        dx_f = ref.backward(dout.copy())
        dx_ref = dx_f + dout
        grads_ref = _grads(ref)

        student_inner = copy.deepcopy(inner)
        block = _as_module(check, f"residual_class(inner) [{label}]",
                           check.call(f"residual_class(inner) [{label}]",
                                      residual_class, student_inner))
        if block is None:
            break
        x_given = x.copy()
        out = check.call(f"forward [{label}]", block, x_given)
        if out is MISSING:
            break
        if not check.unchanged(f"[{label}] x", x, x_given, by="a forward pass"):
            check.hint("x changed: inner(x) may hand back x itself (the identity does), so "
                       "`out += x` adds into the caller's array. Write out = inner(x) + x, "
                       "a new array.")
        check.compare(f"[{label}] out", out, out_ref, TOL, mistakes=[
            (f_x, "out equals F(x): the block must add its input back, out = F(x) + x."),
            (x, "out equals x: the residual branch F(x) was left out of the sum."),
        ])
        dout_given = dout.copy()
        dx = check.call(f"backward [{label}]", block.backward, dout_given)
        if dx is MISSING:
            check.unchanged(f"[{label}] dout", dout, dout_given)
            break
        check.compare(f"[{label}] dx", dx, dx_ref, TOL, mistakes=[
            (dx_f, "dx is F's gradient alone: the shortcut's gradient is missing. "
                   "dH/dx = dF/dx + I, so dx = inner.backward(dout) + dout."),
            (dout, "dx equals dout: the gradient through F is missing; call "
                   "inner.backward(dout) and add dout to it."),
        ])
        if not check.unchanged(f"[{label}] dout", dout, dout_given):
            check.hint("dout changed: inner.backward may hand back dout itself (the "
                       "identity does), so `dx += dout` adds into the caller's array. "
                       "Write dx = dx_inner + dout, a new array.")
        if grads_ref:
            _compare_grads(check, f"[{label}]", student_inner, grads_ref, prefix="inner.")
    return check.result()


# ---- the basic block ------------------------------------------------------------

def _block_reference(ref: BasicBlock, x: np.ndarray, dout: np.ndarray) -> dict[str, Any]:
    """What the library's block gives, and the typical wrong answers, each
    computed on a copy of ``ref`` (so the weights are the same)."""
    r: dict[str, Any] = {}
    m = copy.deepcopy(ref)
    r["out"] = m(x.copy())
    r["dx"] = m.backward(dout.copy())
    r["grads"] = _grads(m)

    # The two branches' gradients at x, separately (as BasicBlock.backward
    # computes them before adding them up).
    m = copy.deepcopy(ref)
    f_x = m.bn2(m.conv2(m.relu1(m.bn1(m.conv1(x.copy())))))
    shortcut = x if m.downsample is None else m.downsample(x.copy())
    r["no_shortcut_out"] = np.maximum(f_x, 0.0)
    m.relu2(f_x + shortcut)
    dsum = m.relu2.backward(dout.copy())
    d = m.relu1.backward(m.conv2.backward(m.bn2.backward(dsum)))
    r["dx_residual"] = m.conv1.backward(m.bn1.backward(d))
    # The shortcut's gradient from dout instead of dsum (the final ReLU's
    # backward skipped on that branch), on a copy of the downsample's cache.
    down = copy.deepcopy(m.downsample)
    r["dx_unmasked_shortcut"] = r["dx_residual"] + (dout if down is None
                                                    else down.backward(dout.copy()))
    r["dx_shortcut"] = dsum if m.downsample is None else m.downsample.backward(dsum)

    # The ReLU before the sum: out = ReLU(F(x)) + shortcut(x).
    m = copy.deepcopy(ref)
    f_x = m.bn2(m.conv2(m.relu1(m.bn1(m.conv1(x.copy())))))
    shortcut = x if m.downsample is None else m.downsample(x.copy())
    r["relu_first_out"] = m.relu2(f_x) + shortcut
    d = m.relu1.backward(m.conv2.backward(m.bn2.backward(m.relu2.backward(dout.copy()))))
    dx_res = m.conv1.backward(m.bn1.backward(d))
    dx_sc = dout if m.downsample is None else m.downsample.backward(dout.copy())
    r["relu_first_dx"] = dx_res + dx_sc
    r["relu_first_grads"] = _grads(m)
    return r


def _not_implemented(block: Module, x: np.ndarray, dout: np.ndarray) -> bool:
    """Whether the block's forward or backward still raises NotImplementedError
    (a stub whose __init__ is not written yet)."""
    for fn, arg in ((block, x), (block.backward, dout)):
        try:
            fn(arg.copy())
        except NotImplementedError:
            return True
        except Exception:  # noqa: S112 - any other error: the stub was started
            continue
    return False


def _structure(check: Check, block: Module, label: str, in_planes: int, planes: int,
               stride: int) -> bool:
    """Child names (from the state dict keys) and strides; False if the
    reference's weights cannot be loaded."""
    reshape = stride != 1 or in_planes != planes
    expected = list(BLOCK_CHILDREN) + (["downsample"] if reshape else [])
    children = [name for name, _ in block.named_children()]
    keys = set(block.state_dict())
    ref_keys = set(BasicBlock(in_planes, planes, stride, shortcut="B").state_dict())
    missing = sorted(k for k in ref_keys - keys if not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in keys - ref_keys if not k.endswith("num_batches_tracked"))
    ok = True
    if missing:
        ok = False
        check.fail(f"{label}: the block has no {', '.join(missing)} (its children are "
                   f"{', '.join(children) or 'none'}; expected {', '.join(expected)})")
        if reshape and not any(k.startswith("downsample") for k in keys):
            check.hint("Where the shape changes (stride 2, or in_planes != planes) the "
                       "shortcut is a projection: self.downsample = Sequential(Conv2d("
                       "in_planes, planes, 1, stride=stride, bias=False), "
                       "BatchNorm2d(planes)).")
        check.hint("Use torchvision's child names, so that state dicts load: conv1, bn1, "
                   "conv2, bn2, and downsample (Sequential of a 1x1 conv and a BatchNorm2d) "
                   "where the shape changes; ReLUs may have any name.")
    if unexpected:
        ok = False
        check.fail(f"{label}: unexpected entries {', '.join(unexpected)} (expected children "
                   f"{', '.join(expected)})")
        if not reshape and any(k.startswith("downsample") for k in unexpected):
            check.hint("At stride 1 with in_planes == planes the shape does not change: the "
                       "shortcut is the identity, with no downsample (option B).")
    # Strides, where the layers are minires's Conv2d (the state dict cannot show them).
    conv1, conv2 = block._modules.get("conv1"), block._modules.get("conv2")
    if isinstance(conv1, Conv2d) and isinstance(conv2, Conv2d) \
            and (conv1.stride, conv2.stride) != ((stride, stride), (1, 1)):
        check.hint(f"{label}: conv1 has stride {conv1.stride[0]} and conv2 stride "
                   f"{conv2.stride[0]}; the block's stride belongs to conv1 (and to the "
                   "downsample's 1x1 conv), conv2 has stride 1.")
    down = block._modules.get("downsample")
    if isinstance(down, Sequential) and len(down) and isinstance(down[0], Conv2d) \
            and down[0].stride != (stride, stride):
        check.hint(f"{label}: the downsample's 1x1 conv has stride {down[0].stride[0]}; it "
                   f"must have the block's stride ({stride}) so that the shortcut has "
                   "F(x)'s size.")
    return ok


def check_residual_block(block_class: Callable[[int, int, int], Module]) -> CheckResult:
    """Check a basic residual block ``block_class(in_planes, planes, stride)``
    with a hand-written backward pass.

    The block must be a ``minires.nn.Module`` with torchvision's child names:
    ``conv1`` (3x3, stride), ``bn1``, ``conv2`` (3x3), ``bn2``, and, where the
    shape changes (stride 2 or ``in_planes != planes``), ``downsample`` =
    ``Sequential(Conv2d 1x1 with the stride, no bias; BatchNorm2d)``
    (shortcut option B). ``forward(x)`` returns ``ReLU(F(x) + shortcut(x))``;
    ``backward(dout)`` returns ``dx`` and accumulates every parameter's
    gradient.

    Compared with ``minires.nn.BasicBlock(in_planes, planes, stride,
    shortcut="B")`` on the same float64 weights (the reference's state dict
    is loaded into the student's block), in training mode, for (in_planes,
    planes, stride) = (4, 4, 1), (4, 8, 2), (4, 8, 1) and (4, 4, 2) on
    (3, 4, 5, 5) inputs: the output, ``dx``, every parameter gradient, the gradients'
    accumulation over a second forward and backward, and ``dout`` left
    unmodified.
    """
    with _init_rng_kept():
        return _check_residual_block(block_class)


def _check_residual_block(block_class: Callable[[int, int, int], Module]) -> CheckResult:
    check = Check("check_residual_block")
    rng = np.random.default_rng(11)
    for k, case in enumerate(BLOCK_CASES):
        if not _block_case(check, block_class, rng, *case):
            if k < len(BLOCK_CASES) - 1 and check.implemented:
                check.note("(stopped at the first case that fails: fix it, then run the "
                           "check again)")
            break
    return check.result()


def _block_case(check: Check, block_class: Callable[[int, int, int], Module],
                rng: np.random.Generator, in_planes: int, planes: int, stride: int) -> bool:
    """One (in_planes, planes, stride) case; False if anything failed."""
    label = f"[{in_planes}->{planes}, stride {stride}]"
    ref = BasicBlock(in_planes, planes, stride, shortcut="B", dtype="float64")
    block = _as_module(check, f"block_class({in_planes}, {planes}, {stride})",
                       check.call(f"block_class({in_planes}, {planes}, {stride})",
                                  block_class, in_planes, planes, stride))
    if block is None:
        return False
    _randomize(ref, rng)
    x = rng.standard_normal((3, in_planes, 5, 5))
    oh = (5 - 1) // stride + 1
    dout = rng.standard_normal((3, planes, oh, oh))
    if not _structure(check, block, label, in_planes, planes, stride):
        if _not_implemented(block, x, dout):
            check.call(f"{label} forward", block, x)   # marks it not implemented yet
        return False
    if check.call(f"{label} loading the reference's weights",
                  lambda b, state: b.to(dtype="float64").load_state_dict(state),
                  block, ref.state_dict()) is MISSING:
        return False
    block.train()
    block.zero_grad()
    r = _block_reference(ref, x, dout)

    x_given = x.copy()
    out = check.call(f"{label} forward", block, x_given)
    if out is MISSING:
        if stride != 1 or in_planes != planes:
            check.hint("The forward failed where the shape changes: the shortcut must "
                       "have F(x)'s shape, so x goes through downsample (1x1 conv with "
                       "the block's stride, then BN) before the sum.")
        return False
    check.unchanged(f"{label} x", x, x_given, by="a forward pass")
    if not check.compare(f"{label} out", out, r["out"], TOL, mistakes=[
            (r["relu_first_out"], "out = ReLU(F(x)) + shortcut(x): the ReLU must come "
                                  "after the sum, out = ReLU(F(x) + shortcut(x))."),
            (r["no_shortcut_out"], "out = ReLU(F(x)): the shortcut was left out of the "
                                   "sum.")]) \
            and np.shape(out) != np.shape(r["out"]):
        check.hint("The output's size is off: the stride belongs to conv1 and the "
                   "downsample's 1x1 conv; conv2 and the identity keep the size.")

    dout_given = dout.copy()
    dx = check.call(f"{label} backward", block.backward, dout_given)
    if dx is MISSING:
        if any(_REUSED_RELU in line for line in check.lines):
            check.hint("A module's backward found no cache: each ReLU keeps the cache "
                       "of its last forward, so one ReLU module cannot be used twice in "
                       "a block. Give the block two, e.g. relu1 and relu2.")
        check.unchanged(f"{label} dout", dout, dout_given)
        return False
    check.compare(f"{label} dx", dx, r["dx"], TOL, mistakes=[
        (r["dx_residual"], "dx is the residual branch's gradient alone: the shortcut's "
                           "gradient was dropped. dH/dx = dF/dx + I: add the shortcut's "
                           "gradient (the downsample's backward where there is one)."),
        (r["dx_shortcut"], "dx is the shortcut's gradient alone: the residual branch's "
                           "gradient was overwritten (`=` where the two must be added, "
                           "`+`/`+=`)."),
        (r["relu_first_dx"], "dx is the gradient of ReLU(F(x)) + shortcut(x): the ReLU "
                             "must come after the sum (and its backward first)."),
        (r["dx_unmasked_shortcut"], "the shortcut's gradient was taken from dout: the "
                                    "final ReLU comes after the sum, so both branches "
                                    "receive its backward, dsum = relu2.backward(dout)."),
    ])
    check.unchanged(f"{label} dout", dout, dout_given)
    grads_ok = _compare_grads(
        check, label, block, r["grads"], r["relu_first_grads"],
        "The parameter gradients are those of ReLU(F(x)) + shortcut(x): the ReLU "
        "belongs after the sum.")

    # A second forward and backward without zero_grad: the gradients add up.
    if grads_ok and stride == 2:
        again = check.call(f"{label} second forward", block, x.copy())
        if again is not MISSING and check.call(f"{label} second backward", block.backward,
                                               dout.copy()) is not MISSING:
            grads = _grads(block)
            bad = [n for n, g in r["grads"].items()
                   if grads.get(n) is None or not np.allclose(grads[n], 2 * g, rtol=1e-8,
                                                             atol=1e-12)]
            if bad:
                check.fail(f"{label} after a second forward and backward without "
                           f"zero_grad, {', '.join(bad)} are not twice the first "
                           "gradients")
                check.hint("Parameter gradients accumulate (+=, Parameter.accumulate), "
                           "like PyTorch's; zero_grad clears them. Do not assign .grad.")
            else:
                check.note(f"ok      {label} parameter gradients accumulate over two "
                           "backward passes")
    return not check.failed
