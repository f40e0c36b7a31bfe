"""minires: residual networks built by hand.

Every layer has a hand-written forward and backward pass on NumPy (CPU) or
CuPy (GPU) through one code path; see ``minires.functional`` for the ops,
``minires.nn`` for the layers and blocks, ``minires.models`` for the networks
of He et al. (2015, 2016).

``minires.no_grad()`` runs forwards that keep no caches (evaluation,
inference). The subpackages are imported on use, so that ``import minires``
stays quick and loads no NumPy (the command line sets its threads first).
"""

from .grad_mode import is_grad_enabled, no_grad

__version__ = "0.1.0"

__all__ = ["__version__", "is_grad_enabled", "no_grad"]
