"""Pure forward/backward pairs, one file per family.

Each op ``name`` is a pair ``name_forward(...) -> (out, cache)`` and
``name_backward(dout, cache) -> grads`` that sit side by side in their file.
"""
