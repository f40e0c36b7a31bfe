"""The `minires` command, end to end, on ResNet-8 and a few hundred digits."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minires import cli
from minires.checkpoint import load_checkpoint
from minires.nn import loss as loss_module

TINY = ["--model", "resnet", "--depth", "8", "--per-class", "10", "--batch-size", "32",
        "--quiet"]


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


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def bitwise_equal(a, b):
    return list(a) == list(b) and all(
        np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`minires train` on 300 images for 4 epochs, run in-process."""
    out = tmp_path_factory.mktemp("run")
    code = cli.main(["train", "--model", "resnet8", "--per-class", "30", "--batch-size", "32",
                     "--epochs", "4", "--lr", "0.05", "--out", str(out), "--quiet"])
    return code, out


def test_train_writes_everything_and_learns(trained):
    code, out = trained
    assert code == 0
    for name in ("checkpoint.npz", "metrics.csv", "metrics.json", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    history = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert len((out / "metrics.csv").read_text().splitlines()) == 5
    assert history[-1]["test_acc"] > 0.5  # chance: 0.1
    ckpt = load_checkpoint(out / "checkpoint.npz")
    config = ckpt["config"]
    assert ckpt["epoch"] == 4 and config["model"] == "resnet8" and config["epochs"] == 4
    assert config["dataset"] == "digits" and config["num_classes"] == 10


def test_evaluate_prints_the_last_epochs_accuracy(trained, capsys):
    _, out = trained
    last = json.loads((out / "metrics.json").read_text())[-1]
    code, text, _ = run(capsys, "evaluate", out / "checkpoint.npz")
    assert code == 0
    assert f"accuracy {100 * last['test_acc']:.2f}%" in text and "359 images" in text
    code, text, _ = run(capsys, "evaluate", out / "checkpoint.npz", "--json")
    result = json.loads(text)
    assert result["acc"] == last["test_acc"] and result["epoch"] == 4
    assert result["loss"] == pytest.approx(last["test_loss"], rel=1e-6)
    code, text, _ = run(capsys, "evaluate", out / "checkpoint.npz", "--split", "train", "--json")
    assert json.loads(text)["images"] == 300


def test_train_through_a_subprocess(tmp_path):
    """The real command line: a fresh interpreter, relative paths, progress lines."""
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "minires.cli", "train", "--model", "resnet8", "--per-class", "5",
         "--epochs", "1", "--out", "run"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"resnet8 \(75,002 parameters, 288 fewer than for RGB images \(75,290\): "
                     r"the images have 1 channel.*\) on digits: 50 train / 359 test images",
                     proc.stdout)
    assert re.search(r"epoch 1 \| lr 0.1 \| train loss [\d.]+ .*img/s", proc.stdout)
    assert "test accuracy" in proc.stdout
    for name in ("checkpoint.npz", "metrics.csv", "metrics.json", "curves.png"):
        assert (tmp_path / "run" / name).exists(), name


def test_resume_through_the_cli_is_bit_identical(tmp_path, capsys):
    """`train --epochs 2 --out A`, then `train --resume A/checkpoint.npz --epochs 4`,
    equals `train --epochs 4 --out B`, bit for bit. The schedule must not depend
    on the run's length for that (here: divide by 10 at epoch 3); a cosine
    schedule does, and is covered by --stop-after below."""
    a, b = tmp_path / "A", tmp_path / "B"
    sched = ["--schedule", "multistep", "--milestones", "3"]
    assert run(capsys, "train", *TINY, *sched, "--epochs", "2", "--out", a)[0] == 0
    code, text, err = run(capsys, "train", "--resume", a / "checkpoint.npz", "--epochs", "4")
    assert code == 0 and "resumed from" in text and "after epoch 2" in text
    assert "note: 2 epochs were planned, now 4" in err
    assert run(capsys, "train", *TINY, *sched, "--epochs", "4", "--out", b)[0] == 0
    ca, cb = load_checkpoint(a / "checkpoint.npz"), load_checkpoint(b / "checkpoint.npz")
    assert ca["epoch"] == cb["epoch"] == 4
    assert bitwise_equal(ca["model_state"], cb["model_state"])
    state_a, state_b = ca["optimizer_state"]["state"], cb["optimizer_state"]["state"]
    assert all(state_a[k]["momentum_buffer"].tobytes() == state_b[k]["momentum_buffer"].tobytes()
               for k in state_b)
    ha = json.loads((a / "metrics.json").read_text())
    hb = json.loads((b / "metrics.json").read_text())
    assert [r["test_acc"] for r in ha] == [r["test_acc"] for r in hb]
    assert [r["lr"] for r in ha] == [r["lr"] for r in hb]


def test_stop_after_and_resume_with_the_default_schedule(tmp_path, capsys):
    c, d = tmp_path / "C", tmp_path / "D"
    code, text, _ = run(capsys, "train", *TINY, "--epochs", "3", "--stop-after", "1",
                        "--out", c)
    assert code == 0 and "stopped early" in text
    assert load_checkpoint(c / "checkpoint.npz")["epoch"] == 1
    # the checkpoint's own settings win over contradicting options, with a note
    code, _, err = run(capsys, "train", "--resume", c / "checkpoint.npz", "--lr", "0.3")
    assert code == 0 and "ignoring --lr 0.3" in err
    assert run(capsys, "train", *TINY, "--epochs", "3", "--out", d)[0] == 0
    cc, cd = load_checkpoint(c / "checkpoint.npz"), load_checkpoint(d / "checkpoint.npz")
    assert cc["epoch"] == 3 and bitwise_equal(cc["model_state"], cd["model_state"])
    code, text, _ = run(capsys, "train", "--resume", c / "checkpoint.npz")
    assert code == 0 and "nothing to do" in text
    # a longer run than planned: the cosine continues as if planned for 5 epochs
    code, _, err = run(capsys, "train", "--resume", c / "checkpoint.npz", "--epochs", "5")
    assert code == 0 and "3 epochs were planned, now 5" in err
    lrs = [r["lr"] for r in json.loads((c / "metrics.json").read_text())]
    assert lrs[3:] == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 5)) / 2 for e in (3, 4)])


def test_divergence_exits_2_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    # reference: the same run, stopped after epoch 1
    ref = tmp_path / "ref"
    assert run(capsys, "train", *TINY, "--epochs", "3", "--stop-after", "1", "--out", ref)[0] == 0
    calls = []
    forward = loss_module.CrossEntropyLoss.forward

    def nan_in_epoch_2(self, logits, y):
        calls.append(1)  # epoch 1: 4 training + 2 test batches; then epoch 2, batch 1
        loss = forward(self, logits, y)
        return loss * float("nan") if len(calls) >= 7 else loss

    monkeypatch.setattr(loss_module.CrossEntropyLoss, "forward", nan_in_epoch_2)
    out = tmp_path / "div"
    code, _, err = run(capsys, "train", *TINY, "--epochs", "3", "--out", out)
    assert code == 2
    assert "training diverged: the training loss became nan at epoch 2, batch 1" in err
    assert f"the last good checkpoint, after epoch 1, is {out / 'checkpoint.npz'}" in err
    good, kept = load_checkpoint(ref / "checkpoint.npz"), load_checkpoint(out / "checkpoint.npz")
    assert kept["epoch"] == 1 and bitwise_equal(kept["model_state"], good["model_state"])
    assert len(json.loads((out / "metrics.json").read_text())) == 1


def test_a_huge_learning_rate_diverges_with_a_clear_message(tmp_path, capsys):
    code, _, err = run(capsys, "train", *TINY, "--epochs", "2", "--lr", "1e6", "--schedule",
                       "constant", "--out", tmp_path)
    assert code == 2
    assert "training diverged" in err and "lower learning rate (it was 1e+06)" in err
    assert "Warning" not in err  # NumPy's overflow warnings are not shown
    if (tmp_path / "checkpoint.npz").exists():  # only epochs that ended finite are saved
        state = load_checkpoint(tmp_path / "checkpoint.npz")["model_state"]
        assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")


def test_finetune_frozen_backbone_and_resume(trained, tmp_path, capsys):
    _, pre = trained
    out = tmp_path / "ft"
    code, text, _ = run(capsys, "finetune", "--from", pre / "checkpoint.npz", "--classes",
                        "5,6,7,8,9", "--per-class", "4", "--batch-size", "10",
                        "--epochs", "2", "--stop-after", "1", "--freeze-backbone", "--quiet",
                        "--out", out)
    assert code == 0
    assert ("0 missing, 0 unexpected keys; a new head (fc) for 5 classes replaces the one "
            "for 10") in text
    assert "froze 21 parameters (conv1.weight ... layer3.0.bn2.bias)" in text
    assert re.search(r"resnet8 \(74,677 parameters, 325 trainable, 288 fewer than for RGB "
                     r"images \(74,965\): .*\) on digits: 20 train", text)
    before = load_checkpoint(pre / "checkpoint.npz")["model_state"]
    after = load_checkpoint(out / "checkpoint.npz")
    assert after["config"]["command"] == "finetune" and after["config"]["num_classes"] == 5
    weights = {k for k in after["model_state"] if not k.startswith("fc.")
               and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert weights and all(after["model_state"][k].tobytes() == before[k].tobytes()
                           for k in weights)
    assert after["model_state"]["fc.weight"].shape == (5, 64)
    code, text, err = run(capsys, "train", "--resume", out / "checkpoint.npz")
    assert code == 1 and "started by `minires finetune`" in err
    code, text, _ = run(capsys, "finetune", "--resume", out / "checkpoint.npz")
    assert code == 0 and "after epoch 1" in text
    resumed = load_checkpoint(out / "checkpoint.npz")["model_state"]
    assert all(resumed[k].tobytes() == before[k].tobytes() for k in weights)
    code, text, _ = run(capsys, "evaluate", out / "checkpoint.npz")
    assert code == 0 and "on digits test (179 images)" in text


def test_gradcheck_quick(capsys):
    code, text, _ = run(capsys, "gradcheck", "--quick")
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split() == ["check", "gradient", "of", "rel.", "error", "result"]
    assert any(line.startswith("conv2d 3x2 stride 2 pad 0") for line in lines)
    assert any(line.startswith("BasicBlock A stride 2 (train)") for line in lines)
    m = re.fullmatch(r"(\d+) of (\d+) gradients agree .*", lines[-1])
    assert m and m[1] == m[2] and int(m[1]) == len(lines) - 2


def test_gradcheck_reports_a_failure(capsys, monkeypatch):
    from minires import selfcheck

    monkeypatch.setattr(selfcheck, "run_all", lambda quick, seed: [
        ("good op", "x", 1e-10), ("bad op", "w", 0.5)])
    code, text, _ = run(capsys, "gradcheck")
    assert code == 1 and "bad op" in text and "FAIL" in text and "1 of 2 gradients" in text


@pytest.mark.parametrize("command", ["train", "evaluate", "finetune", "gradcheck", "models"])
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0
    assert f"usage: minires {command}" in text and "examples:" in text
    assert f"  minires {command}" in text.split("examples:")[1]


def test_main_help_and_train_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert all(c in text for c in ("train", "evaluate", "finetune", "gradcheck", "models"))
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--model", "--depth", "--dataset", "--epochs", "--batch-size", "--lr",
                   "--schedule", "--seed", "--backend", "--out", "--resume", "--threads"):
        assert option in text, option


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["train", "--dataset", "no/such/folder"], "(no such folder)"),
    (["train", "--model", "densenet"], "unknown model 'densenet'"),
    (["train", "--model", "resnet", "--depth", "21"], "6n+2"),
    (["train", "--model", "resnet20", "--depth", "32"], "use --model resnet --depth 32"),
    (["train", "--classes", "3,11"], "--classes 3,11"),
    (["train", "--classes", "a,b"], "expected comma-separated integers"),
    (["evaluate", "missing.npz"], "no such checkpoint file"),
    (["finetune", "--classes", "1,2"], "--from is required"),
    (["finetune", "--from", "nope.npz"], "--from nope.npz: no such file"),
    (["finetune", "--from", "nope.pt", "--model", "resnet18"], "--from nope.pt: no such file"),
    (["finetune", "--from", "."], "--from . is a folder"),
    (["train", "--dataset", "cifar10"], "add --download to fetch it"),
])
def test_bad_input_gives_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINIRES_DATA", str(tmp_path / "data"))
    code, out, err = run(capsys, *argv, *(["--quiet"] if argv[0] == "train" else []))
    assert code == 1
    assert err.startswith(f"minires {argv[0]}: error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "0"], "--epochs must be a positive integer, got 0"),
    (["train", "--epochs", "-3"], "--epochs must be a positive integer, got -3"),
    (["train", "--stop-after", "-1"], "--stop-after must be a positive integer, got -1"),
    (["train", "--warmup", "-1"], "--warmup must be a non-negative integer, got -1"),
    (["train", "--image-size", "0", "--dataset", "."], "--image-size must be a positive "
                                                        "integer, got 0"),
    (["train", "--image-size", "16"], "--image-size resizes the images of a folder dataset; "
                                      "digits is 8x8 pixels"),
    (["train", "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["train", "--per-class", "0"], "--per-class must be a positive integer, got 0"),
    (["train", "--threads", "0"], "--threads must be a positive integer, got 0"),
    (["--threads", "-1", "models"], "--threads must be a positive integer, got -1"),
    (["finetune", "--from", "w.npz", "--epochs", "0"], "--epochs must be a positive integer"),
    (["train", "--resume", "runs/a/checkpoint.npz", "--epochs", "0"], "--epochs must be"),
    # real-valued options (these used to create the run's folder, then exit 1 with
    # the optimizer's or the loss's message, which did not name the option)
    (["train", "--lr", "-1"], "--lr must be >= 0, got -1"),
    (["train", "--lr", "nan"], "--lr must be >= 0, got nan"),
    (["train", "--momentum", "-0.9"], "--momentum must be >= 0, got -0.9"),
    (["train", "--weight-decay", "-0.0001"], "--weight-decay must be >= 0, got -0.0001"),
    (["train", "--label-smoothing", "1.5"], "--label-smoothing must lie in [0, 1], got 1.5"),
    (["train", "--classes", "3"], "--classes 3: a classifier needs at least 2 distinct "
                                  "classes, got 1"),
    (["train", "--classes", "4,4"], "--classes 4,4: a classifier needs at least 2"),
    (["gradcheck", "--tol", "-0.5"], "--tol must be >= 0, got -0.5"),
    (["gradcheck", "--tol", "nan"], "--tol must be >= 0, got nan"),
    (["finetune", "--from", "w.npz", "--backbone-lr", "-0.01"],
     "--backbone-lr must be >= 0, got -0.01"),
])
def test_option_values_that_cannot_work_exit_2_before_anything_runs(argv, message, capsys,
                                                                   tmp_path, monkeypatch):
    """Checked before any data is read (these used to train, or to exit 0)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: pytest.fail("data was read"))
    quiet = ["--quiet"] if argv[0] in ("train", "finetune") else []
    code, out, err = run(capsys, *argv, *quiet)
    assert code == 2 and out == ""
    command = argv[2] if argv[0] == "--threads" else argv[0]
    assert err.startswith(f"minires {command}: error: {message}")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--classes", "--milestones"])
def test_a_list_that_is_not_integers_is_refused_before_anything_runs(option, capsys, tmp_path,
                                                                   monkeypatch):
    # --milestones was parsed when the optimizer was built, after the run's folder
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: pytest.fail("data was read"))
    code, out, err = run(capsys, "train", "--schedule", "multistep", option, "3,x", "--quiet")
    assert code == 1 and out == ""
    assert err == f"minires train: error: {option}: expected comma-separated integers, " \
                  "got '3,x'\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_a_bad_MINIRES_THREADS_names_the_variable(value, capsys, monkeypatch):
    from minires.fast import parallel

    monkeypatch.setenv("MINIRES_THREADS", value)
    code, _, err = run(capsys, "models")
    assert code == 2
    assert err == f"minires models: error: MINIRES_THREADS must be a positive integer, " \
                  f"got {value!r}\n"
    monkeypatch.setattr(parallel, "_threads", None)  # as on first use, in a Python session
    with pytest.raises(ValueError, match=f"MINIRES_THREADS must be a positive integer, "
                                         f"got {value!r}"):
        parallel.threads()


def test_malformed_command_line_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--schedule", "sometimes"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("model, depth, name", [
    (None, None, "resnet20"), ("resnet", None, "resnet20"), ("resnet", 32, "resnet32"),
    ("plain", 8, "plain8"), ("preact_resnet", 56, "preact_resnet56"),
    ("PreAct-ResNet", 20, "preact_resnet20"), ("resnet20", None, "resnet20"),
    ("resnet20", 20, "resnet20"), ("wrn16_4", None, "wrn16_4"), ("resnet18", None, "resnet18"),
])
def test_model_and_depth(model, depth, name):
    assert cli.resolve_model_name(model, depth) == name


def test_depth_needs_a_family():
    with pytest.raises(cli.CommandError, match="goes with a model family"):
        cli.resolve_model_name("wrn16_4", 16)


def test_models_lists_names(capsys):
    code, text, _ = run(capsys, "models")
    assert code == 0 and {"resnet20", "plain20", "preact_resnet110", "resnet18"} <= set(
        text.split())


@pytest.mark.slow
def test_models_count_says_which_input_it_assumes(capsys):
    # issue 14, item 19
    code, text, _ = run(capsys, "models", "--count")
    lines = text.splitlines()
    assert code == 0 and lines[0].split() == ["model", "parameters", "input", "(C,", "H,", "W),",
                                              "classes"]
    assert re.search(r"^resnet20 +269,722  \(3, 32, 32\), 10$", text, re.M)
    assert re.search(r"^resnet50 +25,557,032  \(3, 224, 224\), 1000$", text, re.M)
    assert "RGB input" in text and "1-channel digits" in text


def test_version_and_python_dash_m(tmp_path):
    # issue 14, item 21
    from minires import __version__

    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    for argv in (["--version"], ["models"]):
        proc = subprocess.run([sys.executable, "-m", "minires", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        if argv == ["--version"]:
            assert proc.stdout.strip() == f"minires {__version__}"
        else:
            assert "resnet20" in proc.stdout.split()
    assert cli.build_parser().parse_known_args(["models"])[0].command == "models"


def test_train_header_explains_a_one_channel_count():
    from minires.models import get_model

    assert cli.channels_note(get_model("resnet20")) == ""
    note = cli.channels_note(get_model("resnet20", in_channels=1))
    assert note == (", 288 fewer than for RGB images (269,722): the images have 1 channel, "
                    "and the first convolution 144 weights per channel")
    assert "432 more than for RGB images" in cli.channels_note(get_model("resnet20", in_channels=6))


def test_select_classes_relabels_in_the_given_order():
    images = np.arange(12, dtype=np.float32).reshape(12, 1, 1, 1)
    labels = np.array([0, 1, 2, 3] * 3)
    x, y = cli.select_classes(images, labels, [3, 1], None, seed=0)
    assert y.tolist() == [1, 0, 1, 0, 1, 0] and x[:, 0, 0, 0].tolist() == [1, 3, 5, 7, 9, 11]
    x, y = cli.select_classes(images, labels, None, 2, seed=0)
    assert np.bincount(y).tolist() == [2, 2, 2, 2] and (np.diff(x[:, 0, 0, 0]) > 0).all()


def test_limit_threads():
    """--threads N: minires's own threads for the command, BLAS on one; both
    restored afterwards."""
    import threadpoolctl

    from minires.fast import parallel

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas"]

    before, blas_before = parallel.threads(), blas_threads()
    for n in (1, 3):
        with cli.limit_threads(n):
            assert parallel.threads() == n
            assert blas_threads() and all(t == 1 for t in blas_threads())
        assert parallel.threads() == before and blas_threads() == blas_before


def test_finetune_from_bare_weights_needs_a_model(tmp_path, capsys):
    from minires.checkpoint import save_state_dict
    from minires.models import get_model

    save_state_dict(tmp_path / "w.npz", get_model("resnet8", in_channels=1).state_dict())
    few = ["--classes", "5,6,7", "--per-class", "3", "--epochs", "1", "--quiet"]
    code, _, err = run(capsys, "finetune", "--from", tmp_path / "w.npz", *few)
    assert code == 1 and "--model is needed when --from holds bare weights" in err
    code, text, _ = run(capsys, "finetune", "--from", tmp_path / "w.npz", "--model", "resnet",
                        "--depth", "8", *few, "--out", tmp_path / "ft")
    assert code == 0
    assert "2 missing (fc.weight, fc.bias), 0 unexpected keys; a new head (fc) for 3 classes\n" \
        in text


def test_missing_cupy_is_a_clear_error(capsys):
    import importlib.util

    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    code, _, err = run(capsys, "train", "--backend", "cupy", "--quiet")
    assert code == 1 and err.startswith("minires train: error: ") and "CuPy" in err


def test_ctrl_c_keeps_the_last_epoch_and_resume_finishes_the_run(tmp_path, capsys,
                                                                 monkeypatch):
    """Killed in the middle of epoch 2 (Ctrl-C), resumed: bit-identical to a run
    that was never interrupted."""
    calls = []
    forward = loss_module.CrossEntropyLoss.forward

    def interrupt_in_epoch_2(self, logits, y):
        calls.append(1)  # epoch 1: 4 training + 2 test batches; epoch 2: batch 2
        if len(calls) == 8:
            raise KeyboardInterrupt
        return forward(self, logits, y)

    with monkeypatch.context() as m:
        m.setattr(loss_module.CrossEntropyLoss, "forward", interrupt_in_epoch_2)
        code, _, err = run(capsys, "train", *TINY, "--epochs", "3", "--out", tmp_path / "k")
    assert code == 130
    assert f"interrupted; the checkpoint holds epoch 1 of 3; continue with: minires train " \
           f"--resume {tmp_path / 'k' / 'checkpoint.npz'}" in err
    assert run(capsys, "train", "--resume", tmp_path / "k" / "checkpoint.npz")[0] == 0
    assert run(capsys, "train", *TINY, "--epochs", "3", "--out", tmp_path / "u")[0] == 0
    a = load_checkpoint(tmp_path / "k" / "checkpoint.npz")
    b = load_checkpoint(tmp_path / "u" / "checkpoint.npz")
    assert a["epoch"] == b["epoch"] == 3 and bitwise_equal(a["model_state"], b["model_state"])


def test_ctrl_c_in_the_first_epoch_leaves_no_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def interrupt(self, logits, y):
        raise KeyboardInterrupt

    monkeypatch.setattr(loss_module.CrossEntropyLoss, "forward", interrupt)
    code, _, err = run(capsys, "train", *TINY, "--epochs", "3")
    assert code == 130 and "interrupted before the first epoch was saved" in err
    assert list(tmp_path.iterdir()) == []  # no empty runs/resnet8-digits left behind


def test_ctrl_c_during_a_save_names_the_epoch_the_checkpoint_holds(tmp_path, capsys,
                                                                    monkeypatch):
    """The Ctrl-C lands inside the save of epoch 2, before the file is replaced:
    the message must say epoch 1 (it used to say "after epoch 2")."""
    from minires import train

    saves = []
    real = train.save_checkpoint

    def interrupted_save(path, **state):
        saves.append(state["epoch"])
        if len(saves) == 2:
            raise KeyboardInterrupt
        real(path, **state)

    monkeypatch.setattr(train, "save_checkpoint", interrupted_save)
    out = tmp_path / "k"
    code, _, err = run(capsys, "train", *TINY, "--epochs", "3", "--out", out)
    assert code == 130 and saves == [1, 2]
    assert load_checkpoint(out / "checkpoint.npz")["epoch"] == 1
    assert f"interrupted; the checkpoint holds epoch 1 of 3; continue with: minires train " \
           f"--resume {out / 'checkpoint.npz'}" in err


def test_a_ctrl_c_signal_during_a_save_waits_for_the_save(tmp_path, capsys, monkeypatch):
    """A real SIGINT in the middle of saving epoch 2 is held until the epoch is
    counted, recorded and saved; then the run stops with epoch 2 on disk."""
    import signal
    import threading

    from minires import train

    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        pytest.skip("needs Python's own SIGINT handler in the main thread")
    real = train.save_checkpoint

    def save_with_ctrl_c(path, **state):
        if state["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # delivered at once, inside the save
            for _ in range(1000):  # give the handler many chances to run in here
                sum(range(100))
        real(path, **state)

    monkeypatch.setattr(train, "save_checkpoint", save_with_ctrl_c)
    out = tmp_path / "k"
    code, _, err = run(capsys, "train", *TINY, "--epochs", "3", "--out", out)
    assert code == 130
    assert load_checkpoint(out / "checkpoint.npz")["epoch"] == 2
    assert len(json.loads((out / "metrics.json").read_text())) == 2
    assert "the checkpoint holds epoch 2 of 3" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


# ---- output folders ------------------------------------------------------------------

def test_a_second_run_never_replaces_the_first(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = Path("runs/resnet8-digits"), Path("runs/resnet8-digits-2")
    code, text, _ = run(capsys, "train", *TINY, "--epochs", "1")
    assert code == 0 and "writing to runs/resnet8-digits/" in text
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    assert set(before) == {"checkpoint.npz", "metrics.csv", "metrics.json", "curves.png"}
    code, text, err = run(capsys, "train", *TINY, "--epochs", "1", "--seed", "1")
    assert code == 0 and "writing to runs/resnet8-digits-2/" in text
    assert "note: runs/resnet8-digits holds an earlier run; this run goes to " \
           "runs/resnet8-digits-2/" in err
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before  # untouched
    assert load_checkpoint(second / "checkpoint.npz")["config"]["seed"] == 1
    # --overwrite without --out replaces the default folder's run
    code, text, err = run(capsys, "train", *TINY, "--epochs", "1", "--seed", "2", "--overwrite")
    assert code == 0 and "writing to runs/resnet8-digits/" in text
    assert "deleted the earlier run's checkpoint.npz, metrics.json, metrics.csv, curves.png" in err
    assert load_checkpoint(first / "checkpoint.npz")["config"]["seed"] == 2
    assert sorted(p.name for p in Path("runs").iterdir()) == [first.name, second.name]


def test_an_out_that_holds_a_run_is_refused(tmp_path, capsys, monkeypatch):
    out = tmp_path / "a"
    assert run(capsys, "train", *TINY, "--epochs", "1", "--out", out)[0] == 0
    before = (out / "checkpoint.npz").read_bytes()
    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: pytest.fail("data was read"))
    code, text, err = run(capsys, "train", *TINY, "--epochs", "2", "--out", out)
    assert code == 1 and text == ""
    assert err == (f"minires train: error: --out {out} already holds a run (checkpoint.npz, "
                   f"metrics.json, metrics.csv, curves.png); continue it with --resume "
                   f"{out / 'checkpoint.npz'}, replace it with --overwrite, or choose another "
                   "--out\n")
    # a resumed run into another folder that holds a run: refused as well
    other = tmp_path / "b"
    other.mkdir()
    (other / "metrics.json").write_text("[]")
    code, _, err = run(capsys, "train", "--resume", out / "checkpoint.npz", "--out", other)
    assert code == 1 and f"--out {other} already holds a run (metrics.json)" in err
    assert (out / "checkpoint.npz").read_bytes() == before
    monkeypatch.undo()
    # replaced on request; an empty or unrelated folder is fine as it is
    code, _, _ = run(capsys, "train", *TINY, "--epochs", "1", "--seed", "3", "--out", out,
                     "--overwrite")
    assert code == 0 and load_checkpoint(out / "checkpoint.npz")["config"]["seed"] == 3
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    assert run(capsys, "train", *TINY, "--epochs", "1", "--out", tmp_path / "c")[0] == 0
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine"


def test_an_out_that_is_a_file_is_refused_before_training(tmp_path, capsys, monkeypatch):
    """It used to train an epoch, then crash with a traceback."""
    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: pytest.fail("data was read"))
    path = tmp_path / "results.txt"
    path.write_text("keep me")
    for out, says in ((path, "is a file"), (path / "run", f"lies under {path}, a file")):
        for command in (["train"], ["finetune", "--from", path]):
            code, text, err = run(capsys, *command, *TINY, "--out", out)
            assert code == 1 and text == ""
            assert err.startswith(f"minires {command[0]}: error: --out {out} {says}; --out "
                                  "names the folder")
            assert "Traceback" not in err and len(err.splitlines()) == 1
    assert path.read_text() == "keep me"


def test_finetune_from_a_text_file_says_what_it_is(tmp_path, capsys):
    notes = tmp_path / "notes.npz"
    notes.write_text("these are my notes")
    code, _, err = run(capsys, "finetune", "--from", notes, "--classes", "1,2", "--quiet",
                       "--out", tmp_path / "ft")
    assert code == 1 and "--model is needed" not in err
    assert f"{notes}: not a minires checkpoint: this is a text file" in err
    assert "allow_pickle" not in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "evaluate", notes)
    assert code == 1 and "this is a text file" in err and "allow_pickle" not in err


def test_an_image_folder_with_a_broken_file_names_it(tmp_path, capsys):
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / "pics" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "pics" / name / f"{i}.png")
    broken = tmp_path / "pics" / "dog" / "9.png"
    broken.write_bytes(b"\x89PNG not really")
    code, _, err = run(capsys, "train", *TINY, "--dataset", tmp_path / "pics", "--out",
                       tmp_path / "run")
    assert code == 1 and f"{broken} is not a readable image" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def digit_pngs(root, classes=(5, 6, 7), per_class=5):
    """A folder of 8x8 digit PNGs, root/<class>/*.png, saved half grayscale, half RGB."""
    from PIL import Image

    from minires.data import load_digits

    x, y = load_digits("test")
    for c in classes:
        (root / str(c)).mkdir(parents=True)
        for i, idx in enumerate(np.flatnonzero(y == c)[:per_class]):
            image = Image.fromarray(np.round(255 * x[idx, 0]).astype(np.uint8), mode="L")
            (image.convert("RGB") if i % 2 else image).save(root / str(c) / f"{i}.png")
    return root


def test_finetune_reads_an_image_folder_with_the_checkpoints_channels(trained, tmp_path, capsys):
    """A checkpoint trained on the 1-channel digits, fine-tuned on a folder of
    PNGs: the images are read in grayscale, so conv1 loads instead of starting
    from random weights; resume and evaluate read the folder the same way."""
    _, pre = trained
    pics, out = digit_pngs(tmp_path / "pics"), tmp_path / "ft"
    code, text, _ = run(capsys, "finetune", "--from", pre / "checkpoint.npz", "--dataset", pics,
                        "--image-size", "8", "--batch-size", "8", "--epochs", "2",
                        "--stop-after", "1", "--quiet", "--out", out)
    assert code == 0
    assert (f"read the images of {pics} as grayscale (1 channel), as the first convolution of "
            f"{pre / 'checkpoint.npz'} expects\n") in text
    assert "loaded" in text and ": 0 missing, 0 unexpected keys" in text
    assert f") on {pics}: 12 train / 3 test images" in text and "(from " not in text
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert ckpt["config"]["in_channels"] == 1
    assert ckpt["model_state"]["conv1.weight"].shape == (16, 1, 3, 3)
    code, text, _ = run(capsys, "finetune", "--resume", out / "checkpoint.npz")
    assert code == 0 and "after epoch 1" in text
    code, text, _ = run(capsys, "evaluate", out / "checkpoint.npz")
    assert code == 0 and f"on {pics} test (3 images)" in text


def test_finetune_reads_an_image_folder_in_rgb_for_an_rgb_network(tmp_path, capsys):
    from minires.checkpoint import save_state_dict
    from minires.models import get_model

    save_state_dict(tmp_path / "w.npz", get_model("resnet8", in_channels=3).state_dict())
    pics = digit_pngs(tmp_path / "pics", per_class=3)
    code, text, _ = run(capsys, "finetune", "--from", tmp_path / "w.npz", "--model", "resnet8",
                        "--dataset", pics, "--image-size", "8", "--epochs", "1", "--quiet",
                        "--out", tmp_path / "ft")
    assert code == 0
    assert (f"read the images of {pics} as RGB (3 channels), as the first convolution of "
            f"{tmp_path / 'w.npz'} expects\n") in text
    assert "2 missing (fc.weight, fc.bias), 0 unexpected keys" in text


def test_train_header_names_an_image_folder_once(tmp_path, capsys):
    pics = digit_pngs(tmp_path / "pics", per_class=3)
    code, text, _ = run(capsys, "train", *TINY, "--dataset", pics, "--image-size", "8",
                        "--epochs", "1", "--out", tmp_path / "run")
    assert code == 0
    header = next(line for line in text.splitlines() if line.startswith("resnet8 ("))
    assert header.count(str(pics)) == 1 and "(from " not in header
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz")["config"]["in_channels"] == 3


def test_no_nesterov_gives_classical_momentum_and_is_kept_on_resume(tmp_path, monkeypatch):
    from minires import optim
    from minires.nn import Parameter

    settings = {**cli.TRAIN_DEFAULTS, "milestones": None}
    p = Parameter(np.ones(3, dtype=np.float32))
    assert cli.make_optimizer([p], settings, 4)[0].param_groups[0]["nesterov"] is True
    opt, _ = cli.make_optimizer([p], {**settings, "no_nesterov": True}, 4)
    assert isinstance(opt, optim.SGD) and opt.param_groups[0]["nesterov"] is False
    assert cli.make_optimizer([p], {**settings, "momentum": 0.0}, 4)[0] \
        .param_groups[0]["nesterov"] is False
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--model", "resnet8", "--epochs", "2", "--stop-after", "1",
                     "--per-class", "5", "--no-nesterov", "--quiet", "--out", "r"]) == 0
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoint.npz")
    assert ckpt["config"]["no_nesterov"] is True
    assert cli.main(["train", "--resume", "r/checkpoint.npz", "--quiet"]) == 0
