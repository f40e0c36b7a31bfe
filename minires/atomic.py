"""Files written whole or not at all: ``atomic_write``.

Every file minires writes (checkpoints, metrics, curves) goes through
:func:`atomic_write`: the bytes go to a hidden temporary file next to the
target, ``.<name>.<pid>.<random>.tmp``, which is flushed, fsynced and
renamed over the target with ``os.replace``. A crash at any moment leaves
either the old file or the new one, never a mix.

Two details a plain ``tempfile.mkstemp`` gets wrong:

- **Permissions follow the umask.** ``mkstemp`` creates its file with mode
  0600, so the renamed result was unreadable to anyone else (a course
  server where a teacher reads the students' runs). The temporary file is
  opened with mode 0666 and the process's umask applies, as for ``open``.
- **Stale temporary files are removed.** A process killed during a save
  (``kill -9``, a power cut) leaves its temporary file behind. The process
  id in the name tells whether its writer is still running: after each
  successful save, the temporaries of the same target whose process is
  gone are deleted (so are those in ``mkstemp``'s older naming, once they
  are a minute old).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "remove_stale_temporaries"]

LEGACY_STALE_AFTER_S = 60.0  # temporaries without a process id: stale after this age


def _temporary_name(name: str) -> str:
    return f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb",
                 encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success it replaces ``path``.

    Parameters
    ----------
    path : the target file; its folder must exist.
    mode : ``"wb"`` (binary) or ``"w"`` (text).
    encoding : the text encoding (text mode; default UTF-8).

    Yields
    ------
    The open file. When the ``with`` block ends normally the file is
    flushed, fsynced, closed and renamed over ``path`` (then the folder is
    fsynced, where the system allows it, and stale temporaries of ``path``
    are removed). When the block raises, the temporary file is deleted and
    ``path`` is left as it was.

    Examples
    --------
    >>> with atomic_write("metrics.json", "w") as f:   # doctest: +SKIP
    ...     f.write(text)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, _temporary_name(os.path.basename(path)))
    # mode 0o666 with O_CREAT: the umask applies, as for open() (mkstemp forces 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        kwargs = {"encoding": encoding or "utf-8", "newline": ""} if mode == "w" else {}
        try:
            f = os.fdopen(fd, mode, **kwargs)
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(directory)
    remove_stale_temporaries(path)


def _fsync_folder(directory: str) -> None:
    """Make a rename in ``directory`` durable (POSIX); not possible everywhere."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _process_running(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing it now
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, and belongs to someone else
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files of ``path`` left by writers that died.

    A temporary file ``.<name>.<pid>.<random>.tmp`` is stale when process
    ``pid`` is not running (on POSIX systems; elsewhere such files are kept).
    One in ``mkstemp``'s naming, ``.<name>.<8 characters>.tmp`` (written by
    earlier versions of minires), is stale once it is ``LEGACY_STALE_AFTER_S`` old.

    Returns
    -------
    The files removed.
    """
    path = Path(path)
    name = re.escape(path.name)
    ours = re.compile(rf"\.{name}\.(\d+)\.[0-9a-f]+\.tmp")
    legacy = re.compile(rf"\.{name}\.[A-Za-z0-9_]{{8}}\.tmp")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(f".{path.name}."):
            continue
        m = ours.fullmatch(entry.name)
        try:
            if m is not None:
                stale = not _process_running(int(m[1]))
            elif legacy.fullmatch(entry.name):
                stale = now - entry.stat().st_mtime > LEGACY_STALE_AFTER_S
            else:
                continue
            if stale and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # removed meanwhile by another cleaner, or not ours to remove
            continue
    return removed
