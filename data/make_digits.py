"""Convert scikit-learn's copy of the UCI digits into ``data/digits.npz`` (run once).

The source is ``sklearn/datasets/data/digits.csv.gz`` inside a scikit-learn
wheel (a zip file): 1,797 rows of 64 pixel values 0-16 (an 8x8 image, row by
row) followed by the label 0-9. This script reads that member straight out of
the wheel; it needs neither scikit-learn installed nor a network. minires
itself never needs scikit-learn: it only reads the ``.npz`` this writes.

Usage::

    pip download --no-deps scikit-learn -d /tmp/skl      # any recent version
    python data/make_digits.py /tmp/skl/scikit_learn-*.whl

The output holds two arrays, ``images`` uint8 (1797, 8, 8) with values 0-16
and ``labels`` uint8 (1797,), in the row order of the CSV. The train/test
split is not stored: ``minires.data.load_digits`` derives it from the labels
(see data/README.md).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "sklearn/datasets/data/digits.csv.gz"
# sha256 of images.tobytes() + labels.tobytes() (uint8, C order) of the
# converted arrays; the same digits whatever the wheel's version or zlib.
CONTENT_SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the uint8 pixel bytes followed by the uint8 label bytes."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return h.hexdigest()


def read_csv_gz(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Parse the gzipped CSV into (images uint8 (N, 8, 8), labels uint8 (N,))."""
    text = gzip.decompress(raw).decode("ascii")
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 65:
        raise ValueError(f"expected rows of 65 integers, got table of shape {table.shape}")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16:
        raise ValueError(f"pixel values outside 0..16: [{pixels.min()}, {pixels.max()}]")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"labels outside 0..9: [{labels.min()}, {labels.max()}]")
    return pixels.reshape(-1, 8, 8).astype(np.uint8), labels.astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="a scikit-learn wheel (.whl)")
    parser.add_argument(
        "-o", "--output", type=Path, default=Path(__file__).resolve().parent / "digits.npz"
    )
    args = parser.parse_args(argv)

    with zipfile.ZipFile(args.wheel) as wheel:
        raw = wheel.read(MEMBER)
    print(f"{MEMBER}: {len(raw):,} bytes, sha256 {hashlib.sha256(raw).hexdigest()}")
    images, labels = read_csv_gz(raw)
    if images.shape != (1797, 8, 8):
        raise ValueError(f"expected 1,797 images, got {images.shape[0]:,}")
    digest = content_sha256(images, labels)
    print(f"content sha256 {digest}")
    if digest != CONTENT_SHA256:
        raise ValueError(
            f"these digits differ from the ones minires ships (content sha256 {digest}, "
            f"expected {CONTENT_SHA256}); check the wheel before replacing data/digits.npz"
        )
    print("images per class:", np.bincount(labels, minlength=10).tolist())

    np.savez_compressed(args.output, images=images, labels=labels)
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
