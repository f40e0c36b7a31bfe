"""Pure forward/backward pairs, one file per family.

Each op ``name`` is a pair ``name_forward(...) -> (out, cache)`` and
``name_backward(dout, cache) -> grads`` that sit side by side in their file:

- ``linear.py``: ``linear``, ``flatten``
- ``activation.py``: ``relu``
- ``add.py``: ``add``, the skip connection, where the gradient fans out
- ``conv.py``: ``conv2d`` by ``im2col``/``col2im``, and ``conv2d_*_naive`` loops
- ``norm.py``: ``batchnorm`` (training and eval) and ``batchnorm_running_update``
- ``pool.py``: ``maxpool2d``, ``avgpool2d``, ``global_avgpool2d``
- ``loss.py``: ``softmax_cross_entropy``, ``softmax``, ``log_softmax``
"""

from .activation import relu_backward, relu_forward
from .add import add_backward, add_forward
from .conv import (
    col2im,
    conv2d_backward,
    conv2d_backward_naive,
    conv2d_forward,
    conv2d_forward_naive,
    im2col,
)
from .linear import flatten_backward, flatten_forward, linear_backward, linear_forward
from .loss import (
    log_softmax,
    softmax,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .norm import batchnorm_backward, batchnorm_forward, batchnorm_running_update
from .pool import (
    avgpool2d_backward,
    avgpool2d_forward,
    global_avgpool2d_backward,
    global_avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

__all__ = [
    "add_backward", "add_forward", "avgpool2d_backward", "avgpool2d_forward",
    "batchnorm_backward", "batchnorm_forward", "batchnorm_running_update", "col2im",
    "conv2d_backward", "conv2d_backward_naive", "conv2d_forward", "conv2d_forward_naive",
    "flatten_backward", "flatten_forward", "global_avgpool2d_backward",
    "global_avgpool2d_forward", "im2col", "linear_backward", "linear_forward", "log_softmax",
    "maxpool2d_backward", "maxpool2d_forward", "relu_backward", "relu_forward", "softmax",
    "softmax_cross_entropy_backward", "softmax_cross_entropy_forward",
]
