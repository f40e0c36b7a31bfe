"""``no_grad``: forward passes that keep nothing for a backward pass.

Every module's ``forward`` keeps a *cache* (its input, a mask, the
normalized activations) for its ``backward``. Evaluation and inference
never call ``backward``, and a whole network's caches take several times
the memory of its activations. Inside ``with minires.no_grad():`` each
module drops its cache as soon as its forward returns, so only the
activations in flight stay alive. The name and the use follow PyTorch's
``torch.no_grad``::

    with minires.no_grad():
        logits = model(x)           # model.backward(...) now raises

It is also a decorator (``@minires.no_grad()``). The switch is global to
the process (one flag, not per thread). This module imports nothing heavy,
so ``import minires`` stays quick.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_enabled = True


def is_grad_enabled() -> bool:
    """False inside ``no_grad()``: forwards keep no caches."""
    return _enabled


class no_grad:  # noqa: N801 (PyTorch's name)
    """Context manager (and decorator) under which forwards keep no caches.

    Nests, and restores the previous setting on exit, also after an error.
    """

    def __enter__(self) -> no_grad:
        global _enabled
        self._before = _enabled
        _enabled = False
        return self

    def __exit__(self, *exc: object) -> None:
        global _enabled
        _enabled = self._before

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with no_grad():
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
