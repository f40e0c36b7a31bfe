"""Images stored as one folder per class: ``root/<class name>/*.png|jpg|jpeg``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _import_pil():
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(
            "minires.data.load_image_folder needs Pillow to read images; install it with "
            "`pip install minires[images]` (or `pip install pillow`)."
        ) from err
    return Image


def load_image_folder(
    root: str | os.PathLike[str],
    size: int | tuple[int, int] | None = None,
    mode: Literal["RGB", "L"] = "RGB",
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load every image under ``root/<class name>/`` into one array.

    Classes are the sub-folders of ``root`` sorted by name (label 0 is the
    first); hidden folders (starting with ".") are ignored. Within a class,
    files are taken in sorted order; extensions match case-insensitively.
    Needs Pillow (``pip install minires[images]``).

    Parameters
    ----------
    root : path
        The folder holding one sub-folder per class.
    size : int, (height, width) or None
        Resize every image to this size (bilinear); an int means square. None
        keeps the sizes, which must then all be equal.
    mode : {"RGB", "L"}
        Convert to colour (C = 3) or grayscale (C = 1).
    extensions : tuple of str
        File name endings that count as images.

    Returns
    -------
    images : (N, C, H, W) float32 array, values in [0, 1], on the host
    labels : (N,) int64 array, index into ``class_names``
    class_names : list of str, sorted

    Raises
    ------
    FileNotFoundError : ``root`` is not a folder, or has no class folder or a
        class folder without images.
    ValueError : a file is not a readable image (named in the message), or
        sizes differ while ``size`` is None.
    """
    Image = _import_pil()
    if mode not in ("RGB", "L"):
        raise ValueError(f"load_image_folder: mode must be 'RGB' or 'L', got {mode!r}")
    if isinstance(size, int):
        size = (size, size)
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"load_image_folder: size must be positive (H, W), got {size!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"load_image_folder: {root} is not a folder")
    class_names = sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not class_names:
        raise FileNotFoundError(f"load_image_folder: {root} has no class sub-folders")
    exts = tuple(e.lower() for e in extensions)
    resample = getattr(Image, "Resampling", Image).BILINEAR
    images, labels = [], []
    for label, name in enumerate(class_names):
        files = sorted(
            p for p in (root / name).iterdir() if p.is_file() and p.name.lower().endswith(exts)
        )
        if not files:
            raise FileNotFoundError(
                f"load_image_folder: class folder {root / name} holds no {'/'.join(exts)} files"
            )
        for path in files:
            try:
                with Image.open(path) as im:
                    im = im.convert(mode)
                    if size is not None and im.size != (size[1], size[0]):
                        im = im.resize((size[1], size[0]), resample=resample)  # (W, H)
                    pixels = np.asarray(im, dtype=np.uint8)
            except Image.UnidentifiedImageError:
                raise ValueError(f"load_image_folder: {path} is not a readable image (not a "
                                 "format Pillow recognises); remove or replace it") from None
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                # truncated or corrupt data (OSError), a malformed header (SyntaxError)
                raise ValueError(f"load_image_folder: {path} is not a readable image "
                                 f"({type(err).__name__}: {err}); remove or replace it"
                                 ) from err
            if pixels.ndim == 2:
                pixels = pixels[:, :, None]
            if images and pixels.shape != images[0].shape:
                raise ValueError(
                    f"load_image_folder: {path} is {pixels.shape[1]}x{pixels.shape[0]} but earlier "
                    f"images are {images[0].shape[1]}x{images[0].shape[0]}; pass size=(H, W)"
                )
            images.append(pixels)
            labels.append(label)
    x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(x), np.asarray(labels, dtype=np.int64), class_names
