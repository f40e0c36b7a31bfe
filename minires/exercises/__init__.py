"""Checkers for the chapters' exercises.

Each ``check_*`` function takes the student's functions (or class), runs them
on fixed float64 inputs next to minires's own implementation, and returns a
:class:`CheckResult`: ``.passed`` (a bool), and as ``str(result)`` (what a
notebook shows) the comparison of every output and gradient, with the
relative error beside the range a correct answer reaches, both shapes on a
mismatch, and a hint where a typical mistake is recognisable. A checker never
raises on a wrong answer: a stub that raises ``NotImplementedError`` gives
"not implemented yet", any other exception is reported with the student's
line.

Usage in a chapter::

    from minires.exercises import check_relu
    check_relu(my_relu_forward, my_relu_backward)

``result.assert_ok()`` raises with the same message, for grading scripts.
The solutions live in ``chapters/solutions/`` of the repository.

Checkers, by chapter:

- 01 ``check_numerical_gradient``, ``check_softmax``
- 02 ``check_linear``, ``check_relu``, ``check_softmax_cross_entropy``
- 03 ``check_im2col``, ``check_col2im``, ``check_conv2d``
- 04 ``check_batchnorm``
- 05 ``check_maxpool2d`` (max-pool forward and backward), ``check_sgd_step`` (one
  step of SGD with momentum, dampening and weight decay, as ``torch.optim.SGD``)
- 06 ``check_param_count`` (a plain CIFAR network's parameters, counted by hand)
- 07 ``check_residual_wrapper`` (the skip connection as a module), ``check_residual_block``
  (a basic block with shortcut option B, backward included)
- 08 ``check_conv_macs`` (a convolution's multiply-accumulates), ``check_resnet_param_count``
  (an ImageNet ResNet's parameters, counted by hand)
- 09 ``check_warmup_schedule`` (linear warm-up, then cosine decay, per iteration),
  ``check_confusion_matrix``
- 10 ``check_replace_head`` (a fresh classifier head), ``check_freeze`` (a frozen
  backbone, with or without its batch norms), ``check_param_groups`` (a smaller
  learning rate for the backbone)
- 11 ``check_grouped_conv2d`` (a grouped convolution, ResNeXt's, from ungrouped
  ones: forward, and backward if given)
"""

from .blocks import check_residual_block, check_residual_wrapper
from .conv import check_col2im, check_conv2d, check_im2col
from .core import Check, CheckResult
from .finetune import check_freeze, check_param_groups, check_replace_head
from .gradients import check_numerical_gradient, check_softmax
from .grouped import check_grouped_conv2d
from .layers import check_linear, check_relu, check_softmax_cross_entropy
from .models import check_param_count
from .norm import check_batchnorm
from .optim import check_sgd_step
from .pool import check_maxpool2d
from .resnet import check_conv_macs, check_resnet_param_count
from .training import check_confusion_matrix, check_warmup_schedule

__all__ = [
    "Check", "CheckResult", "check_batchnorm", "check_col2im", "check_confusion_matrix",
    "check_conv2d", "check_conv_macs", "check_freeze", "check_grouped_conv2d", "check_im2col",
    "check_linear",
    "check_maxpool2d", "check_numerical_gradient", "check_param_count", "check_param_groups",
    "check_relu", "check_replace_head", "check_residual_block", "check_residual_wrapper",
    "check_resnet_param_count", "check_sgd_step", "check_softmax",
    "check_softmax_cross_entropy", "check_warmup_schedule",
]
