"""CIFAR-10 from the official binary archive, with no pickle and no torchvision.

The archive ``cifar-10-binary.tar.gz`` (Krizhevsky 2009,
https://www.cs.toronto.edu/~kriz/cifar.html) holds, under
``cifar-10-batches-bin/``, five training batches and one test batch of 10,000
records each. A record is 3,073 bytes: the label (0-9), then the 1,024 red,
1,024 green and 1,024 blue values of a 32x32 image, each plane row by row, so
a record's last 3,072 bytes reshape straight to (3, 32, 32), NCHW.

What happens on :func:`load_cifar10`:

``<root>`` is the data folder, :func:`minires.data.data_root`:
``$MINIRES_DATA``, else ``~/.cache/minires`` (``$XDG_CACHE_HOME/minires``).

1. If ``<root>/cifar-10-batches-bin/`` was extracted earlier from an archive
   with the expected MD5 (a ``.md5`` note records it) and every batch file is
   there, read it.
2. Otherwise take ``<root>/cifar-10-binary.tar.gz`` (so a batch file deleted
   after extraction is extracted again); with ``download=True`` fetch it
   first into ``cifar-10-binary.tar.gz.part``, check the MD5 and only then
   rename it, so a broken download never looks valid (a download cut off
   midway removes the ``.part`` file).
3. Check the archive's MD5 (streamed, 1 MiB at a time), check every member
   (only the eight expected names, regular files, no links, no paths leading
   elsewhere), and copy out the members' bytes; nothing is extracted by name.
4. Parse each ``.bin`` with NumPy, checking its size (a multiple of 3,073
   bytes; exactly 30,730,000 for the official archive) and its labels.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

import numpy as np

from .paths import data_root

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BATCHES = ("test_batch.bin",)
OPTIONAL_FILES = ("batches.meta.txt", "readme.html")
EXPECTED_MEMBERS = frozenset(
    f"{CIFAR10_DIR}/{name}" for name in TRAIN_BATCHES + TEST_BATCHES + OPTIONAL_FILES
)
RECORD_BYTES = 1 + 3 * 32 * 32  # 3,073
OFFICIAL_BATCH_BYTES = 10_000 * RECORD_BYTES  # 30,730,000
_CHUNK = 1 << 20


class CifarError(RuntimeError):
    """The CIFAR-10 archive is missing, does not match its checksum, or is malformed."""


class CifarNotFound(CifarError):
    """CIFAR-10 is not in the data folder, and it was not asked to download it.

    Attributes
    ----------
    archive : Path where the archive belongs.
    """

    def __init__(self, message: str, archive: Path) -> None:
        super().__init__(message)
        self.archive = archive


def _manual_instructions(archive: Path) -> str:
    return (
        f"To provide it by hand, download {CIFAR10_URL} (170,052,171 bytes, MD5 "
        f"{CIFAR10_MD5}) and save it as {archive} (or set MINIRES_DATA to the folder "
        "that holds it)."
    )


def file_md5(path: str | os.PathLike[str]) -> str:
    """MD5 hex digest of a file, read in 1 MiB chunks (never all in memory)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download_cifar10(
    root: str | os.PathLike[str] | None = None,
    *,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    timeout: float = 60.0,
    progress: bool = False,
) -> Path:
    """Download the archive to ``<root>/cifar-10-binary.tar.gz`` and check its MD5.

    The bytes go to ``cifar-10-binary.tar.gz.part`` first; the MD5 is
    computed while streaming; only a matching file is renamed into place. On
    any failure (no network, a transfer cut off midway, fewer bytes than the
    server announced, a wrong MD5, Ctrl-C) the ``.part`` file is removed and,
    but for Ctrl-C, :class:`CifarError` says where to put the archive by hand.

    Parameters
    ----------
    root : the data folder (default :func:`minires.data.data_root`).
    url, md5 : where to fetch from, and the expected MD5 of the archive.
    timeout : seconds to wait for the server at each step.
    progress : show a progress bar (tqdm, on stderr).

    Returns
    -------
    Path of the verified archive.
    """
    root = data_root(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / CIFAR10_ARCHIVE
    part = archive.with_name(archive.name + ".part")
    h = hashlib.md5()
    received, expected = 0, None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
            length = (getattr(response, "headers", None) or {}).get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            with _progress_bar(expected, archive.name, progress) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    h.update(chunk)
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if expected is not None and received != expected:
            raise CifarError(f"CIFAR-10: the download of {url} was cut off after "
                             f"{received:,} of {expected:,} bytes; the partial file was "
                             f"deleted. {_manual_instructions(archive)}")
    except CifarError:
        part.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        # HTTPException: IncompleteRead when a chunked transfer drops, and the like
        part.unlink(missing_ok=True)
        if isinstance(err, http.client.IncompleteRead):
            what = f"was cut off after {received + len(err.partial):,} bytes"
        else:
            what = (f"was cut off after {received:,} bytes" if received else "failed")
            what += f" ({type(err).__name__}: {err})"
        raise CifarError(
            f"CIFAR-10: the download of {url} {what}; the partial file was deleted. "
            f"{_manual_instructions(archive)}"
        ) from err
    except BaseException:  # Ctrl-C: no half file left behind either
        part.unlink(missing_ok=True)
        raise
    if h.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise CifarError(
            f"CIFAR-10: the downloaded file has MD5 {h.hexdigest()}, expected {md5}; it was "
            f"deleted. {_manual_instructions(archive)}"
        )
    os.replace(part, archive)
    return archive


def _progress_bar(total: int | None, name: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"downloading {name}", unit="B", unit_scale=True,
                unit_divisor=1024, disable=not show, leave=False)


def _check_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The archive's file members, after rejecting anything unexpected."""
    files = []
    for member in tar.getmembers():
        name = member.name
        if member.isdir() and name.rstrip("/") == CIFAR10_DIR:
            continue
        if name not in EXPECTED_MEMBERS:
            raise CifarError(
                f"CIFAR-10: unexpected member {name!r} in the archive; only "
                f"{sorted(EXPECTED_MEMBERS)} are allowed. Refusing to extract it."
            )
        if not member.isreg():
            raise CifarError(
                f"CIFAR-10: member {name!r} is not a regular file (a link or device?); "
                "refusing to extract it."
            )
        files.append(member)
    present = {m.name for m in files}
    required = [f"{CIFAR10_DIR}/{n}" for n in TRAIN_BATCHES + TEST_BATCHES]
    missing = [name for name in required if name not in present]
    if missing:
        raise CifarError(f"CIFAR-10: the archive lacks {missing}")
    return files


def extract_cifar10(
    archive: str | os.PathLike[str], root: str | os.PathLike[str], md5: str = CIFAR10_MD5
) -> Path:
    """Verify ``archive`` against ``md5``, extract it into ``<root>/cifar-10-batches-bin``.

    Every member is checked before anything is written. Members are copied by
    content to fixed file names (never through ``TarFile.extract``), each via
    a temporary file and a rename. Finally ``.md5`` records the archive's MD5.

    Returns
    -------
    The extraction folder.
    """
    archive = Path(archive)
    actual = file_md5(archive)
    if actual != md5:
        raise CifarError(
            f"CIFAR-10: {archive} has MD5 {actual}, expected {md5} (corrupt or incomplete). "
            f"Delete it and retry. {_manual_instructions(archive)}"
        )
    out_dir = Path(root) / CIFAR10_DIR
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = _check_members(tar)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / ".md5").unlink(missing_ok=True)
            for member in members:
                target = out_dir / member.name.rsplit("/", 1)[1]
                tmp = target.with_name(target.name + ".part")
                src = tar.extractfile(member)
                assert src is not None  # a regular file, checked above
                with src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                os.replace(tmp, target)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise CifarError(f"CIFAR-10: cannot read {archive} as a .tar.gz archive: {err}") from err
    (out_dir / ".md5").write_text(md5 + "\n")
    return out_dir


def read_batch(
    path: str | os.PathLike[str], *, expected_bytes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR-10 ``.bin`` batch file.

    Parameters
    ----------
    path : path of the file
    expected_bytes : int or None
        Exact size required (30,730,000 for the official files); None accepts
        any positive multiple of 3,073.

    Returns
    -------
    images : (N, 3, 32, 32) uint8 array (R, G, B planes)
    labels : (N,) int64 array, values 0-9
    """
    path = Path(path)
    size = path.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        raise CifarError(
            f"CIFAR-10: {path} has {size:,} bytes, expected {expected_bytes:,} "
            "(truncated?); delete the folder to extract it again."
        )
    if size == 0 or size % RECORD_BYTES:
        raise CifarError(
            f"CIFAR-10: {path} has {size:,} bytes, not a positive multiple of the "
            f"{RECORD_BYTES:,}-byte record (truncated?); delete the folder to extract it again."
        )
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise CifarError(f"CIFAR-10: {path} record {bad} has label {labels[bad]}, expected 0-9")
    images = records[:, 1:].reshape(-1, 3, 32, 32)
    return images, labels


def _extracted(out_dir: Path, md5: str, batch_bytes: int | None) -> bool:
    """Whether ``out_dir`` holds a complete extraction of the archive with ``md5``:
    its note, and every batch file (of the official size, when known)."""
    note = out_dir / ".md5"
    if not (note.is_file() and note.read_text().strip() == md5):
        return False
    for name in TRAIN_BATCHES + TEST_BATCHES:
        path = out_dir / name
        if not path.is_file() or (batch_bytes is not None
                                  and path.stat().st_size != batch_bytes):
            return False
    return True


def load_cifar10(
    split: Literal["train", "test"] = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    dtype: Literal["float32", "uint8"] = "float32",
    md5: str = CIFAR10_MD5,
    url: str = CIFAR10_URL,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 from the official binary archive.

    Parameters
    ----------
    split : {"train", "test"}
        "train": the 50,000 images of data_batch_1..5 in order; "test": the
        10,000 of test_batch. (He et al. hold out 5,000 training images for
        validation: use :func:`minires.data.stratified_split` on the labels.)
    root : path or None
        Folder holding ``cifar-10-binary.tar.gz`` (and the extracted
        ``cifar-10-batches-bin/``); default :func:`minires.data.data_root`
        (``$MINIRES_DATA``, else ``~/.cache/minires``).
    download : bool
        Fetch the archive from ``url`` when it is not there.
    progress : bool
        Show a progress bar while downloading.
    dtype : {"float32", "uint8"}
        "float32": values scaled to [0, 1]; "uint8": the raw bytes 0-255 (a
        quarter of the memory).
    md5 : str
        Expected MD5 of the archive. Only tests change it (to build small
        archives in the same format); with the official value every batch
        file must also be exactly 30,730,000 bytes.
    url : str
        Where ``download`` fetches from.

    Returns
    -------
    images : (N, 3, 32, 32) array, float32 in [0, 1] or uint8, on the host
    labels : (N,) int64 array, values 0-9 (names in ``CIFAR10_CLASSES``)

    Raises
    ------
    CifarError
        Archive missing (:class:`CifarNotFound`, when ``download`` is False)
        or its download failing, wrong MD5, unexpected or unsafe members,
        wrong sizes or labels. The message names the path where the archive
        belongs and the URL to fetch it from.
    """
    if split not in ("train", "test"):
        raise ValueError(f"load_cifar10: split must be 'train' or 'test', got {split!r}")
    if dtype not in ("float32", "uint8"):
        raise ValueError(f"load_cifar10: dtype must be 'float32' or 'uint8', got {dtype!r}")
    root = data_root(root)
    out_dir = root / CIFAR10_DIR
    expected = OFFICIAL_BATCH_BYTES if md5 == CIFAR10_MD5 else None
    if not _extracted(out_dir, md5, expected):
        archive = root / CIFAR10_ARCHIVE
        if not archive.is_file():
            if not download:
                raise CifarNotFound(
                    f"CIFAR-10 not found: {archive} does not exist. Pass download=True to "
                    f"fetch it. {_manual_instructions(archive)}", archive
                )
            download_cifar10(root, url=url, md5=md5, progress=progress)
        extract_cifar10(archive, root, md5)
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    parts = [read_batch(out_dir / name, expected_bytes=expected) for name in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if dtype == "float32":
        images = images.astype(np.float32)
        images /= np.float32(255.0)
    return images, labels
