"""``model.summary(input_shape)``: per-layer output shapes, parameters, FLOPs
(issue 14, item 19)."""

from __future__ import annotations

import numpy as np
import pytest
from util import torch_or_skip

from minires import nn
from minires.models import available_models, get_model
from minires.summary import ModelSummary

IMAGENET = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
            "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
# GMACs at 224x224 as torchvision's model table lists them (its "GFLOPS"); a
# grouped conv does C_in / groups * KH * KW MACs per output value
TORCHVISION_GMACS = {"resnet50": 4.09, "resnext50_32x4d": 4.23, "resnext101_32x8d": 16.41,
                     "resnext101_64x4d": 15.46, "wide_resnet50_2": 11.40,
                     "wide_resnet101_2": 22.75}


def test_resnet20_summary_matches_the_paper_and_counts_flops():
    s = get_model("resnet20").summary((1, 3, 32, 32))
    assert isinstance(s, ModelSummary)
    assert s.total_params == s.trainable_params == 269_722         # He et al., Table 6
    assert s.total_macs == 40_551_040
    assert sum(r.macs for r in s.rows if r.depth == 1) == s.total_macs   # children add up
    # 81 MFLOP forward per image (REFERENCE.md): 2 x MACs plus the elementwise part
    assert 2 * s.total_macs < s.total_flops < 2.02 * s.total_macs
    assert s["layer2.0.conv1"].output_shape == (1, 32, 16, 16)
    assert s["layer2.0.conv1"].macs == 32 * 16 * 16 * 16 * 9
    assert s["layer3"].output_shape == (1, 64, 8, 8) and s.output_shape == (1, 10)
    text = str(s)
    assert "269,722" in text and "40,551,040" in text and "2 x MACs" in text
    assert "conv1: Conv2d(16->32, 3x3, stride=2, padding=1)" in text
    assert "(1, 32, 16, 16)" in text and "Trainable params: 269,722" in text
    assert repr(s) == text
    with pytest.raises(KeyError, match="layer9"):
        s["layer9"]


def test_summary_scales_with_the_batch_and_accepts_chw():
    model = get_model("resnet8")
    one, eight = model.summary((3, 32, 32)), model.summary((8, 3, 32, 32))
    assert one.input_shape == (1, 3, 32, 32)
    assert eight.output_shape == (8, 10) and eight["layer1.0"].output_shape == (8, 16, 32, 32)
    assert eight.total_flops == 8 * one.total_flops and eight.total_macs == 8 * one.total_macs
    assert eight.total_params == one.total_params


def test_summary_depth_frozen_layers_html_and_errors():
    model = get_model("resnet8", in_channels=1)
    model.conv1.requires_grad_(False)
    s = model.summary((1, 1, 8, 8), depth=1)
    assert s.trainable_params == s.total_params - 9 * 16
    assert "Non-trainable params: 144" in str(s)
    shown = [line.split(":")[0] for line in str(s).splitlines()[3:]]
    assert "layer1" in shown and "  0" not in shown               # depth 1: the children only
    assert s["layer1.0.conv1"].params == 16 * 16 * 9               # every row is kept
    page = s._repr_html_()
    assert page.startswith("<div>") and "<table" in page and f"{s.total_params:,}" in page
    with pytest.raises(ValueError, match=r"ResNet\(resnet8\): expected input \(N, 1, H, W\)"):
        model.summary((1, 3, 8, 8))
    with pytest.raises(ValueError, match="positive"):
        model.summary((0, 1, 8, 8))
    with pytest.raises(ValueError, match="depth"):
        model.summary((1, 1, 8, 8), depth=0)


def test_summary_leaves_the_model_as_it_was(rng):
    nn.init.manual_seed(0)
    model = get_model("resnet8", in_channels=1).to(dtype="float64")
    model.layer1.eval()                                            # a mixed mode survives
    x = rng.standard_normal((4, 1, 8, 8))
    out = model(x)                                                 # caches for a backward
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    model.summary((1, 1, 8, 8))
    assert model.training and not model.layer1.training and model.layer1[0].bn1.training is False
    for k, v in model.state_dict().items():
        assert np.array_equal(v, state[k]), k                      # no BN statistics moved
    dx = model.backward(np.ones_like(out))                         # the caches are still there
    assert dx.shape == x.shape


@pytest.mark.slow
@pytest.mark.parametrize("name", available_models())
def test_summary_works_for_every_model(name):
    model = get_model(name)
    shape = (1, 3, 224, 224) if name in IMAGENET else (1, 3, 32, 32)
    s = model.summary(shape)
    assert s.total_params == model.num_parameters()
    assert s.output_shape == (1, 1000 if name in IMAGENET else 10)
    assert s.total_macs > 0 and s.total_flops > 2 * s.total_macs
    if name in TORCHVISION_GMACS:                                 # resnet50: the usual 4.1
        assert round(s.total_macs / 1e9, 2) == TORCHVISION_GMACS[name]


def test_grouped_conv_macs_and_resnext_summary():
    s = nn.Conv2d(128, 256, 3, padding=1, bias=False, groups=32).summary((2, 128, 7, 7))
    assert s.total_macs == 2 * 256 * 7 * 7 * (128 // 32) * 9
    r = get_model("resnext29_digits", in_channels=1).summary((1, 1, 8, 8))
    assert r.total_params == 203_962 and r.output_shape == (1, 10)
    assert r["layer1.0.conv2"].macs == 16 * 8 * 8 * (16 // 4) * 9     # 4 groups of 4
    assert "groups=4" in str(r)


def test_conv_and_linear_flops_match_torch_flop_counter():
    torch = torch_or_skip()
    from torch.utils.flop_counter import FlopCounterMode

    ours = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
                         nn.ReLU(), nn.Conv2d(8, 6, (1, 3), stride=(1, 2)), nn.GlobalAvgPool2d(),
                         nn.Linear(6, 5))
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(), torch.nn.Conv2d(8, 6, (1, 3), stride=(1, 2)),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 5)).eval()
    with FlopCounterMode(display=False) as counter:
        theirs(torch.zeros(2, 3, 11, 9))
    s = ours.summary((2, 3, 11, 9))
    assert 2 * s.total_macs == counter.get_total_flops()
    per_module = counter.get_flop_counts()
    assert 2 * s["0"].macs == sum(per_module["Sequential.0"].values())
    assert 2 * s["3"].macs == sum(per_module["Sequential.3"].values())
    assert 2 * s["5"].macs == sum(per_module["Sequential.6"].values())     # after torch's Flatten
