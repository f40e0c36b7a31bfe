"""``model.summary(input_shape)``: a table of each layer's output shape,
parameters and FLOPs, of the kind torchinfo prints for PyTorch.

How it is computed
------------------
- **Shapes** come from one real forward pass on a batch of **one** image of
  zeros, in eval mode and under ``minires.no_grad()``, with each module's
  input and output shapes recorded on the way. This is exact whatever the
  model does (strides, paddings, shortcuts, a user's own modules) and cheap:
  a batch of one costs 0.3 s for torchvision's ResNet-50 at 224x224 and 0.7 s
  for ResNet-152 on two CPU cores, less than building those models. The
  model is left as it was: its mode, its BatchNorm statistics (eval mode
  does not update them) and any cache a forward left for a backward.
  Shapes are then reported for the batch size asked for, and FLOPs scaled
  by it (every layer treats the images of a batch alike).
- **FLOPs** are counted from the shapes, layer type by layer type, not
  timed. A *MAC* is one multiply-accumulate ``a += w * x``; a FLOP is one
  addition or multiplication, so for the convolutions and the linear layers
  **FLOPs = 2 x MACs** (the bias additions are not counted, as usual):

  ====================  ================================================
  Conv2d                MACs = N * OH * OW * weight.numel()
                        (C_out * C_in/groups * KH * KW per output pixel)
  Linear                MACs = N * weight.numel()
  BatchNorm (eval)      2 FLOPs per element (a fixed scale and shift)
  ReLU                  1 FLOP per element
  MaxPool2d             KH * KW - 1 comparisons per output
  AvgPool2d             KH * KW FLOPs per output (the sum and the division)
  GlobalAvgPool2d       1 FLOP per input element
  residual block        1 FLOP per output element for ``F(x) + x``
  ShortcutA, Flatten,   0 (they only move values)
  Identity, others
  ====================  ================================================

  ``total_flops`` adds all of these (the elementwise part is about 1% of a
  ResNet's); ``total_macs`` counts the convolutions and linear layers only.
  ResNet-20 on one 32x32 image: 40.6M MACs, 81.8M FLOPs (the forward part
  of the about 242 MFLOP of a training step measured for a 32x32 image).

Use::

    model = get_model("resnet20")
    s = model.summary((1, 3, 32, 32))      # or summarize(model, (1, 3, 32, 32))
    print(s)                                 # the text table; a notebook shows HTML
    s.total_params, s.trainable_params, s.total_macs, s.total_flops
    s["layer2.0.conv1"].output_shape         # every module's row, by dotted name
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import backend
from .grad_mode import no_grad
from .nn.blocks import _Block
from .nn.layers import (
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ReLU,
)
from .nn.module import Module

__all__ = ["LayerRow", "ModelSummary", "summarize"]


@dataclass
class LayerRow:
    """One module of the summary. Counts include the module's submodules.

    Attributes
    ----------
    name : dotted name as in ``state_dict`` keys (``"layer1.0.conv1"``;
        ``""`` for the model itself).
    label : how the table shows it, e.g. ``"conv1: Conv2d(3->16, 3x3, padding=1)"``.
    depth : 0 for the model, 1 for its children, ...
    output_shape : the output's shape for the summary's batch size (None if
        the forward did not call this module).
    params, trainable : parameters, and those with ``requires_grad``.
    macs, flops : multiply-accumulates and FLOPs for the whole batch.
    """

    name: str
    label: str
    depth: int
    output_shape: tuple[int, ...] | None
    params: int
    trainable: int
    macs: int
    flops: int


@dataclass
class ModelSummary:
    """What ``Module.summary`` returns: the rows and the totals.

    ``str()`` gives the text table (rows down to ``depth``), a notebook
    shows it as an HTML table; ``summary["layer1.0"]`` finds a row by name
    (all rows are kept, whatever the display depth).
    """

    model_name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    rows: list[LayerRow]
    depth: int
    param_bytes: int
    dtype: str
    _by_name: dict[str, LayerRow] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {r.name: r for r in self.rows}

    # ---- totals ---------------------------------------------------------
    @property
    def total_params(self) -> int:
        """Learnable values of the model (what the papers count)."""
        return self.rows[0].params

    @property
    def trainable_params(self) -> int:
        """Parameters with ``requires_grad`` (fewer when layers are frozen)."""
        return self.rows[0].trainable

    @property
    def total_macs(self) -> int:
        """Multiply-accumulates of the convolutions and linear layers, whole batch."""
        return self.rows[0].macs

    @property
    def total_flops(self) -> int:
        """FLOPs of one forward pass over the batch: 2 x MACs plus the
        elementwise operations (BN, ReLU, pooling, residual additions)."""
        return self.rows[0].flops

    def __getitem__(self, name: str) -> LayerRow:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no module named {name!r} in the summary of "
                           f"{self.model_name}") from None

    # ---- display --------------------------------------------------------
    def _shown(self) -> list[LayerRow]:
        return [r for r in self.rows[1:] if r.depth <= self.depth]

    def _footer(self) -> list[str]:
        flops, macs = self.total_flops, self.total_macs
        return [
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.total_params - self.trainable_params:,}",
            f"Params size: {self.param_bytes / 2**20:.2f} MiB ({self.dtype})",
            f"Total FLOPs: {flops:,} ({_human(flops)}FLOPs) for a batch of "
            f"{self.input_shape[0]}",
            f"Total MACs: {macs:,} ({_human(macs)}MACs); conv and linear FLOPs = 2 x MACs, "
            f"the other {_human(flops - 2 * macs)}FLOPs are elementwise (BN, ReLU, "
            "pooling, additions)",
        ]

    def __str__(self) -> str:
        header = ("Layer (name: type)", "Output shape", "Param #", "FLOPs")
        body = [("  " * (r.depth - 1) + r.label, _shape(r.output_shape), f"{r.params:,}",
                 f"{r.flops:,}") for r in self._shown()]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(4)]

        def line(cells: Sequence[str]) -> str:
            return (f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  "
                    f"{cells[2]:>{widths[2]}}  {cells[3]:>{widths[3]}}").rstrip()

        rule = "=" * len(line(["x" * w for w in widths]))
        lines = [f"{self.model_name}: input {_shape(self.input_shape)} -> output "
                 f"{_shape(self.output_shape)}", rule, line(header), rule]
        lines += [line(cells) for cells in body]
        lines += [rule, *self._footer(), rule]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        esc = html.escape
        cells = "".join(
            f"<tr><td style='text-align:left;padding-left:{1.2 * (r.depth - 1):.1f}em'>"
            f"<code>{esc(r.label)}</code></td><td style='text-align:left'>"
            f"{esc(_shape(r.output_shape))}</td><td>{r.params:,}</td><td>{r.flops:,}</td></tr>"
            for r in self._shown())
        footer = "<br>".join(esc(s) for s in self._footer())
        return (f"<div><p><b>{esc(self.model_name)}</b>: input "
                f"{esc(_shape(self.input_shape))} &rarr; output "
                f"{esc(_shape(self.output_shape))}</p>"
                "<table style='text-align:right'><thead><tr>"
                "<th style='text-align:left'>Layer (name: type)</th>"
                "<th style='text-align:left'>Output shape</th><th>Param #</th><th>FLOPs</th>"
                f"</tr></thead><tbody>{cells}</tbody></table><p>{footer}</p></div>")


def _shape(shape: tuple[int, ...] | None) -> str:
    return "--" if shape is None else str(tuple(shape))


def _human(n: float) -> str:
    """12345678 -> '12.3M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit} "
    return f"{n:g} "


def _itemsize(a: Any) -> int:
    size = getattr(a, "itemsize", None)          # NumPy and CuPy arrays
    return int(size) if size is not None else backend.to_numpy(a).itemsize


def _label(name: str, m: Module) -> str:
    extra = m.extra_repr()
    kind = f"{type(m).__name__}({extra})" if extra else type(m).__name__
    return f"{name.rsplit('.', 1)[-1]}: {kind}" if name else kind


def own_macs_flops(m: Module, in_shape: tuple[int, ...] | None,
                   out_shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, FLOPs) of ``m``'s own computation for one call, without its
    submodules', from its input and output shapes (see the module docstring)."""
    out = math.prod(out_shape)
    if isinstance(m, Conv2d):
        macs = out_shape[0] * out_shape[2] * out_shape[3] * m.weight.numel()
        return macs, 2 * macs
    if isinstance(m, Linear):
        macs = out_shape[0] * m.weight.numel()
        return macs, 2 * macs
    if isinstance(m, (BatchNorm1d, BatchNorm2d)):
        return 0, 2 * out
    if isinstance(m, ReLU):
        return 0, out
    if isinstance(m, MaxPool2d):
        return 0, out * (math.prod(m.kernel_size) - 1)
    if isinstance(m, AvgPool2d):
        return 0, out * math.prod(m.kernel_size)
    if isinstance(m, GlobalAvgPool2d):
        return 0, math.prod(in_shape) if in_shape is not None else 0
    if isinstance(m, _Block) and getattr(m, "shortcut", None) is not None:
        return 0, out  # F(x) + shortcut
    return 0, 0


def summarize(model: Module, input_shape: Sequence[int], depth: int = 3) -> ModelSummary:
    """Summary of ``model`` for inputs of ``input_shape`` (see the module docstring).

    Parameters
    ----------
    model : any Module.
    input_shape : ``(N, C, H, W)`` (or ``(N, features)`` for a model that
        takes vectors); ``(C, H, W)`` means a batch of one.
    depth : how many levels of submodules the table shows (3: ResNet,
        stages, blocks, the blocks' layers); the totals always count all.

    Returns
    -------
    ModelSummary.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"summary: expected an input shape (N, C, H, W) of positive sizes, "
                         f"got {tuple(input_shape)}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"summary: depth must be a positive integer, got {depth!r}")
    batch = shape[0]
    params = list(model.parameters())
    if params:
        xp, dtype = backend.namespace(params[0].data), params[0].data.dtype
    else:
        xp, dtype = backend.xp(), backend.resolve_dtype("float32")
    x = xp.zeros((1, *shape[1:]), dtype=dtype)

    calls: dict[int, list[tuple[tuple[int, ...] | None, tuple[int, ...]]]] = {}
    modules = list(model.named_modules())
    saved_caches = {id(m): m.__dict__.get("_cache") for _, m in modules}
    training = {id(m): m.training for _, m in modules}

    def recording(m: Module) -> Any:
        forward = m.forward

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            out = forward(*args, **kwargs)
            in_shape = tuple(args[0].shape) if args and hasattr(args[0], "shape") else None
            calls.setdefault(id(m), []).append((in_shape, tuple(getattr(out, "shape", ()))))
            return out

        return wrapper

    try:
        for _, m in modules:
            object.__setattr__(m, "forward", recording(m))
        model.eval()
        with no_grad():
            out = model(x)
    finally:
        for _, m in modules:
            m.__dict__.pop("forward", None)
            object.__setattr__(m, "_cache", saved_caches[id(m)])
            object.__setattr__(m, "training", training[id(m)])  # each module's own mode

    def scaled(s: tuple[int, ...] | None) -> tuple[int, ...] | None:
        return None if s is None or not s else (batch, *s[1:])

    # own counts, then subtree sums (named_modules lists a parent before its children)
    own: dict[str, tuple[int, int, int, int]] = {}
    for name, m in modules:
        n_params = sum(p.numel() for p in m._parameters.values() if p is not None)
        n_train = sum(p.numel() for p in m._parameters.values()
                      if p is not None and p.requires_grad)
        macs = flops = 0
        for in_shape, out_shape in calls.get(id(m), []):
            a, f = own_macs_flops(m, in_shape, out_shape)
            macs, flops = macs + a * batch, flops + f * batch
        own[name] = (n_params, n_train, macs, flops)
    totals = dict(own)
    for name, _ in reversed(modules):
        if name:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            totals[parent] = tuple(a + b for a, b in zip(totals[parent], totals[name],
                                                            strict=True))
    rows = []
    for name, m in modules:
        seen = calls.get(id(m))
        p, t, a, f = totals[name]
        rows.append(LayerRow(name, _label(name, m), name.count(".") + 1 if name else 0,
                             scaled(seen[-1][1]) if seen else None, p, t, a, f))
    param_bytes = sum(p.numel() * _itemsize(p.data) for p in params)
    return ModelSummary(_label("", model), shape, scaled(tuple(out.shape)) or (), rows, depth,
                        param_bytes, str(dtype))
