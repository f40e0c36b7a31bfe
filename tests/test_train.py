"""The Trainer: outputs, exact resume, divergence, evaluation, curves.

Everything runs a ResNet-8 on 100 of the bundled 8x8 digits (a fraction of a
second per epoch).
"""

import json
import math

import numpy as np
import pytest

from minires import backend
from minires.checkpoint import load_checkpoint
from minires.data import Compose, DataLoader, Normalize, RandomCrop, load_digits
from minires.models import get_model
from minires.nn import CrossEntropyLoss, init
from minires.optim import SGD, CosineAnnealingLR
from minires.plot import learning_curves, plot_history
from minires.train import Trainer, TrainingDiverged, evaluate, nonfinite_arrays, write_metrics

EPOCHS = 3


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """Tiny matrices: a second BLAS thread only stalls on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits("train")
    idx = np.concatenate([np.flatnonzero(y == c)[:10] for c in range(10)])
    xte, yte = load_digits("test")
    return (x[idx], y[idx]), (xte[:120], yte[:120])


def make_trainer(digits, seed=0, out_dir=None, criterion=None, epochs=EPOCHS, **kw):
    """Everything random follows from `seed`: weights, shuffling, crops."""
    (x, y), (xte, yte) = digits
    init.manual_seed(seed)
    model = get_model("resnet8", in_channels=1, num_classes=10)
    norm = Normalize([0.3], [0.4])
    train = DataLoader(x, y, 32, shuffle=True, seed=seed,
                       transform=Compose([RandomCrop(8, padding=1), norm]))
    test = DataLoader(xte, yte, 64, transform=norm)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = CosineAnnealingLR(opt, T_max=epochs)
    return Trainer(model, opt, train, test, scheduler=sched, out_dir=out_dir, progress=False,
                   log=False, criterion=criterion, config={"model": "resnet8", "seed": seed},
                   **kw)


def weights(trainer):
    return {k: backend.to_numpy(v).copy() for k, v in trainer.model.state_dict().items()}


def assert_bitwise_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


@pytest.fixture(scope="module")
def straight(digits):
    """An uninterrupted run of EPOCHS epochs, and its weights after epoch 1."""
    t = make_trainer(digits)
    t.fit(1)
    after_one = weights(t)
    t.fit(EPOCHS)
    return t, after_one


def test_fit_writes_outputs_every_epoch(digits, tmp_path):
    t = make_trainer(digits, out_dir=tmp_path, epochs=2)
    history = t.fit(2)
    assert [r["epoch"] for r in history] == [1, 2]
    for name in ("checkpoint.npz", "metrics.json", "metrics.csv", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = json.loads((tmp_path / "metrics.json").read_text())
    assert records == history
    for key in ("lr", "train_loss", "train_acc", "test_loss", "test_acc", "images_per_s",
                "epoch_time_s", "wall_s"):
        assert all(math.isfinite(r[key]) for r in records), key
    assert records[1]["wall_s"] > records[0]["wall_s"] > 0
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",")[:2] == ["epoch", "lr"] and len(lines) == 3
    ckpt = load_checkpoint(tmp_path / "checkpoint.npz")
    assert ckpt["epoch"] == 2 and ckpt["config"]["model"] == "resnet8"
    assert ckpt["extra"]["history"] == history
    assert_bitwise_equal(dict(ckpt["model_state"]), weights(t))
    # only the leftover files of atomic writes would start with "."
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_resume_is_bit_identical(digits, straight, tmp_path):
    uninterrupted, _ = straight
    first = make_trainer(digits, out_dir=tmp_path)
    first.fit(1)  # a run planned for EPOCHS epochs, stopped after epoch 1
    # A trainer built from another seed: only the checkpoint can make it match.
    resumed = make_trainer(digits, seed=123)
    resumed.resume(tmp_path / "checkpoint.npz")
    assert resumed.epoch == 1 and resumed.history == first.history
    resumed.fit(EPOCHS)
    assert_bitwise_equal(weights(resumed), weights(uninterrupted))
    for p, q in zip(resumed.model.parameters(), uninterrupted.model.parameters(), strict=True):
        a = resumed.optimizer.state[p]["momentum_buffer"]
        b = uninterrupted.optimizer.state[q]["momentum_buffer"]
        assert a.tobytes() == b.tobytes()
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert [r[key] for r in resumed.history] == [r[key] for r in uninterrupted.history]


def test_resume_restores_loader_optimizer_schedule_and_rng(digits, tmp_path):
    first = make_trainer(digits, out_dir=tmp_path)
    first.fit(1)
    init.get_rng().standard_normal(5)  # move the generator on after the checkpoint
    saved_rng = load_checkpoint(tmp_path / "checkpoint.npz")["rng_state"]["init"]
    resumed = make_trainer(digits, seed=7)
    resumed.resume(tmp_path / "checkpoint.npz")
    assert resumed.train_loader.state_dict() == first.train_loader.state_dict() == {
        "seed": 0, "epoch": 1, "batch": 0}
    assert resumed.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"]
    assert resumed.scheduler.state_dict() == first.scheduler.state_dict()
    assert resumed.scheduler.last_epoch == 1
    bufs = [resumed.optimizer.state[p]["momentum_buffer"] for p in resumed.model.parameters()]
    ref = [first.optimizer.state[p]["momentum_buffer"] for p in first.model.parameters()]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(bufs, ref, strict=True))
    assert init.get_rng().bit_generator.state == saved_rng


def trainer_state(t):
    """Everything resume may change, as host copies."""
    opt = t.optimizer.state_dict()
    return (weights(t), {k: {n: np.array(v) for n, v in s.items()} for k, s in opt["state"].items()},
            opt["param_groups"], t.scheduler.state_dict(), t.train_loader.state_dict(),
            init.get_rng().bit_generator.state, t.epoch, list(t.history))


def assert_same_state(a, b):
    assert_bitwise_equal(a[0], b[0])
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        assert all(np.array_equal(a[1][k][n], b[1][k][n]) for n in a[1][k]), k
    assert a[2:] == b[2:]


@pytest.mark.parametrize("misfit", ["groups", "schedule", "model"])
def test_resume_that_does_not_fit_changes_nothing(digits, tmp_path, misfit):
    # issue 14, item 13: the optimizer's groups are checked before the weights
    # are replaced; a schedule of another type undoes the optimizer's load
    from minires.finetune import finetune_param_groups
    from minires.optim import MultiStepLR

    make_trainer(digits, out_dir=tmp_path).fit(1)
    t = make_trainer(digits, seed=5)
    t.fit(1)                        # its own momentum, schedule and loader position
    if misfit == "groups":
        t.optimizer = SGD(finetune_param_groups(t.model, lr=0.1, backbone_lr=0.01), lr=0.1,
                          momentum=0.9)
        t.scheduler = CosineAnnealingLR(t.optimizer, T_max=EPOCHS)
    elif misfit == "schedule":
        t.scheduler = MultiStepLR(t.optimizer, [2])
    else:
        init.manual_seed(5)
        t.model = get_model("resnet14", in_channels=1, num_classes=10)
        t.optimizer = SGD(t.model.parameters(), lr=0.1, momentum=0.9)
        t.scheduler = CosineAnnealingLR(t.optimizer, T_max=EPOCHS)
    before = trainer_state(t)
    with pytest.raises((ValueError, KeyError)):
        t.resume(tmp_path / "checkpoint.npz")
    assert_same_state(trainer_state(t), before)


@pytest.mark.parametrize("lose", ["loader", "momentum", "schedule"])
def test_resume_without_a_piece_of_state_differs(digits, straight, tmp_path, lose):
    """The bitwise test above can fail: drop one piece of restored state and
    the weights no longer match the uninterrupted run."""
    uninterrupted, _ = straight
    make_trainer(digits, out_dir=tmp_path).fit(1)
    resumed = make_trainer(digits)
    resumed.resume(tmp_path / "checkpoint.npz")
    if lose == "loader":  # epoch 0's shuffling and crops again
        resumed.train_loader.load_state_dict({"seed": 0, "epoch": 0, "batch": 0})
    elif lose == "momentum":
        resumed.optimizer.state = {}
    else:
        resumed.optimizer.param_groups[0]["lr"] = 0.1
    resumed.fit(EPOCHS)
    w, ref = weights(resumed), weights(uninterrupted)
    assert any(w[k].tobytes() != ref[k].tobytes() for k in w)


class NaNAfter(CrossEntropyLoss):
    """Cross-entropy that returns NaN from its `calls`-th call on."""

    def __init__(self, calls):
        super().__init__()
        self.calls, self.seen = calls, 0

    def forward(self, logits, y):
        self.seen += 1
        loss = super().forward(logits, y)
        return loss * float("nan") if self.seen >= self.calls else loss


def test_divergence_keeps_the_last_good_checkpoint(digits, straight, tmp_path):
    _, after_one = straight
    # epoch 1: 4 training batches + 2 test batches; NaN on epoch 2's 2nd batch
    t = make_trainer(digits, out_dir=tmp_path, criterion=NaNAfter(4 + 2 + 2))
    with pytest.raises(TrainingDiverged) as info:
        t.fit(EPOCHS)
    message = str(info.value)
    assert "loss became nan at epoch 2, batch 2" in message
    assert str(tmp_path / "checkpoint.npz") in message and "lower learning rate" in message
    assert info.value.epoch == 2 and info.value.checkpoint == tmp_path / "checkpoint.npz"
    assert t.epoch == 1 and len(t.history) == 1
    ckpt = load_checkpoint(tmp_path / "checkpoint.npz")
    assert ckpt["epoch"] == 1
    assert_bitwise_equal(dict(ckpt["model_state"]), after_one)
    assert len(json.loads((tmp_path / "metrics.json").read_text())) == 1
    assert (tmp_path / "curves.png").exists()
    # the in-memory model took one more step; the checkpoint brings epoch 1 back
    t.resume(tmp_path / "checkpoint.npz")
    assert_bitwise_equal(weights(t), after_one)


def test_divergence_in_the_first_epoch_says_nothing_was_saved(digits, tmp_path):
    t = make_trainer(digits, out_dir=tmp_path, criterion=NaNAfter(1))
    with pytest.raises(TrainingDiverged, match="no checkpoint was written yet") as info:
        t.fit(1)
    assert info.value.checkpoint is None and info.value.epoch == 1
    assert not (tmp_path / "checkpoint.npz").exists()


def test_nonfinite_weights_stop_before_saving(digits, tmp_path):
    t = make_trainer(digits, out_dir=tmp_path)
    t.test_loader = None  # nothing but the weights check can notice
    t.fit(1)
    step, calls = t.optimizer.step, []

    def poisoned_step():  # the last update of epoch 2 writes an infinity
        step()
        calls.append(1)
        if len(calls) == len(t.train_loader):
            t.model.fc.weight.data[0, 0] = np.inf

    t.optimizer.step = poisoned_step
    with pytest.raises(TrainingDiverged, match=r"infinite values in fc\.weight after epoch 2"):
        t.fit(2)
    assert load_checkpoint(tmp_path / "checkpoint.npz")["epoch"] == 1
    assert nonfinite_arrays(t.model)


def test_evaluate_does_not_depend_on_batching_and_keeps_the_mode(digits, straight):
    trainer, _ = straight
    _, (xte, yte) = digits
    model = trainer.model.train()
    norm = Normalize([0.3], [0.4])
    a = evaluate(model, DataLoader(xte, yte, 7, transform=norm))
    b = evaluate(model, DataLoader(xte, yte, 120, transform=norm))
    assert model.training
    assert a["acc"] == b["acc"] and a["images"] == b["images"] == 120
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["acc"] == trainer.history[-1]["test_acc"]
    assert all(m.__dict__.get("_cache") is None for m in model.modules())


def test_training_learns(straight):
    trainer, _ = straight
    h = trainer.history
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["test_acc"] > 0.2  # 10 classes: chance is 0.1


def test_write_metrics_takes_the_union_of_keys(tmp_path):
    history = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5, "test_acc": 0.9}]
    write_metrics(history, tmp_path)
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "epoch,train_loss,test_acc", "1,1.0,", "2,0.5,0.9"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == history


def test_learning_curves_figure(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": 1 - 0.5 / e,
                "test_loss": 1.1 / e, "test_acc": 1 - 0.6 / e} for e in range(1, 5)]
    fig = learning_curves(history, title="resnet8")
    loss_ax, err_ax = fig.axes
    assert [line.get_label() for line in err_ax.lines][:2] == ["train", "test"]
    np.testing.assert_allclose(err_ax.lines[1].get_ydata(), [60, 30, 20, 15])
    path = plot_history(history[:1], tmp_path / "sub" / "c.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_an_epoch_without_batches_is_an_error(digits, tmp_path):
    t = make_trainer(digits, out_dir=tmp_path)
    t.train_loader = []
    with pytest.raises(ValueError, match="no batches in epoch 1"):
        t.fit(1)
    assert t.history == [] and not (tmp_path / "checkpoint.npz").exists()
