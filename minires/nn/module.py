"""``Parameter``, ``Module`` and the containers ``Sequential`` and ``Identity``.

A Module here is PyTorch's Module without autograd: each layer writes its own
``backward(dout) -> dx``. ``forward`` keeps what the backward will need (the
*cache*); ``backward`` consumes it, adds the parameter gradients into
``Parameter.grad`` and returns the gradient for the layer below.

Conventions:

- gradients **accumulate**: ``backward`` adds into ``.grad``; ``zero_grad``
  clears it (to ``None``, as PyTorch does by default);
- calling ``backward`` without a matching ``forward`` raises ``RuntimeError``;
- a parameter with ``requires_grad=False`` receives no gradient, and the layer
  skips the work of computing it;
- ``state_dict`` keys follow PyTorch (``layer1.0.conv1.weight``,
  ``bn1.running_mean``), so weights copy across unchanged.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from .. import backend
from ..backend import Array
from ..grad_mode import is_grad_enabled


class Parameter:
    """A learnable array and its gradient.

    Attributes
    ----------
    data : Array, the values (any shape).
    grad : Array or None, same shape as ``data``; None until a backward pass.
    requires_grad : bool, whether backward computes and stores a gradient.
    """

    def __init__(self, data: Array, requires_grad: bool = True) -> None:
        self.data = data
        self.grad: Array | None = None
        self.requires_grad = requires_grad

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    def numel(self) -> int:
        """Number of values (PyTorch's name): the product of the shape."""
        return math.prod(self.shape)

    def accumulate(self, grad: Array | None) -> None:
        """Add ``grad`` into ``.grad`` (gradients accumulate, like PyTorch)."""
        if not self.requires_grad or grad is None:
            return
        if tuple(grad.shape) != self.shape:
            raise ValueError(f"gradient of shape {tuple(grad.shape)} for a parameter of shape "
                             f"{self.shape}")
        self.grad = grad if self.grad is None else self.grad + grad

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, " \
               f"requires_grad={self.requires_grad})"


class _Saved(NamedTuple):
    """A forward's cache with the shape of its output (set by ``Module.__call__``)."""

    cache: Any
    out_shape: tuple[int, ...]


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class of every layer, block and network.

    Subclasses assign ``Parameter``s and child ``Module``s as attributes (they
    are registered in order of assignment), call ``register_buffer`` for
    non-learnable state such as BatchNorm's running statistics, and implement
    ``forward(x)`` and ``backward(dout) -> dx``.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration ---------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() first")
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            self._buffers[name] = value  # e.g. BatchNorm updating running_mean
            return
        for registry in (self._parameters, self._modules, self._buffers):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: look in the registries.
        d = self.__dict__
        for key in ("_parameters", "_modules", "_buffers"):
            if key in d and name in d[key]:
                return d[key][name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._modules, self._buffers):
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value: Array) -> None:
        """Non-learnable state that belongs in the state dict (running statistics)."""
        self.__dict__.pop(name, None)
        self._buffers[name] = value

    def register_module(self, name: str, module: Module) -> None:
        setattr(self, name, module)

    # ---- calling --------------------------------------------------------
    def forward(self, x: Array) -> Array:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dout: Array) -> Array:
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``forward``. Under ``minires.no_grad()`` the cache it kept is
        dropped at once; otherwise the output's shape is kept with it, so the
        backward can check ``dout`` before using the cache (``_take_cache``)."""
        out = self.forward(*args, **kwargs)
        cache = self.__dict__.get("_cache")
        if cache is not None:
            if not is_grad_enabled():
                self._cache = None
            elif not isinstance(cache, _Saved):
                self._cache = _Saved(cache, tuple(getattr(out, "shape", ())))
        return out

    def _take_cache(self, dout: Any = None) -> Any:
        """Return the cache saved by the last forward and forget it, so a second
        backward without a new forward raises instead of reusing stale data.

        Given ``dout``, first check that it has the shape of the forward's
        output (when the forward ran through ``__call__``): a wrong one raises
        ``ValueError`` naming this module and keeps the cache, so a corrected
        call still works."""
        cache = self.__dict__.get("_cache")
        if cache is None:
            raise RuntimeError(
                f"{self.describe()}: backward called without a matching forward "
                "(each forward allows one backward; a forward under no_grad() keeps "
                "nothing for one)"
            )
        if isinstance(cache, _Saved):
            got = tuple(getattr(dout, "shape", ()))
            if dout is not None and got != cache.out_shape:
                raise ValueError(f"{self.describe()}: expected dout of the output's shape "
                                 f"{cache.out_shape}, got {got}")
            cache = cache.cache
        self._cache = None
        return cache

    # ---- traversal ------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Array]]:
        for mod_name, mod in self.named_modules(prefix):
            for name, b in mod._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    def num_parameters(self) -> int:
        """Total number of learnable values (what the papers count)."""
        return sum(p.numel() for p in self.parameters())

    def summary(self, input_shape: tuple[int, ...], depth: int = 3) -> Any:
        """A torchinfo-style table of each layer's output shape, parameters
        and FLOPs for inputs of ``input_shape`` (N, C, H, W), with the totals.

        Returns a ``minires.summary.ModelSummary``: print it, or let a notebook
        show it; ``.total_params``, ``.trainable_params``, ``.total_macs`` and
        ``.total_flops`` hold the totals. Runs one forward pass on a batch of
        one in eval mode under ``no_grad`` and leaves the model as it was;
        see ``minires.summary`` for how FLOPs are counted.
        """
        from ..summary import summarize

        return summarize(self, input_shape, depth)

    # ---- modes and gradients -------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Freeze (False) or unfreeze (True) every parameter of this module."""
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    # ---- state ----------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, Array]:
        """Parameters and buffers by dotted name, in registration order, as
        PyTorch orders them (each module's parameters, then its buffers, then
        its children)."""
        out: OrderedDict[str, Array] = OrderedDict()
        self._collect_state(out, "")
        return out

    def _collect_state(self, out: OrderedDict, prefix: str) -> None:
        for name, p in self._parameters.items():
            out[prefix + name] = p.data
        for name, b in self._buffers.items():
            out[prefix + name] = b
        for name, child in self._modules.items():
            child._collect_state(out, f"{prefix}{name}.")

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy values from ``state`` (NumPy/CuPy arrays or torch tensors).

        All or nothing: every value is checked (shape, and that it converts to
        the entry's dtype) before any is written, so a bad entry leaves the
        module as it was; the error names the key. Shapes must match exactly;
        a mis-shaped entry always raises ``ValueError``. With ``strict=True``,
        missing and unexpected keys raise ``KeyError`` listing them by name;
        with ``strict=False`` they are returned. Values take the dtype and
        backend of the existing entry.

        ``num_batches_tracked`` follows PyTorch: an extra one is ignored when
        this model has no such buffer, and a missing one (weights from other
        tools often lack it) is not an error, even when strict: the counter
        starts again at 0.
        """
        own: dict[str, tuple[Module, str, bool]] = {}
        for mod_name, mod in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name in mod._parameters:
                own[pre + name] = (mod, name, True)
            for name in mod._buffers:
                own[pre + name] = (mod, name, False)
        counters = [k for k in own if _is_counter(k) and k not in state]
        missing = [k for k in own if k not in state and k not in counters]
        unexpected = [k for k in state if k not in own and not _is_counter(k)]
        if strict and (missing or unexpected):
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        # First convert every value (nothing written yet), then write them all.
        where = f"{type(self).__name__}.load_state_dict"
        values: dict[str, Array] = {}
        wrong = []
        for key, (mod, name, is_param) in own.items():
            if key not in state and key not in counters:
                continue
            current = mod._parameters[name].data if is_param else mod._buffers[name]
            if key in counters:
                values[key] = backend.namespace(current).zeros_like(current)
                continue
            try:
                value = _host_numbers(state[key])
            except Exception as err:  # whatever the value is, the message names the key
                raise ValueError(f"{where}: {key}: cannot convert {type(state[key]).__name__} "
                                 f"to an array of numbers ({err})") from err
            if tuple(value.shape) != tuple(current.shape):
                wrong.append(f"{key}: expected {tuple(current.shape)}, got {tuple(value.shape)}")
                continue
            try:
                values[key] = backend.namespace(current).asarray(value, dtype=current.dtype,
                                                                 copy=True)
            except (TypeError, ValueError, OverflowError) as err:
                raise ValueError(f"{where}: {key}: cannot convert dtype {value.dtype} to "
                                 f"{current.dtype} ({err})") from err
        if wrong:
            raise ValueError(f"{where}: shape mismatch for " + "; ".join(wrong))
        for key, value in values.items():
            mod, name, is_param = own[key]
            if is_param:
                mod._parameters[name].data = value
            else:
                mod._buffers[name] = value
        return IncompatibleKeys(missing, unexpected)

    def to(self, dtype: Any = None, device: str | None = None) -> Module:
        """Cast floating parameters and buffers to ``dtype`` and/or move every
        array to ``device`` ("cpu"/"numpy", "cuda"/"cupy", or "array_api_strict").
        As in PyTorch, a device may also come first: ``model.to("cpu")``.
        Integer buffers (``num_batches_tracked``) keep their dtype. Gradients are
        cleared. Returns ``self``, changed in place, like PyTorch."""
        if isinstance(dtype, str) and dtype.strip().lower().split(":")[0] in _DEVICES:
            if device is not None:
                raise ValueError(f"{type(self).__name__}.to: two devices given, {dtype!r} "
                                 f"and {device!r}")
            dtype, device = None, dtype
        target = None
        if device is not None:
            name = str(device).strip().lower().split(":")[0]   # "cuda:0" -> "cuda"
            if name not in _DEVICES:
                raise ValueError(f"{type(self).__name__}.to: unknown device {device!r}; "
                                 f"expected one of {sorted(_DEVICES)}")
            target = backend._load(_DEVICES[name])
        for mod in self.modules():
            for p in mod._parameters.values():
                p.data = _convert(p.data, dtype, target)
                p.grad = None
            for k, b in list(mod._buffers.items()):
                mod._buffers[k] = _convert(b, dtype, target)
            mod._cache = None
        return self

    # ---- printing -------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def describe(self) -> str:
        """Short name used in error messages, e.g. ``Conv2d(3->16)``."""
        return f"{type(self).__name__}({self.extra_repr()})"

    def __repr__(self) -> str:
        if not self._modules:  # the full extra_repr (a conv's kernel, stride, padding),
            return f"{type(self).__name__}({self.extra_repr()})"  # not describe()'s short form
        lines = [f"{type(self).__name__}("]
        if self.extra_repr():  # as PyTorch prints it: first, inside the parentheses
            lines.append(f"  {self.extra_repr()}")
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        lines.append(")")
        return "\n".join(lines)


_DEVICES = {"cpu": "numpy", "numpy": "numpy", "cuda": "cupy", "gpu": "cupy", "cupy": "cupy",
            "array_api_strict": "array_api_strict"}


def _is_counter(key: str) -> bool:
    return key == "num_batches_tracked" or key.endswith(".num_batches_tracked")


def _host_numbers(value: Any) -> np.ndarray:
    """``value`` as a NumPy array of booleans, integers or reals; ``ValueError``
    for anything else (strings, objects, complex numbers)."""
    a = backend.to_numpy(value)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"dtype {a.dtype} holds no real numbers")
    return a


def _convert(a: Array, dtype: Any, target_xp: Any) -> Array:
    src_xp = backend.namespace(a)
    xp_ = target_xp if target_xp is not None else src_xp
    is_float = src_xp.isdtype(a.dtype, "real floating")
    if target_xp is not None and target_xp is not src_xp:
        a = xp_.asarray(backend.to_numpy(a))
    if dtype is not None and is_float:
        a = xp_.astype(a, backend.resolve_dtype(dtype, xp_))
    return a


class Sequential(Module):
    """Children named "0", "1", ... applied in order; backward runs them in reverse."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> Sequential:
        setattr(self, str(len(self)), module)
        return self

    def forward(self, x: Array) -> Array:
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, dout: Array) -> Array:
        for m in reversed(self._modules.values()):
            dout = m.backward(dout)
        return dout


class Identity(Module):
    """Returns its input; its backward returns ``dout``."""

    def forward(self, x: Array) -> Array:
        self._cache = True
        return x

    def backward(self, dout: Array) -> Array:
        self._take_cache(dout)
        return dout
