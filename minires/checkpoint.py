"""Checkpoints: one ``.npz`` file, written atomically, checked on load, no pickle.

Layout of a file (every entry is an array with a string key):

- ``model/<name>``: the model's state dict (``model/conv1.weight``,
  ``model/bn1.running_mean``, ...), dtypes kept, moved to the host.
- ``optim/...``, ``sched/...``, ``rng/...``, ``config/...``, ``extra/...``:
  nested data (dicts, lists, numbers, strings, arrays) flattened by
  ``flatten_tree``: the arrays under readable names
  (``optim/state/0/momentum_buffer``) and the rest as JSON text in
  ``<prefix>__tree__``.
- ``__meta__``: JSON (format, version, kind, epoch, order of the model keys).
- ``__digest__``: SHA-256 over every other entry (name, dtype, shape, bytes),
  checked on load, so an edited or damaged file is refused.

JSON text is stored as a ``uint8`` array of its UTF-8 bytes. Files are read
with ``np.load(path, allow_pickle=False)``; object arrays are refused on both
sides. Writing goes through ``minires.atomic.atomic_write``: a temporary file
in the target's directory, flushed, fsynced and then renamed over the target
with ``os.replace``, so a crash at any moment leaves either the old file or
the new one, never a mix (and a later save removes the temporary file such a
crash left behind). The file's permissions follow the umask.

Any problem reading a file (missing, truncated, corrupted, not a minires
checkpoint, digest mismatch) raises ``CheckpointError``, a ``ValueError``
naming the path.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import backend
from .atomic import atomic_write

__all__ = [
    "CheckpointError", "save_checkpoint", "load_checkpoint", "save_state_dict",
    "load_state_dict_file", "flatten_tree", "unflatten_tree", "rng_from_state",
]

FORMAT = "minires-checkpoint"
VERSION = 1
META_KEY = "__meta__"
DIGEST_KEY = "__digest__"
TREE_KEY = "__tree__"
_FIELDS = {"optimizer_state": "optim/", "scheduler_state": "sched/", "rng_state": "rng/",
           "config": "config/", "extra": "extra/"}
_ALLOWED_KINDS = "biufcSU"  # bool, ints, floats, complex, bytes, unicode: no objects
_TAG = "__minires_"  # JSON objects with one key starting with this are special nodes


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read; the message names the file."""


# ---------------------------------------------------------------------------
# JSON text <-> uint8 arrays
# ---------------------------------------------------------------------------
def _json_array(obj: Any) -> np.ndarray:
    text = json.dumps(obj, sort_keys=False, allow_nan=True)
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def _json_load(a: np.ndarray) -> Any:
    if a.dtype != np.uint8 or a.ndim != 1:
        raise ValueError(f"expected JSON text as a 1-D uint8 array, got {a.dtype} {a.shape}")
    return json.loads(a.tobytes().decode("utf-8"))


# ---------------------------------------------------------------------------
# nested data <-> flat dict of arrays
# ---------------------------------------------------------------------------
def flatten_tree(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested data as a flat dict of NumPy arrays (what an ``.npz`` holds).

    Arrays (NumPy, CuPy, torch, ...) become entries named by their path,
    e.g. ``prefix + "state/0/exp_avg"``; everything else (dicts with any
    scalar keys, lists, tuples, None, bools, ints, floats, strings, NumPy
    scalars) is kept as JSON text in ``prefix + "__tree__"``, with
    placeholders for the arrays. NumPy ``Generator``/``BitGenerator`` objects
    are stored as their ``bit_generator.state`` dict, paths as strings.

    Parameters
    ----------
    tree : the data, e.g. ``optimizer.state_dict()``.
    prefix : str prepended to every key, e.g. ``"optim/"``.

    Returns
    -------
    dict str -> np.ndarray; ``unflatten_tree(result, prefix)`` gives ``tree``
    back (tuples as tuples, int keys as ints, arrays as NumPy arrays).
    """
    arrays: dict[str, np.ndarray] = {}

    def encode(node: Any, path: str) -> Any:
        if isinstance(node, np.random.Generator):
            node = node.bit_generator.state
        elif isinstance(node, np.random.BitGenerator):
            node = node.state
        if isinstance(node, os.PathLike):
            node = os.fspath(node)  # comes back as a str
        if isinstance(node, np.generic):  # before float: np.float64 is a float
            return {_TAG + "scalar__": encode_array(np.asarray(node), path)}
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, Mapping):
            keys = list(node.keys())
            if all(isinstance(k, str) and not k.startswith(_TAG) for k in keys):
                return {k: encode(node[k], f"{path}/{k}") for k in keys}
            items = []
            for k in keys:
                if not (k is None or isinstance(k, (bool, int, float, str))):
                    raise CheckpointError(f"flatten_tree: key {k!r} at {path or '/'} is not "
                                          "a str, int, float, bool or None")
                items.append([k, encode(node[k], f"{path}/{k}")])
            return {_TAG + "items__": items}
        if isinstance(node, tuple):
            return {_TAG + "tuple__": [encode(v, f"{path}/{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [encode(v, f"{path}/{i}") for i, v in enumerate(node)]
        if hasattr(node, "shape") and hasattr(node, "dtype"):
            return {_TAG + "array__": encode_array(node, path)}
        raise CheckpointError(f"flatten_tree: cannot store a {type(node).__name__} "
                              f"(at {path or '/'}); use arrays, numbers, strings, "
                              "lists, tuples and dicts")

    def encode_array(a: Any, path: str) -> str:
        a = _host_array(a, prefix + path.lstrip("/"))
        name = path.lstrip("/") or "value"
        unique, n = name, 1
        while prefix + unique in arrays or unique == TREE_KEY:
            unique, n = f"{name}~{n}", n + 1
        arrays[prefix + unique] = a
        return unique

    skeleton = encode(tree, "")
    arrays[prefix + TREE_KEY] = _json_array(skeleton)
    return arrays


def unflatten_tree(flat: Mapping[str, Any], prefix: str = "") -> Any:
    """Inverse of ``flatten_tree``: the nested data stored under ``prefix``."""
    if prefix + TREE_KEY not in flat:
        raise KeyError(f"unflatten_tree: no entry {prefix + TREE_KEY!r}")

    def decode(node: Any) -> Any:
        if isinstance(node, list):
            return [decode(v) for v in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (tag, value), = node.items()
            if tag == _TAG + "array__":
                return np.asarray(flat[prefix + value])
            if tag == _TAG + "scalar__":
                return np.asarray(flat[prefix + value])[()]
            if tag == _TAG + "tuple__":
                return tuple(decode(v) for v in value)
            if tag == _TAG + "items__":
                return {k: decode(v) for k, v in value}
        return {k: decode(v) for k, v in node.items()}

    return decode(_json_load(np.asarray(flat[prefix + TREE_KEY])))


def rng_from_state(state: Mapping[str, Any]) -> np.random.Generator:
    """A NumPy ``Generator`` continuing from a saved ``bit_generator.state``.

    Parameters
    ----------
    state : dict as stored by ``save_checkpoint(rng_state=generator)``.
    """
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = dict(state)
    return np.random.Generator(bit_generator)


def _host_array(a: Any, key: str) -> np.ndarray:
    a = np.asarray(backend.to_numpy(a))
    if a.dtype.kind not in _ALLOWED_KINDS or a.dtype.fields is not None:
        raise CheckpointError(f"cannot store {key!r}: dtype {a.dtype} is not a plain numeric, "
                              "bool or string dtype (object arrays would need pickle)")
    return _c_order(a)


def _c_order(a: np.ndarray) -> np.ndarray:
    """``a`` in C order (``np.ascontiguousarray`` would turn 0-d into 1-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


# ---------------------------------------------------------------------------
# integrity
# ---------------------------------------------------------------------------
def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the entries (sorted by name): name, dtype, shape, bytes."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        if name == DIGEST_KEY:
            continue
        a = _c_order(np.asarray(arrays[name]))
        header = f"{len(name)}:{name}|{a.dtype.str}|{a.shape}|{a.nbytes}\n"
        h.update(header.encode("utf-8"))
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


# ---------------------------------------------------------------------------
# writing and reading one .npz
# ---------------------------------------------------------------------------
def _write_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` at ``path`` so that a crash leaves the old file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        # What np.savez does, with allow_pickle=False on every member.
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED,
                             allowZip64=True) as zf:
            for name, a in arrays.items():
                with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, a, allow_pickle=False)


def _save(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    arrays[META_KEY] = _json_array(meta)
    arrays[DIGEST_KEY] = np.frombuffer(_digest(arrays).encode("ascii"), dtype=np.uint8).copy()
    _write_atomic(path, arrays)


def _file_kind(path: str) -> str:
    """``"zip"`` for a zip archive (what an ``.npz`` is), else a few words on what
    the file is instead, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if not head:
        return "an empty file"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array"
    if head[:1] == b"\x80" and 2 <= head[1:2][0] <= 5:
        return "a Python pickle (which minires never loads)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:  # a character cut at the 4096th byte is still text
        text = head[:err.start].decode("utf-8") if err.start > len(head) - 4 else None
    if text is not None and "\x00" not in text:
        return "a text file"
    return "a file in an unknown format"


def _read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every entry of a minires ``.npz`` and its metadata, verified."""
    shown = os.fspath(path)
    if not os.path.exists(shown):
        raise CheckpointError(f"{shown}: no such checkpoint file")
    if os.path.isdir(shown):
        raise CheckpointError(f"{shown}: is a folder, not a checkpoint file")
    kind = _file_kind(shown)
    if kind != "zip":  # np.load would try pickle, and pass on its advice to allow it
        raise CheckpointError(f"{shown}: not a minires checkpoint: this is {kind}, not an "
                              ".npz archive (checkpoints are the .npz files written by "
                              "minires train or save_checkpoint)")
    try:
        with np.load(shown, allow_pickle=False) as loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except Exception as err:  # zip or npy damage, or an object array refused
        reason = f"{type(err).__name__}: {err}"
        if "pickle" in reason:  # not NumPy's advice to load it with allow_pickle
            reason = "it holds Python objects, which could only be read by unpickling"
        raise CheckpointError(f"{shown}: cannot read the checkpoint, the file is truncated, "
                              f"corrupted or not a minires .npz archive ({reason})") from err
    if META_KEY not in arrays or DIGEST_KEY not in arrays:
        raise CheckpointError(f"{shown}: not a minires checkpoint (no {META_KEY!r} and "
                              f"{DIGEST_KEY!r} entries)")
    stored = arrays[DIGEST_KEY]
    expected = stored.tobytes().decode("ascii", "replace") if stored.dtype == np.uint8 else ""
    actual = _digest(arrays)
    if expected != actual:
        raise CheckpointError(f"{shown}: integrity check failed, the SHA-256 digest of the "
                              f"stored arrays is {actual} but the file records {expected!r}; "
                              "the file was modified or damaged")
    try:
        meta = _json_load(arrays[META_KEY])
    except ValueError as err:
        raise CheckpointError(f"{shown}: unreadable {META_KEY!r} entry ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{shown}: not a minires checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{shown}: checkpoint format version {meta.get('version')}, "
                              f"this minires reads version {VERSION}")
    return arrays, meta


def _model_arrays(model_state: Any, what: str) -> tuple[dict[str, np.ndarray], list[str]]:
    if not isinstance(model_state, Mapping):
        raise CheckpointError(f"{what}: model_state must be a mapping name -> array (e.g. "
                              f"model.state_dict()), got {type(model_state).__name__}")
    arrays, keys = {}, []
    for key, value in model_state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{what}: state dict keys must be strings, got {key!r}")
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            raise CheckpointError(f"{what}: model_state[{key!r}] is a "
                                  f"{type(value).__name__}, not an array")
        arrays["model/" + key] = _host_array(value, key)
        keys.append(key)
    return arrays, keys


def _model_state(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any],
                 shown: str) -> OrderedDict[str, np.ndarray]:
    try:
        return OrderedDict((k, arrays["model/" + k]) for k in meta["model_keys"])
    except KeyError as err:
        raise CheckpointError(f"{shown}: model entry {err} listed but missing") from err


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, *, model_state: Mapping[str, Any],
                    optimizer_state: Any = None, scheduler_state: Any = None, epoch: int = 0,
                    rng_state: Any = None, config: Any = None, extra: Any = None) -> None:
    """Save a training state to one ``.npz`` file, atomically.

    Parameters
    ----------
    path : target file (conventionally ``*.npz``); its directory is created.
    model_state : mapping name -> array, ``model.state_dict()`` (any backend).
    optimizer_state : ``optimizer.state_dict()`` or None.
    scheduler_state : ``scheduler.state_dict()`` or None.
    epoch : int, epochs completed.
    rng_state : a NumPy ``Generator`` (stored as its ``bit_generator.state``),
        such a state dict, or nested dicts/lists of them; or None.
    config : dict (or dataclass, or argparse.Namespace) of settings, JSON-like data; or None.
    extra : any other nested data (numbers, strings, arrays) or None.

    Raises
    ------
    CheckpointError when something cannot be stored without pickle. If
    writing fails, the file previously at ``path`` is left unchanged.
    """
    shown = os.fspath(path)
    arrays, keys = _model_arrays(model_state, f"save_checkpoint({shown})")
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    elif isinstance(config, argparse.Namespace):
        config = vars(config)
    values = {"optimizer_state": optimizer_state, "scheduler_state": scheduler_state,
              "rng_state": rng_state, "config": config, "extra": extra}
    present = []
    for field, prefix in _FIELDS.items():
        if values[field] is not None:
            try:
                arrays.update(flatten_tree(values[field], prefix))
            except CheckpointError as err:
                raise CheckpointError(f"save_checkpoint({shown}): {field}: {err}") from err
            present.append(field)
    meta = {"format": FORMAT, "version": VERSION, "kind": "checkpoint", "epoch": int(epoch),
            "model_keys": keys, "fields": present}
    _save(path, arrays, meta)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by ``save_checkpoint``, after checking its digest.

    Returns
    -------
    dict with ``model_state`` (OrderedDict name -> NumPy array, saved order and
    dtypes), ``optimizer_state``, ``scheduler_state``, ``rng_state``,
    ``config``, ``extra`` (as saved, arrays as NumPy arrays; None when not
    saved) and ``epoch`` (int).

    Raises
    ------
    CheckpointError for a missing, truncated, corrupted or modified file, or
    one that is not a minires checkpoint (a weights-only file from
    ``save_state_dict`` included: read it with ``load_state_dict_file``).
    """
    shown = os.fspath(path)
    arrays, meta = _read(path)
    if meta.get("kind") != "checkpoint":
        raise CheckpointError(f"{shown}: holds a {meta.get('kind')!r}, not a training "
                              "checkpoint; read model weights with load_state_dict_file")
    out: dict[str, Any] = {"model_state": _model_state(arrays, meta, shown),
                           "epoch": int(meta["epoch"])}
    for field, prefix in _FIELDS.items():
        out[field] = unflatten_tree(arrays, prefix) if field in meta["fields"] else None
    return out


def save_state_dict(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Save model weights (``model.state_dict()``) alone, atomically, as ``.npz``.

    Same format and guarantees as ``save_checkpoint`` (digest, no pickle).
    """
    shown = os.fspath(path)
    arrays, keys = _model_arrays(state, f"save_state_dict({shown})")
    meta = {"format": FORMAT, "version": VERSION, "kind": "state_dict", "model_keys": keys}
    _save(path, arrays, meta)


def load_state_dict_file(path: str | os.PathLike) -> OrderedDict[str, np.ndarray]:
    """Model weights from a ``save_state_dict`` file (or a full checkpoint).

    Returns
    -------
    OrderedDict name -> NumPy array, ready for ``model.load_state_dict``.
    """
    arrays, meta = _read(path)
    return _model_state(arrays, meta, os.fspath(path))
