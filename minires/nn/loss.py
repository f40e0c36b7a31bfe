"""``CrossEntropyLoss``: softmax and cross-entropy fused, as in PyTorch.

Usage mirrors PyTorch without autograd::

    criterion = CrossEntropyLoss()
    loss = criterion(logits, y)      # 0-d array, mean over the batch
    dlogits = criterion.backward()   # (N, K), the start of the backward pass
    model.backward(dlogits)
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..backend import Array
from ..functional import loss as F
from .layers import check_input
from .module import Module


class CrossEntropyLoss(Module):
    """Mean softmax cross-entropy of logits (N, K) against integer targets (N,).

    ``label_smoothing=e`` trains against ``(1 - e) * onehot + e / K``.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must lie in [0, 1], "
                             f"got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}" if self.label_smoothing else ""

    def forward(self, logits: Array, y: Any) -> Array:
        check_input(self, logits, "logits (N, K)", 2)
        n, k = logits.shape
        xp = backend.namespace(logits)
        y_shape = tuple(getattr(y, "shape", ()))
        if y_shape != (n,):
            raise ValueError(f"{self.describe()}: expected targets of shape ({n},) to match "
                             f"logits {tuple(logits.shape)}, got {y_shape}")
        if not xp.isdtype(y.dtype, "integral"):
            raise ValueError(f"{self.describe()}: expected integer class indices, got dtype "
                             f"{y.dtype}")
        lo, hi = int(xp.min(y)), int(xp.max(y))
        if lo < 0 or hi >= k:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{self.describe()}: expected class indices in [0, {k - 1}], "
                             f"got {bad}")
        loss, self._cache = F.softmax_cross_entropy_forward(logits, y, self.label_smoothing)
        return loss

    def backward(self, dout: Any = 1.0) -> Array:
        """Gradient of ``dout * loss`` with respect to the logits, shape (N, K)."""
        return F.softmax_cross_entropy_backward(dout, self._take_cache(dout))
