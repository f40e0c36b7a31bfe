"""minires.data: bundled digits, CIFAR-10 archives, image folders, DataLoader, transforms.

No test touches the network: CIFAR-10 tests build small archives in the exact
binary format (a few records per batch) and pass their MD5; downloads go
through a monkeypatched ``urllib.request.urlopen``.
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from util import host

from minires import backend
from minires.data import (
    CIFAR10_MD5,
    CIFAR10_URL,
    CifarError,
    CifarNotFound,
    Compose,
    DataLoader,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    bundled_file,
    channel_stats,
    data_root,
    load_cifar10,
    load_digits,
    load_image_folder,
    stratified_split,
)
from minires.data.cifar import OFFICIAL_BATCH_BYTES, RECORD_BYTES, read_batch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def strict_backend():
    """Run the test with array-api-strict as the active backend, then restore."""
    previous = backend.name()
    backend.use("array_api_strict")
    try:
        yield
    finally:
        backend.use(previous)


# --------------------------------------------------------------------------
# bundled digits and the split
# --------------------------------------------------------------------------

DIGITS_CONTENT_SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"
DIGITS_TEST_IDX_SHA256 = "2f597062c63468e24424c5c5dc78adb3e06f62160660315a50ae43d6df3ce5b0"
PER_CLASS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
PER_CLASS_TEST = [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]


def test_digits_file_is_small_and_holds_the_uci_test_part():
    path = bundled_file("digits.npz")
    assert path.stat().st_size < 64_000
    with np.load(path, allow_pickle=False) as f:
        assert set(f.files) == {"images", "labels"}
        images, labels = f["images"], f["labels"]
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.uint8
    assert images.max() == 16 and images.min() == 0
    assert np.bincount(labels).tolist() == PER_CLASS
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    assert digest == DIGITS_CONTENT_SHA256
    with pytest.raises(FileNotFoundError, match="no_such_file.npz"):
        bundled_file("no_such_file.npz")


@pytest.mark.parametrize(("split", "n"), [("train", 1438), ("test", 359), ("all", 1797)])
def test_load_digits_shapes_dtypes_and_scaling(split, n):
    x, y = load_digits(split)
    assert x.shape == (n, 1, 8, 8) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x * 16, np.round(x * 16))  # counts 0..16 divided by 16
    assert set(np.unique(y).tolist()) == set(range(10))


def test_digits_split_counts_disjoint_stratified_and_pinned():
    x_all, y_all = load_digits("all")
    train_idx, test_idx = stratified_split(y_all, test_fraction=0.2, seed=0)
    assert len(train_idx) == 1438 and len(test_idx) == 359
    assert np.intersect1d(train_idx, test_idx).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(1797))
    assert np.bincount(y_all[test_idx]).tolist() == PER_CLASS_TEST
    assert (np.bincount(y_all[train_idx]) + np.bincount(y_all[test_idx])).tolist() == PER_CLASS
    # the same split on every machine and NumPy version (documented in data/README.md)
    assert test_idx[:10].tolist() == [2, 7, 20, 28, 30, 33, 38, 39, 46, 47]
    assert hashlib.sha256(test_idx.astype("<i8").tobytes()).hexdigest() == DIGITS_TEST_IDX_SHA256
    # load_digits returns exactly those rows, in file order
    x_te, y_te = load_digits("test")
    np.testing.assert_array_equal(x_te, x_all[test_idx])
    np.testing.assert_array_equal(y_te, y_all[test_idx])
    x_tr, _ = load_digits("train")
    np.testing.assert_array_equal(x_tr, x_all[train_idx])


def test_split_is_deterministic_and_depends_on_seed():
    _, y = load_digits("all")
    a = stratified_split(y, seed=0)
    b = stratified_split(y, seed=0)
    c = stratified_split(y, seed=1)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert np.bincount(y[c[1]]).tolist() == PER_CLASS_TEST  # same counts, other images
    x2, _ = load_digits("test", seed=1)
    assert x2.shape == (359, 1, 8, 8)


@given(
    labels=st.lists(st.integers(0, 4), min_size=0, max_size=60),
    frac=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_stratified_split_properties(labels, frac, seed):
    y = np.asarray(labels, dtype=np.int64)
    train_idx, test_idx = stratified_split(y, test_fraction=frac, seed=seed)
    assert train_idx.dtype == np.int64 and test_idx.dtype == np.int64
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(test_idx) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(len(y)))
    for c in np.unique(y):
        n_c = int(np.sum(y == c))
        assert int(np.sum(y[test_idx] == c)) == int(np.floor(frac * n_c + 0.5))
    # one class's split does not depend on the other classes
    if len(y) and np.any(y == 0):
        only0 = np.flatnonzero(y == 0)
        _, t0 = stratified_split(y[only0], test_fraction=frac, seed=seed)
        np.testing.assert_array_equal(only0[t0], test_idx[y[test_idx] == 0])


def test_split_and_load_digits_reject_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_digits("validation")
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(np.array([0, 1]), test_fraction=1.5)
    with pytest.raises(ValueError, match="integer"):
        stratified_split(np.array([0.5, 1.0]))


def test_packaging_ships_the_data_folder_and_lists_every_package():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"]["minires._bundled"] == "data"
    assert "*.npz" in config["package-data"]["minires._bundled"]
    assert (REPO / "data" / "digits.npz").is_file()
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "minires").rglob("__init__.py")
    }
    assert set(config["packages"]) == on_disk | {"minires._bundled"}, (
        "pyproject.toml [tool.setuptools] packages must list every package under minires/"
    )


def test_data_root_prefers_argument_then_environment(monkeypatch, tmp_path):
    assert data_root(tmp_path) == tmp_path
    monkeypatch.setenv("MINIRES_DATA", str(tmp_path / "elsewhere"))
    assert data_root() == tmp_path / "elsewhere"
    monkeypatch.delenv("MINIRES_DATA")
    assert data_root().is_absolute()


def test_data_root_is_the_user_cache_even_in_a_source_checkout(monkeypatch, tmp_path):
    """One rule for installed, editable and source copies (these tests run from a
    source checkout, where the folder used to be the repository's data/)."""
    monkeypatch.delenv("MINIRES_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root() == tmp_path / "xdg" / "minires"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "minires"
    assert load_digits("test")[0].shape == (359, 1, 8, 8)  # bundled data: from the package


# --------------------------------------------------------------------------
# CIFAR-10 from small archives in the official format
# --------------------------------------------------------------------------

BIN = "cifar-10-batches-bin"
BATCHES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def _records(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """n records: label byte, then R, G, B planes of 32x32, row by row."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 256, size=(n, 3, 32, 32)).astype(np.uint8)
    rows = []
    for k in range(n):
        r, g, b = images[k]
        rows.append(bytes([labels[k]]) + r.tobytes() + g.tobytes() + b.tobytes())
    return b"".join(rows), images, labels


def _tar_bytes(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(BIN)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def _members(n: int = 3, **replace: bytes) -> tuple[dict[str, bytes], dict[str, tuple]]:
    members, truth = {}, {}
    for i, name in enumerate(BATCHES):
        data, images, labels = _records(n, seed=i)
        members[f"{BIN}/{name}"] = data
        truth[name] = (images, labels)
    members[f"{BIN}/batches.meta.txt"] = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\n"
    members[f"{BIN}/readme.html"] = b"<html></html>"
    for name, data in replace.items():
        members[name] = data
    return members, truth


def _write(root: Path, archive: bytes) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cifar-10-binary.tar.gz").write_bytes(archive)
    return hashlib.md5(archive).hexdigest()


def test_cifar_parses_records_in_the_official_layout(tmp_path):
    members, truth = _members(n=3)
    md5 = _write(tmp_path, _tar_bytes(members))
    x, y = load_cifar10("train", root=tmp_path, md5=md5, dtype="uint8")
    assert x.shape == (15, 3, 32, 32) and x.dtype == np.uint8
    assert y.shape == (15,) and y.dtype == np.int64
    np.testing.assert_array_equal(x, np.concatenate([truth[b][0] for b in BATCHES[:5]]))
    np.testing.assert_array_equal(y, np.concatenate([truth[b][1] for b in BATCHES[:5]]))
    # byte layout by hand: record k of batch 1 starts at k*3073, red plane row by row
    raw = members[f"{BIN}/data_batch_1.bin"]
    k = 2
    assert y[k] == raw[k * RECORD_BYTES]
    assert x[k, 0, 1, 5] == raw[k * RECORD_BYTES + 1 + 32 + 5]  # red, row 1, column 5
    assert x[k, 2, 31, 31] == raw[(k + 1) * RECORD_BYTES - 1]  # last blue byte
    xf, yf = load_cifar10("test", root=tmp_path, md5=md5)
    assert xf.shape == (3, 3, 32, 32) and xf.dtype == np.float32
    np.testing.assert_allclose(xf, truth["test_batch.bin"][0] / np.float32(255), rtol=1e-6)
    np.testing.assert_array_equal(yf, truth["test_batch.bin"][1])
    assert 0.0 <= xf.min() and xf.max() <= 1.0


def test_cifar_reuses_the_verified_extraction(tmp_path):
    members, truth = _members(n=2)
    md5 = _write(tmp_path, _tar_bytes(members))
    load_cifar10("test", root=tmp_path, md5=md5)
    assert (tmp_path / BIN / ".md5").read_text().strip() == md5
    (tmp_path / "cifar-10-binary.tar.gz").unlink()
    x, _ = load_cifar10("test", root=tmp_path, md5=md5, dtype="uint8")
    np.testing.assert_array_equal(x, truth["test_batch.bin"][0])
    # an extraction made from another archive is not trusted
    with pytest.raises(CifarError, match="not found"):
        load_cifar10("test", root=tmp_path, md5="0" * 32)


def test_cifar_missing_archive_says_where_to_put_it(tmp_path):
    with pytest.raises(CifarError) as err:
        load_cifar10("train", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-binary.tar.gz") in msg
    assert CIFAR10_URL in msg and CIFAR10_MD5 in msg and "download=True" in msg


def test_cifar_offline_download_fails_cleanly(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(CifarError) as err:
        load_cifar10("train", root=tmp_path, download=True)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-binary.tar.gz") in msg and CIFAR10_URL in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no .part, no archive


class _FakeResponse(io.BytesIO):
    """What urlopen returns: a readable context manager."""


def test_cifar_download_verifies_before_renaming(tmp_path, monkeypatch):
    members, truth = _members(n=2)
    archive = _tar_bytes(members)
    md5 = hashlib.md5(archive).hexdigest()
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return _FakeResponse(archive)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    x, y = load_cifar10("test", root=tmp_path, download=True, md5=md5, dtype="uint8")
    assert calls == [CIFAR10_URL]
    np.testing.assert_array_equal(y, truth["test_batch.bin"][1])
    assert (tmp_path / "cifar-10-binary.tar.gz").read_bytes() == archive
    assert not (tmp_path / "cifar-10-binary.tar.gz.part").exists()


def test_cifar_download_with_wrong_checksum_leaves_nothing(tmp_path, monkeypatch):
    members, _ = _members(n=2)
    archive = _tar_bytes(members)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(archive[:-7]))
    with pytest.raises(CifarError, match="MD5") as err:
        load_cifar10("test", root=tmp_path, download=True, md5=hashlib.md5(archive).hexdigest())
    assert str(tmp_path / "cifar-10-binary.tar.gz") in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def http_server():
    """A local HTTP server (127.0.0.1) serving ``serve[path] = (body, how)``:
    how is "whole" (Content-Length, every byte), "short" (Content-Length,
    then the connection closes at half the body) or "chunked-drop" (chunked
    transfer, closed in the middle of a chunk)."""
    import http.server
    import threading

    serve: dict[str, tuple[bytes, str]] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body, how = serve[self.path]
            self.close_connection = True
            self.send_response(200)
            if how == "chunked-drop":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                half = len(body) // 2
                self.wfile.write(b"%x\r\n" % half + body[:half] + b"\r\n")
                self.wfile.write(b"%x\r\n" % (len(body) - half) + body[half : half + 10])
            else:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if how == "whole" else body[: len(body) // 2])
            self.wfile.flush()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield serve, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_cifar_download_over_http_with_a_progress_bar(tmp_path, http_server, capsys):
    serve, base = http_server
    members, truth = _members(n=2)
    archive = _tar_bytes(members)
    serve["/cifar.tar.gz"] = (archive, "whole")
    x, y = load_cifar10("test", root=tmp_path, download=True, md5=hashlib.md5(archive).hexdigest(),
                        url=base + "/cifar.tar.gz", dtype="uint8", progress=True)
    np.testing.assert_array_equal(x, truth["test_batch.bin"][0])
    assert "downloading cifar-10-binary.tar.gz" in capsys.readouterr().err  # the bar
    assert sorted(p.name for p in tmp_path.iterdir()) == [BIN, "cifar-10-binary.tar.gz"]


@pytest.mark.parametrize("how", ["chunked-drop", "short"])
def test_cifar_download_cut_off_midway_is_a_cifar_error(tmp_path, http_server, how):
    """Not a bare http.client.IncompleteRead; the .part file is removed."""
    serve, base = http_server
    archive = _tar_bytes(_members(n=2)[0])
    serve["/cifar.tar.gz"] = (archive, how)
    with pytest.raises(CifarError) as err:
        load_cifar10("test", root=tmp_path, download=True, md5=hashlib.md5(archive).hexdigest(),
                     url=base + "/cifar.tar.gz")
    msg = str(err.value)
    assert "was cut off after" in msg and "the partial file was deleted" in msg
    assert str(tmp_path / "cifar-10-binary.tar.gz") in msg and CIFAR10_URL in msg  # by hand
    assert list(tmp_path.iterdir()) == []


def test_cli_downloads_cifar10_and_prints_the_data_folder(tmp_path, http_server, capsys,
                                                          monkeypatch):
    from functools import partial

    import minires.data
    from minires import cli

    serve, base = http_server
    archive = _tar_bytes(_members(n=8)[0])
    serve["/cifar.tar.gz"] = (archive, "whole")
    monkeypatch.setattr(minires.data, "load_cifar10", partial(
        load_cifar10, md5=hashlib.md5(archive).hexdigest(), url=base + "/cifar.tar.gz"))
    monkeypatch.setenv("MINIRES_DATA", str(tmp_path / "data"))
    argv = ["train", "--dataset", "cifar10", "--model", "resnet8", "--epochs", "1",
            "--batch-size", "20", "--quiet", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"minires train: error: CIFAR-10 is not in the data folder "
                          f"{tmp_path / 'data'} ($MINIRES_DATA, else ~/.cache/minires): add "
                          "--download to fetch it")
    assert "download=True" not in err and len(err.splitlines()) == 1
    assert cli.main([*argv, "--download"]) == 0
    out = capsys.readouterr().out
    assert f"resnet8 (75,290 parameters) on cifar10 (from {tmp_path / 'data'}): 40 train / " \
           "8 test images" in out
    assert (tmp_path / "data" / "cifar-10-binary.tar.gz").read_bytes() == archive


def test_cifar_batch_deleted_after_extraction_is_extracted_again(tmp_path):
    members, truth = _members(n=2)
    md5 = _write(tmp_path, _tar_bytes(members))
    load_cifar10("test", root=tmp_path, md5=md5)
    (tmp_path / BIN / "data_batch_3.bin").unlink()
    x, y = load_cifar10("train", root=tmp_path, md5=md5, dtype="uint8")
    np.testing.assert_array_equal(y, np.concatenate([truth[b][1] for b in BATCHES[:5]]))
    assert (tmp_path / BIN / "data_batch_3.bin").is_file()
    # without the archive there is nothing to extract it from: CIFAR-10 is missing
    (tmp_path / "cifar-10-binary.tar.gz").unlink()
    (tmp_path / BIN / "test_batch.bin").unlink()
    with pytest.raises(CifarNotFound, match="download=True"):
        load_cifar10("test", root=tmp_path, md5=md5)


def test_cifar_corrupted_archive_fails_the_checksum(tmp_path):
    members, _ = _members(n=2)
    good = _tar_bytes(members)
    md5 = hashlib.md5(good).hexdigest()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    _write(tmp_path, bytes(bad))
    with pytest.raises(CifarError, match=f"expected {md5}"):
        load_cifar10("train", root=tmp_path, md5=md5)
    assert not (tmp_path / BIN).exists()


def test_cifar_wrong_checksum_names_both_and_the_fix(tmp_path):
    members, _ = _members(n=2)
    actual = _write(tmp_path, _tar_bytes(members))
    with pytest.raises(CifarError) as err:
        load_cifar10("train", root=tmp_path)  # the official MD5 is expected
    msg = str(err.value)
    assert actual in msg and CIFAR10_MD5 in msg and CIFAR10_URL in msg


@pytest.mark.parametrize(
    "extra",
    [
        f"{BIN}/evil.sh",
        f"{BIN}/../escaped.bin",
        "/tmp/absolute.bin",
        "data_batch_1.bin",
        f"{BIN}/sub/data_batch_1.bin",
    ],
)
def test_cifar_rejects_unexpected_members(tmp_path, extra):
    members, _ = _members(n=1)
    members[extra] = b"x" * RECORD_BYTES
    md5 = _write(tmp_path, _tar_bytes(members))
    with pytest.raises(CifarError, match="unexpected member"):
        load_cifar10("train", root=tmp_path, md5=md5)
    assert not (tmp_path / BIN).exists()  # nothing written before the check
    assert not (tmp_path.parent / "escaped.bin").exists()


def test_cifar_rejects_links(tmp_path):
    members, _ = _members(n=1)
    del members[f"{BIN}/readme.html"]
    md5 = _write(tmp_path, _tar_bytes(members, links={f"{BIN}/readme.html": "/etc/passwd"}))
    with pytest.raises(CifarError, match="not a regular file"):
        load_cifar10("train", root=tmp_path, md5=md5)


def test_cifar_rejects_an_archive_without_all_batches(tmp_path):
    members, _ = _members(n=1)
    del members[f"{BIN}/test_batch.bin"]
    md5 = _write(tmp_path, _tar_bytes(members))
    with pytest.raises(CifarError, match="lacks"):
        load_cifar10("train", root=tmp_path, md5=md5)


def test_cifar_rejects_truncated_batches_and_archives(tmp_path):
    members, _ = _members(n=2)
    members[f"{BIN}/data_batch_3.bin"] = members[f"{BIN}/data_batch_3.bin"][:-100]
    md5 = _write(tmp_path / "a", _tar_bytes(members))
    with pytest.raises(CifarError, match="multiple of the 3,073-byte record"):
        load_cifar10("train", root=tmp_path / "a", md5=md5)
    # a cut-off .tar.gz whose MD5 was (wrongly) trusted still fails clearly
    members, _ = _members(n=2)
    cut = _tar_bytes(members)[:-200]
    md5 = _write(tmp_path / "b", cut)
    with pytest.raises(CifarError, match="cannot read"):
        load_cifar10("train", root=tmp_path / "b", md5=md5)


def test_cifar_official_sizes_and_labels_are_checked(tmp_path):
    data, _, _ = _records(2, seed=0)
    path = tmp_path / "batch.bin"
    path.write_bytes(data)
    x, y = read_batch(path)
    assert x.shape == (2, 3, 32, 32)
    with pytest.raises(CifarError, match="30,730,000"):
        read_batch(path, expected_bytes=OFFICIAL_BATCH_BYTES)
    path.write_bytes(bytes([10]) + data[1:])
    with pytest.raises(CifarError, match="label 10"):
        read_batch(path)
    path.write_bytes(b"")
    with pytest.raises(CifarError, match="positive multiple"):
        read_batch(path)


# --------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------


def _image_tree(root: Path):
    Image = pytest.importorskip("PIL.Image")
    (root / "dog").mkdir(parents=True)
    (root / "cat").mkdir()
    (root / "ant").mkdir()
    (root / ".hidden").mkdir()
    Image.new("RGB", (5, 4), (255, 0, 0)).save(root / "dog" / "b.png")
    Image.new("RGB", (5, 4), (0, 255, 0)).save(root / "dog" / "a.PNG")
    Image.new("L", (5, 4), 128).save(root / "cat" / "gray.png")
    Image.new("RGBA", (5, 4), (0, 0, 255, 10)).save(root / "ant" / "blue.png")
    Image.new("RGB", (5, 4), (200, 200, 200)).save(root / "ant" / "photo.jpg", quality=95)
    (root / "ant" / "notes.txt").write_text("not an image")
    Image.new("RGB", (5, 4)).save(root / ".hidden" / "x.png")
    return Image


def test_image_folder_classes_sorted_and_pixels(tmp_path):
    _image_tree(tmp_path)
    x, y, names = load_image_folder(tmp_path)
    assert names == ["ant", "cat", "dog"]
    assert x.shape == (5, 3, 4, 5) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.tolist() == [0, 0, 1, 2, 2]
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x[0], np.stack([np.zeros((4, 5)), np.zeros((4, 5)), np.ones((4, 5))]))
    np.testing.assert_allclose(x[1], 200 / 255, atol=3 / 255)  # jpeg of a flat grey
    np.testing.assert_allclose(x[2], 128 / 255)  # grayscale -> RGB repeats the value
    np.testing.assert_array_equal(x[3, 1], np.ones((4, 5)))  # dog/a.PNG (green) before b.png
    np.testing.assert_array_equal(x[4, 0], np.ones((4, 5)))


def test_image_folder_resizes_and_converts_to_grayscale(tmp_path):
    Image = _image_tree(tmp_path)
    Image.new("RGB", (9, 7), (255, 0, 0)).save(tmp_path / "cat" / "big.png")
    with pytest.raises(ValueError, match="size"):
        load_image_folder(tmp_path)  # mixed sizes need size=
    x, y, names = load_image_folder(tmp_path, size=(6, 3), mode="L")
    assert x.shape == (6, 1, 6, 3)
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_allclose(x[3], 128 / 255, atol=1e-6)  # cat/gray.png, flat stays flat
    x2, _, _ = load_image_folder(tmp_path, size=8)
    assert x2.shape == (6, 3, 8, 8)


def test_image_folder_errors(tmp_path):
    _image_tree(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        load_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="mode"):
        load_image_folder(tmp_path, mode="CMYK")


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_image_folder_names_a_file_that_is_not_an_image(tmp_path, content):
    Image = _image_tree(tmp_path)
    broken = tmp_path / "cat" / "broken.png"
    if content == "garbage":
        broken.write_bytes(b"this is not a png")
    else:  # a real PNG cut short: the header reads, the pixels do not
        Image.new("RGB", (64, 64), (1, 2, 3)).save(broken)
        broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(ValueError, match=f"{re.escape(str(broken))} is not a readable image"):
        load_image_folder(tmp_path)


def test_image_folder_without_pillow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `import PIL` fail
    with pytest.raises(ImportError, match=r"pip install minires\[images\]"):
        load_image_folder(tmp_path)


# --------------------------------------------------------------------------
# DataLoader
# --------------------------------------------------------------------------


def _toy(n=10, c=1, h=4, w=4):
    x = np.arange(n * c * h * w, dtype=np.float32).reshape(n, c, h, w)
    return x, np.arange(n, dtype=np.int64)


def _epoch(loader):
    return [(host(x), host(y)) for x, y in loader]


@pytest.mark.parametrize(("n", "bs", "drop", "sizes"), [(10, 4, False, [4, 4, 2]), (10, 4, True, [4, 4]), (8, 4, True, [4, 4]), (3, 5, False, [3]), (3, 3, True, [3])])
def test_loader_batching_and_drop_last(n, bs, drop, sizes):
    x, y = _toy(n)
    loader = DataLoader(x, y, bs, drop_last=drop)
    assert len(loader) == len(sizes)
    batches = _epoch(loader)
    assert [len(b[1]) for b in batches] == sizes
    if sizes:  # no shuffle: the data's order
        ys = np.concatenate([b[1] for b in batches])
        np.testing.assert_array_equal(ys, y[: len(ys)])
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x[: len(ys)])
    assert all(b[1].dtype == np.int64 for b in batches)


def test_loader_refuses_lists_non_integer_batch_sizes_and_empty_epochs():
    x, y = _toy(3)
    with pytest.raises(TypeError, match=r"images must be an array .*got a list.*np\.asarray"):
        DataLoader(x.tolist(), y, 2)
    with pytest.raises(TypeError, match="labels must be an array .*got a list"):
        DataLoader(x, y.tolist(), 2)
    for bad in (2.5, 2.0, "2", True):
        with pytest.raises(TypeError, match="batch_size must be an integer"):
            DataLoader(x, y, bad)
    assert len(DataLoader(x, y, np.int64(2))) == 2  # NumPy integers are integers
    # an epoch without batches would be recorded as loss 0.0: refused
    with pytest.raises(ValueError, match=r"drop_last=True with batch_size 4 > 3 images"):
        DataLoader(x, y, 4, drop_last=True)
    with pytest.raises(ValueError, match="empty"):
        DataLoader(x[:0], y[:0], 4)


def test_loader_shuffle_is_seeded_and_differs_per_epoch():
    x, y = _toy(50)
    a = DataLoader(x, y, 8, shuffle=True, seed=3)
    b = DataLoader(x, y, 8, shuffle=True, seed=3)
    c = DataLoader(x, y, 8, shuffle=True, seed=4)
    orders = []
    for _ in range(3):
        ea, eb, ec = _epoch(a), _epoch(b), _epoch(c)
        ya = np.concatenate([t[1] for t in ea])
        assert sorted(ya.tolist()) == list(range(50))  # a permutation, every example once
        np.testing.assert_array_equal(ya, np.concatenate([t[1] for t in eb]))
        assert not np.array_equal(ya, np.concatenate([t[1] for t in ec]))
        for xb, yb in ea:  # images stay with their labels
            np.testing.assert_array_equal(xb, x[yb])
        orders.append(ya)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    assert a.epoch == 3


def test_loader_state_dict_resumes_exactly_mid_epoch_with_augmentation():
    x = np.random.default_rng(0).random((30, 3, 8, 8), dtype=np.float32)
    y = np.arange(30)
    aug = Compose([RandomCrop(8, padding=2), RandomHorizontalFlip()])
    a = DataLoader(x, y, 7, shuffle=True, seed=11, transform=aug)
    _epoch(a)  # epoch 0
    it = iter(a)  # epoch 1
    next(it), next(it)
    state = a.state_dict()
    assert state == {"seed": 11, "epoch": 1, "batch": 2}
    rest_a = list(it) + _epoch(a)  # rest of epoch 1, then epoch 2
    b = DataLoader(x, y, 7, shuffle=True, seed=0, transform=aug)
    b.load_state_dict(state)
    rest_b = _epoch(b) + _epoch(b)
    assert len(rest_a) == len(rest_b) == (len(a) - 2) + len(a)
    for (xa, ya), (xb, yb) in zip(rest_a, rest_b, strict=True):
        np.testing.assert_array_equal(host(xa), host(xb))
        np.testing.assert_array_equal(host(ya), host(yb))
    assert a.state_dict() == b.state_dict() == {"seed": 11, "epoch": 3, "batch": 0}


def test_loader_state_after_whole_epochs_and_bad_states():
    x, y = _toy(10)
    loader = DataLoader(x, y, 4, shuffle=True)
    assert loader.state_dict() == {"seed": 0, "epoch": 0, "batch": 0}
    _epoch(loader)
    assert loader.state_dict() == {"seed": 0, "epoch": 1, "batch": 0}
    loader.load_state_dict({"seed": 0, "epoch": 5, "batch": 3})  # 3 == len: epoch 5 is over
    assert loader.state_dict() == {"seed": 0, "epoch": 6, "batch": 0}
    with pytest.raises(ValueError, match="out of range"):
        loader.load_state_dict({"seed": 0, "epoch": 0, "batch": 4})
    with pytest.raises(ValueError, match="labels"):
        DataLoader(x, y[:5], 4)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(x, y, 0)


def test_loader_transform_gets_a_seeded_generator_per_batch():
    x, y = _toy(12, c=3, h=6, w=6)
    crop = RandomCrop(4, padding=1)
    a = _epoch(DataLoader(x, y, 5, transform=crop, seed=1))
    b = _epoch(DataLoader(x, y, 5, transform=crop, seed=1))
    c = _epoch(DataLoader(x, y, 5, transform=crop, seed=2))
    assert all(xb.shape[1:] == (3, 4, 4) for xb, _ in a)
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(a, c, strict=True))


def test_loader_on_array_api_strict_host_and_device_data(strict_backend):
    import array_api_compat
    import array_api_strict

    x, y = _toy(9, c=2)
    aug = Compose([RandomCrop(4, padding=1), RandomHorizontalFlip(), Normalize([1.0, 2.0], [3.0, 4.0])])
    host_batches = list(DataLoader(x, y, 4, shuffle=True, transform=aug))
    dev = DataLoader(backend.asarray(x), backend.asarray(y), 4, shuffle=True, transform=aug)
    dev_batches = list(dev)
    for (xh, yh), (xd, yd) in zip(host_batches, dev_batches, strict=True):
        for arr in (xh, yh, xd, yd):
            assert array_api_compat.is_array_api_strict_namespace(backend.namespace(arr))
        assert yh.dtype == array_api_strict.int64
        np.testing.assert_array_equal(host(xh), host(xd))
        np.testing.assert_array_equal(host(yh), host(yd))


# --------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------


@given(
    n=st.integers(1, 4),
    c=st.integers(1, 3),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    pad=st.integers(0, 3),
    seed=st.integers(0, 1000),
    data=st.data(),
)
def test_random_crop_matches_a_window_of_the_zero_padded_image(n, c, h, w, pad, seed, data):
    oh = data.draw(st.integers(1, h + 2 * pad))
    ow = data.draw(st.integers(1, w + 2 * pad))
    x = np.random.default_rng(seed).random((n, c, h, w)).astype(np.float32) + 1
    out = RandomCrop((oh, ow), padding=pad)(x, np.random.default_rng(seed))
    assert out.shape == (n, c, oh, ow) and out.dtype == np.float32
    # the same draws, replayed against np.pad
    rng = np.random.default_rng(seed)
    top = rng.integers(0, h + 2 * pad - oh + 1, size=n)
    left = rng.integers(0, w + 2 * pad - ow + 1, size=n)
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    for k in range(n):
        np.testing.assert_array_equal(out[k], padded[k, :, top[k] : top[k] + oh, left[k] : left[k] + ow])


def test_random_crop_identity_without_padding_and_shape_with_it():
    x = np.random.default_rng(0).random((6, 3, 32, 32)).astype(np.float32)
    before = x.copy()
    same = RandomCrop(32, padding=0)(x, np.random.default_rng(1))
    np.testing.assert_array_equal(same, x)
    out = RandomCrop(32, padding=4)(x, np.random.default_rng(1))
    assert out.shape == (6, 3, 32, 32)
    np.testing.assert_array_equal(x, before)  # input untouched
    # over many draws, crops reach the padding (zeros) and also the unshifted image
    many = RandomCrop(32, padding=4)(np.repeat(x[:1], 200, axis=0), np.random.default_rng(2))
    assert np.any(many == 0)
    assert any(np.array_equal(m, x[0]) for m in many)
    with pytest.raises(ValueError, match="larger"):
        RandomCrop(41, padding=4)(x, np.random.default_rng(0))


def test_random_horizontal_flip_properties():
    x = np.random.default_rng(0).random((64, 2, 3, 5)).astype(np.float32)
    always = RandomHorizontalFlip(p=1.0)
    flipped = always(x, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped, x[..., ::-1])
    np.testing.assert_array_equal(always(flipped, np.random.default_rng(1)), x)  # twice = identity
    np.testing.assert_array_equal(RandomHorizontalFlip(p=0.0)(x, np.random.default_rng(0)), x)
    half = RandomHorizontalFlip()(x, np.random.default_rng(5))
    was_flipped = [np.array_equal(half[k], x[k, ..., ::-1]) for k in range(64)]
    for k in range(64):
        assert was_flipped[k] or np.array_equal(half[k], x[k])
    assert 16 < sum(was_flipped) < 48
    expected = np.random.default_rng(5).random(64) < 0.5  # the draw the docs promise
    assert was_flipped == expected.tolist()


def test_normalize_and_channel_stats():
    rng = np.random.default_rng(0)
    x = (rng.random((37, 3, 5, 6)) * np.array([1.0, 2.0, 3.0])[None, :, None, None] + 0.5).astype(np.float32)
    mean, std = channel_stats(x, chunk=4)  # several chunks
    ref = x.astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-12)
    out = Normalize(mean, std)(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-5)
    np.testing.assert_allclose(out[:, 1], (x[:, 1] - mean[1]) / std[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected input \(N, 2, H, W\)"):
        Normalize([0, 0], [1, 1])(x)
    with pytest.raises(ValueError, match="positive"):
        Normalize([0], [0])


def test_transforms_agree_on_numpy_and_array_api_strict(strict_backend):
    x = np.random.default_rng(0).random((5, 3, 8, 8)).astype(np.float32)
    pipeline = Compose([RandomCrop(6, padding=2), RandomHorizontalFlip(), Normalize([0.5] * 3, [0.25] * 3)])
    ref = pipeline(x, np.random.default_rng(7))
    out = pipeline(backend.asarray(x), np.random.default_rng(7))
    assert not isinstance(out, np.ndarray)
    np.testing.assert_allclose(host(out), ref, rtol=1e-6)
    assert "RandomCrop" in repr(pipeline)
