"""minires: residual networks built by hand.

Every layer has a hand-written forward and backward pass on NumPy (CPU) or
CuPy (GPU) through one code path; see ``minires.functional`` for the ops,
``minires.nn`` for the layers and blocks, ``minires.models`` for the networks
of He et al. (2015, 2016).
"""

__version__ = "0.1.0"
