"""Where minires finds its data files.

Two places matter:

- the **bundled** files (``digits.npz``), kept in the repository's top-level
  ``data/`` folder and shipped inside the package as ``minires._bundled``
  (``pyproject.toml`` maps that package to ``data/``); always read from the
  package (or, in a source checkout, from ``data/``);
- the **data folder**, where downloaded datasets (CIFAR-10) are kept. One
  rule, the same for installed and editable installs and source checkouts:
  ``$MINIRES_DATA`` if set, else ``$XDG_CACHE_HOME/minires`` if
  ``XDG_CACHE_HOME`` is set, else ``~/.cache/minires``. The ``minires``
  command prints it when it reads or downloads a dataset.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

# minires/data/paths.py -> the repository root is two levels above the package.
_SOURCE_DATA = Path(__file__).resolve().parents[2] / "data"


def bundled_file(name: str) -> Path:
    """Path of a data file shipped with minires (for example ``"digits.npz"``).

    Looks in the installed package ``minires._bundled`` first (a regular
    ``pip install .``), then in the source checkout's ``data/`` folder (running
    from the repository, or after ``pip install -e .``).

    Raises
    ------
    FileNotFoundError
        Naming both places looked in.
    """
    looked = []
    try:
        resource = importlib.resources.files("minires._bundled").joinpath(name)
    except ModuleNotFoundError:  # running from a source checkout, or an editable install
        resource = None
    if isinstance(resource, Path):  # installed as plain files (what pip does)
        if resource.is_file():
            return resource
        looked.append(str(resource))
    candidate = _SOURCE_DATA / name
    if candidate.is_file():
        return candidate
    looked.append(str(candidate))
    raise FileNotFoundError(
        f"minires: bundled data file {name!r} not found (looked in {', '.join(looked)}). "
        "The installation is incomplete; reinstall minires."
    )


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder where downloaded datasets live.

    Parameters
    ----------
    root : path or None
        Returned as is when given. Otherwise ``$MINIRES_DATA`` if set, else
        ``$XDG_CACHE_HOME/minires`` (default ``~/.cache/minires``), whether
        minires is installed, installed in editable mode or run from a source
        checkout.
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("MINIRES_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "minires"
