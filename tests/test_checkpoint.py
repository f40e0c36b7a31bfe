"""Checkpoints: round trips, atomic writes, integrity checks, no pickle."""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import pathlib
import subprocess
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
from util import strict

from minires import checkpoint, optim
from minires.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minires.nn import Parameter


def model_state(seed=0):
    rng = np.random.default_rng(seed)
    return OrderedDict([
        ("conv1.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        ("bn1.weight", np.ones(4, dtype=np.float32)),
        ("bn1.bias", np.zeros(4, dtype=np.float32)),
        ("bn1.running_mean", rng.standard_normal(4).astype(np.float32)),
        ("bn1.running_var", rng.random(4).astype(np.float32)),
        ("bn1.num_batches_tracked", np.array(17, dtype=np.int64)),
        ("fc.weight", rng.standard_normal((2, 4))),  # float64
        ("fc.bias", np.array([1.5, -2.0], dtype=np.float16)),
        ("mask", np.array([True, False, True])),
        ("empty", np.zeros((0, 3), dtype=np.float32)),
    ])


def trained_optimizer():
    params = [Parameter(np.ones((2, 3))), Parameter(np.zeros(3))]
    opt = optim.Adam([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}])
    sched = optim.MultiStepLR(opt, [2, 4])
    for step in range(3):
        for p in params:
            p.grad = np.full(p.shape, 0.1 * (step + 1))
        opt.step()
        sched.step()
    return opt, sched


def assert_same(a, b):
    """Equal values and types, recursively; arrays bitwise with the same dtype."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
        return
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def save_full(path, seed=0, epoch=12):
    opt, sched = trained_optimizer()
    rng = np.random.default_rng(seed)
    rng.random(5)
    fields = dict(
        optimizer_state=opt.state_dict(), scheduler_state=sched.state_dict(), epoch=epoch,
        rng_state={"data": rng, "init": np.random.MT19937(3).state},
        config={"model": "resnet20", "lr": 0.1, "milestones": [91, 136], "nesterov": False,
                "note": "température", "data": {"root": None, "augment": True}},
        extra={"history": {"loss": np.array([2.3, 1.1, 0.7])}, "best_acc": np.float32(0.5),
               "iteration": 4692, 3: ("a", 1)},
    )
    save_checkpoint(path, model_state=model_state(seed), **fields)
    return fields, rng


def test_round_trip(tmp_path):
    path = tmp_path / "ckpt.npz"
    fields, rng = save_full(path)
    out = load_checkpoint(path)
    assert set(out) == {"model_state", "optimizer_state", "scheduler_state", "epoch",
                        "rng_state", "config", "extra"}
    assert isinstance(out["model_state"], OrderedDict)
    assert_same(dict(out["model_state"]), dict(model_state()))
    assert list(out["model_state"]) == list(model_state())
    assert_same(out["optimizer_state"], fields["optimizer_state"])
    assert out["optimizer_state"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert_same(out["scheduler_state"], fields["scheduler_state"])
    assert out["epoch"] == 12
    assert_same(out["config"], fields["config"])
    assert_same(out["extra"], fields["extra"])
    assert type(out["extra"]["best_acc"]) is np.float32
    # the RNG continues where it stopped
    restored = checkpoint.rng_from_state(out["rng_state"]["data"])
    assert np.array_equal(restored.random(4), rng.random(4))
    mt = np.random.MT19937(0)
    mt.state = out["rng_state"]["init"]
    assert np.random.Generator(mt).integers(1 << 30) == \
        np.random.Generator(np.random.MT19937(3)).integers(1 << 30)


def test_minimal_checkpoint_and_layout(tmp_path):
    path = tmp_path / "m.npz"
    save_checkpoint(path, model_state={"w": np.arange(3.0)})
    out = load_checkpoint(path)
    assert out["epoch"] == 0 and out["optimizer_state"] is None and out["config"] is None

    @dataclasses.dataclass
    class Config:
        depth: int = 20
        root: pathlib.Path = pathlib.Path("/data/cifar")

    save_checkpoint(path, model_state={}, config=Config())
    assert load_checkpoint(path)["config"] == {"depth": 20, "root": "/data/cifar"}
    save_checkpoint(path, model_state={}, config=argparse.Namespace(lr=0.1))
    assert load_checkpoint(path)["config"] == {"lr": 0.1}
    opt, _ = trained_optimizer()
    save_checkpoint(path, model_state=model_state(), optimizer_state=opt.state_dict())
    with np.load(path, allow_pickle=False) as f:
        names = set(f.files)
    assert {"model/conv1.weight", "model/bn1.running_mean", "optim/state/0/exp_avg",
            "optim/__tree__", "__meta__", "__digest__"} <= names


def test_resume_equals_uninterrupted(tmp_path):
    """Train, checkpoint, restore into new objects, continue: bitwise the same."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 5)), rng.standard_normal(64)

    def build():
        w = Parameter(np.zeros(5))
        opt = optim.SGD([w], lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
        return w, opt, optim.CosineAnnealingLR(opt, T_max=20)

    def train(w, opt, sched, data_rng, epochs):
        for _ in range(epochs):
            idx = data_rng.permutation(64)[:16]
            w.grad = 2 * x[idx].T @ (x[idx] @ w.data - y[idx]) / 16
            opt.step()
            sched.step()

    w, opt, sched = build()
    train(w, opt, sched, np.random.default_rng(1), 20)

    w1, opt1, sched1 = build()
    data_rng = np.random.default_rng(1)
    train(w1, opt1, sched1, data_rng, 8)
    path = tmp_path / "resume.npz"
    save_checkpoint(path, model_state={"w": w1.data}, optimizer_state=opt1.state_dict(),
                    scheduler_state=sched1.state_dict(), epoch=8, rng_state=data_rng)
    ck = load_checkpoint(path)
    w2, opt2, sched2 = build()
    w2.data[...] = ck["model_state"]["w"]
    opt2.load_state_dict(ck["optimizer_state"])
    sched2.load_state_dict(ck["scheduler_state"])
    train(w2, opt2, sched2, checkpoint.rng_from_state(ck["rng_state"]), 20 - ck["epoch"])
    assert np.array_equal(w.data, w2.data)
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_state_dict_files(tmp_path):
    path = tmp_path / "weights.npz"
    checkpoint.save_state_dict(path, model_state())
    assert_same(dict(checkpoint.load_state_dict_file(path)), dict(model_state()))
    with pytest.raises(CheckpointError, match="load_state_dict_file"):
        load_checkpoint(path)
    full = tmp_path / "full.npz"
    save_full(full)
    assert list(checkpoint.load_state_dict_file(full)) == list(model_state())


def test_backend_arrays_are_moved_to_host(tmp_path):
    path = tmp_path / "s.npz"
    expected = {k: v for k, v in model_state().items() if v.dtype != np.float16}
    checkpoint.save_state_dict(path, {k: strict(v) for k, v in expected.items()})
    assert_same(dict(checkpoint.load_state_dict_file(path)), expected)


@pytest.mark.gpu
def test_cupy_arrays_are_moved_to_host(tmp_path):
    import cupy

    path = tmp_path / "gpu.npz"
    params = [Parameter(cupy.ones((3, 2), dtype=cupy.float32))]
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    params[0].grad = cupy.full((3, 2), 0.5, dtype=cupy.float32)
    opt.step()
    save_checkpoint(path, model_state={"w": params[0].data}, optimizer_state=opt.state_dict())
    out = load_checkpoint(path)
    assert out["model_state"]["w"].dtype == np.float32
    assert np.array_equal(out["model_state"]["w"], np.full((3, 2), 0.95, dtype=np.float32))
    restored = optim.SGD([Parameter(cupy.asarray(out["model_state"]["w"]))], lr=0.1,
                         momentum=0.9)
    restored.load_state_dict(out["optimizer_state"])
    buf = next(iter(restored.state.values()))["momentum_buffer"]
    assert isinstance(buf, cupy.ndarray) and buf.dtype == cupy.float32


# --- atomic writes ---------------------------------------------------------------------
def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model_state=model_state(0), epoch=1)
    real = np.lib.format.write_array
    calls = []

    def crash_on_third(fp, array, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            fp.write(b"partial garbage")
            raise RuntimeError("disk full")
        return real(fp, array, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", crash_on_third)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, model_state=model_state(1), epoch=2)
    monkeypatch.setattr(np.lib.format, "write_array", real)
    out = load_checkpoint(path)
    assert out["epoch"] == 1
    assert_same(dict(out["model_state"]), dict(model_state(0)))
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # the temporary file was removed


def test_failed_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model_state=model_state(0), epoch=1)

    def no_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(path, model_state=model_state(1), epoch=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    new = tmp_path / "sub" / "first.npz"  # a first save that fails leaves nothing
    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError):
        save_checkpoint(new, model_state=model_state(1))
    assert not new.exists() and os.listdir(new.parent) == []


def test_process_killed_mid_write_keeps_previous_checkpoint(tmp_path):
    """A hard crash (no cleanup, no exception handling) while writing."""
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model_state=model_state(0), epoch=1)
    code = f"""
import os, numpy as np
from minires.checkpoint import save_checkpoint
real = np.lib.format.write_array
calls = []
def die(fp, array, **kw):
    calls.append(1)
    if len(calls) == 4:
        fp.write(b"half")
        os._exit(3)
    return real(fp, array, **kw)
np.lib.format.write_array = die
save_checkpoint({str(path)!r}, model_state={{"w": np.ones((100, 100))}} | dict(
    (f"b{{i}}", np.zeros(i + 1)) for i in range(5)), epoch=2)
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    for _ in range(2):  # killed twice: two temporary files are left behind
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                                env=env, cwd=tmp_path)
        assert result.returncode == 3, result.stderr.decode()
    assert load_checkpoint(path)["epoch"] == 1
    leftovers = [n for n in os.listdir(tmp_path) if n != "ckpt.npz"]
    assert len(leftovers) == 2 and all(n.startswith(".ckpt.npz.") for n in leftovers)
    # the next save of the same target removes them (their processes are gone)
    save_checkpoint(path, model_state=model_state(2), epoch=3)
    assert os.listdir(tmp_path) == ["ckpt.npz"] and load_checkpoint(path)["epoch"] == 3


def test_only_stale_temporaries_are_removed(tmp_path):
    """Stale: a dead writer's file, or an old one in mkstemp's naming (earlier
    minires). Kept: a running writer's, a recent mkstemp-named one, other targets'."""
    from minires.atomic import LEGACY_STALE_AFTER_S

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(proc.stdout)  # exited and reaped
    names = {
        f".ckpt.npz.{dead}.0badf00d.tmp": False,
        ".ckpt.npz.k3x_9qa1.tmp": False,       # legacy, backdated below
        f".ckpt.npz.{os.getpid()}.12345678.tmp": True,  # this process: maybe writing now
        f".ckpt.npz.{os.getppid()}.12345678.tmp": True,  # a running process
        ".ckpt.npz.fresh123.tmp": True,        # legacy, but recent
        f".other.npz.{dead}.0badf00d.tmp": True,
        "ckpt.npz.notes": True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"half a checkpoint")
    old = os.path.getmtime(tmp_path / ".ckpt.npz.k3x_9qa1.tmp") - LEGACY_STALE_AFTER_S - 5
    os.utime(tmp_path / ".ckpt.npz.k3x_9qa1.tmp", (old, old))
    save_checkpoint(tmp_path / "ckpt.npz", model_state=model_state(0))
    kept = {name for name, keep in names.items() if keep}
    assert set(os.listdir(tmp_path)) == kept | {"ckpt.npz"}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_written_files_follow_the_umask(tmp_path, umask):
    """Like open(): mode 0666 less the umask (mkstemp would give 0600 always)."""
    from minires.plot import plot_history
    from minires.train import write_metrics

    history = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}]
    before = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "ckpt.npz", model_state=model_state(0))
        checkpoint.save_state_dict(tmp_path / "w.npz", model_state(0))
        write_metrics(history, tmp_path)
        plot_history(history, tmp_path / "curves.png")
    finally:
        os.umask(before)
    for name in ("ckpt.npz", "w.npz", "metrics.json", "metrics.csv", "curves.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# --- damaged, foreign and tampered files ----------------------------------------------------
def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(CheckpointError, match="nope.npz"):
        load_checkpoint(path)
    assert issubclass(CheckpointError, ValueError)


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1, -30])
def test_truncated_file(tmp_path, keep):
    path = tmp_path / "t.npz"
    save_full(path)
    data = path.read_bytes()
    n = keep if isinstance(keep, int) and keep >= 0 else \
        int(len(data) * keep) if isinstance(keep, float) else len(data) + keep
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match="t.npz"):
        load_checkpoint(path)


def rewrite_member(path, member, edit):
    """Rewrite one zip member through zipfile (valid CRCs, so only the digest can tell)."""
    with zipfile.ZipFile(path) as zf:
        contents = {info.filename: zf.read(info) for info in zf.infolist()}
    contents[member] = edit(contents[member])
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in contents.items():
            zf.writestr(name, data)


def test_tampered_member_is_detected(tmp_path):
    path = tmp_path / "c.npz"
    save_full(path)

    def flip_last_byte(data):
        return data[:-1] + bytes([data[-1] ^ 0x01])

    rewrite_member(path, "model/conv1.weight.npy", flip_last_byte)
    with np.load(path, allow_pickle=False) as f:  # still a valid npz
        assert f["model/conv1.weight"].shape == (4, 3, 3, 3)
    with pytest.raises(CheckpointError, match="c.npz.*integrity"):
        load_checkpoint(path)


def test_edited_and_resaved_array_is_detected(tmp_path):
    path = tmp_path / "c.npz"
    save_full(path)
    with np.load(path, allow_pickle=False) as f:
        arrays = dict(f.items())
    arrays["optim/state/0/exp_avg"] = arrays["optim/state/0/exp_avg"] * 2
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="integrity"):
        load_checkpoint(path)
    # the metadata is covered too: a changed epoch is refused
    save_full(path)
    rewrite_member(path, "__meta__.npy",
                   lambda d: d.replace(b'"epoch": 12', b'"epoch": 99'))
    with pytest.raises(CheckpointError, match="integrity"):
        load_checkpoint(path)
    # and a renamed entry
    save_full(path)
    with np.load(path, allow_pickle=False) as f:
        arrays = dict(f.items())
    arrays["model/fc.bias2"] = arrays.pop("model/fc.bias")
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="integrity"):
        load_checkpoint(path)


def test_corrupted_bytes_are_detected(tmp_path):
    path = tmp_path / "c.npz"
    save_full(path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model/fc.weight.npy")
    data[info.header_offset + 200] ^= 0xFF  # inside the member's array bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="c.npz"):
        load_checkpoint(path)


def test_foreign_files_are_refused(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.ones(3))
    with pytest.raises(CheckpointError, match="plain.npz.*not a minires checkpoint"):
        load_checkpoint(plain)
    npy = tmp_path / "a.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(CheckpointError, match="a.npy.*not a minires checkpoint"):
        load_checkpoint(npy)
    text = tmp_path / "notes.npz"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.npz"):
        checkpoint.load_state_dict_file(text)


@pytest.mark.parametrize("content, kind", [
    (b"epoch,loss\n1,0.5\n", "a text file"),
    ("caf\u00e9 ".encode() * 1000, "a text file"),  # a character cut at the 4096th byte
    (b"", "an empty file"),
    (b"\x80\x04\x95\x05\x00", "a Python pickle (which minires never loads)"),
    (b"\x00\x01\xff\xfe" * 8, "a file in an unknown format"),
], ids=["text", "long-utf8-text", "empty", "pickle", "binary"])
def test_a_file_that_is_not_an_archive_is_named_for_what_it_is(tmp_path, content, kind):
    """Not NumPy's advice to load it with allow_pickle (np.load tries pickle on
    anything that is not a zip or .npy file)."""
    path = tmp_path / "run.npz"
    path.write_bytes(content)
    for load in (load_checkpoint, checkpoint.load_state_dict_file):
        with pytest.raises(CheckpointError) as err:
            load(path)
        assert str(err.value).startswith(f"{path}: not a minires checkpoint: this is {kind}, "
                                         "not an .npz archive")
        assert "pickle=" not in str(err.value) and "pickle.load" not in str(err.value)
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)


def test_an_object_array_is_refused_without_numpys_advice(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, a=np.array([1, "x"], dtype=object))
    with pytest.raises(CheckpointError, match="holds Python objects") as err:
        load_checkpoint(path)
    assert "allow_pickle" not in str(err.value)


_unpickled = []


class Trap:
    """Unpickling this records a call: proof that a loader ran pickle."""

    def __reduce__(self):
        return (_unpickled.append, ("unpickled!",))


def test_pickled_content_is_never_unpickled(tmp_path):
    path = tmp_path / "evil.npz"
    save_full(path)
    with np.load(path, allow_pickle=False) as f:
        arrays = dict(f.items())
    arrays["model/conv1.weight"] = np.array([Trap()], dtype=object)
    np.savez(path, **arrays)  # np.savez pickles object arrays
    pickled = tmp_path / "evil.npy"
    np.save(pickled, np.array([Trap()], dtype=object), allow_pickle=True)
    raw = tmp_path / "evil.pkl"
    import pickle

    raw.write_bytes(pickle.dumps(Trap()))
    for p in (path, pickled, raw):
        with pytest.raises(CheckpointError):
            load_checkpoint(p)
    assert _unpickled == []


def test_unstorable_values_are_refused(tmp_path):
    path = tmp_path / "x.npz"
    with pytest.raises(CheckpointError, match="object"):
        save_checkpoint(path, model_state={"w": np.array([1, "a", None], dtype=object)})
    with pytest.raises(CheckpointError, match="extra.*set"):
        save_checkpoint(path, model_state={}, extra={"s": {1, 2}})
    with pytest.raises(CheckpointError, match="model.state_dict"):
        save_checkpoint(path, model_state=[np.ones(2)])
    with pytest.raises(CheckpointError, match="not an array"):
        checkpoint.save_state_dict(path, {"w": [1.0, 2.0]})
    assert not path.exists()


def test_flatten_tree_round_trip():
    tree = {"state": {0: {"buf": np.arange(3.0)}, 5: {}}, "groups": [{"betas": (0.9, 0.99)}],
            "a/b": np.ones(2), "a": {"b": np.zeros(2)}, "__minires_array__": "x",
            None: [1, 2.5, "s", True, None], "n": np.int16(7)}
    flat = checkpoint.flatten_tree(tree, "p/")
    assert all(k.startswith("p/") and isinstance(v, np.ndarray) for k, v in flat.items())
    buf = io.BytesIO()
    np.savez(buf, **flat)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        assert_same(checkpoint.unflatten_tree(dict(f.items()), "p/"), tree)
