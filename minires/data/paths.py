"""Where minires finds its data files.

Two places matter:

- the **bundled** files (``digits.npz``), kept in the repository's top-level
  ``data/`` folder and shipped inside the package as ``minires._bundled``
  (``pyproject.toml`` maps that package to ``data/``);
- the **data root**, where downloaded datasets (CIFAR-10) are stored:
  ``$MINIRES_DATA`` if set, else the repository's ``data/`` folder when
  minires runs from a source checkout (also after ``pip install -e .``), else
  ``~/.cache/minires`` (``$XDG_CACHE_HOME/minires``).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

# minires/data/paths.py -> the repository root is two levels above the package.
_SOURCE_DATA = Path(__file__).resolve().parents[2] / "data"


def _is_source_checkout() -> bool:
    return (_SOURCE_DATA.parent / "pyproject.toml").is_file() and (
        _SOURCE_DATA / "README.md"
    ).is_file()


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
        Returned as is when given. Otherwise ``$MINIRES_DATA`` if set, else the
        repository's ``data/`` folder in a source checkout, else
        ``$XDG_CACHE_HOME/minires`` (default ``~/.cache/minires``).
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("MINIRES_DATA")
    if env:
        return Path(env).expanduser()
    if _is_source_checkout():
        return _SOURCE_DATA
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "minires"
