"""DiffAugment (ganexp/gan/augment.py): each op against hand-made images, gradients through every policy, draws
per member, and runs with it: a stack member is its separate run, a resume is bit-identical."""
from __future__ import annotations

import itertools
import re

import pytest
import torch

from ganexp.errors import ConfigError
from ganexp.gan.augment import (
    POLICIES,
    DiffAugment,
    brightness,
    contrast,
    cutout,
    saturation,
    translate,
)
from ganexp.sweeps.stacked import group_key, train_stack, why_alone
from tests.gan.test_stack import _assert_same_run, _ckpt
from tests.helpers import make_cfg
from train import train

NINE = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # 1 2 3 / 4 5 6 / 7 8 9


@pytest.mark.parametrize("shift, expected", [
    ((0, 0), [[1, 2, 3], [4, 5, 6], [7, 8, 9]]),
    ((1, 0), [[0, 0, 0], [1, 2, 3], [4, 5, 6]]),  # down one row: a zero row shifted in at the top
    ((0, -1), [[2, 3, 0], [5, 6, 0], [8, 9, 0]]),  # left one column
    ((-1, 2), [[0, 0, 4], [0, 0, 7], [0, 0, 0]]),
    ((3, 0), [[0, 0, 0]] * 3),  # out of the image altogether
])
def test_translation_moves_whole_pixels_and_shifts_zeros_in(shift, expected):
    two = torch.cat([NINE, NINE + 10], dim=1)  # two channels
    out = translate(torch.cat([two, two]), torch.tensor([shift, (0, 0)]))
    assert out[0, 0].tolist() == expected  # every channel alike
    assert out[0, 1].tolist() == [[v and v + 10 for v in row] for row in expected]
    assert torch.equal(out[1], two[0])  # each image its own shift


@pytest.mark.parametrize("centre, zeroed", [
    ((4, 4), (range(2, 6), range(2, 6))),  # a 4×4 square in the middle: 16 pixels
    ((0, 0), (range(2), range(2))),  # centred on the corner: the 2×2 that is inside
    ((8, 3), (range(6, 8), range(1, 5))),  # past the last row (allowed for an even size): 2 rows inside
])
def test_cutout_zeroes_its_square_inside_the_image(centre, zeroed):
    out = cutout(torch.ones(1, 3, 8, 8), torch.tensor([centre]), (4, 4))
    expected = torch.ones(8, 8)
    expected[zeroed[0].start:zeroed[0].stop, zeroed[1].start:zeroed[1].stop] = 0
    assert torch.equal(out[0], expected.expand(3, 8, 8))
    assert (out[0, 0] == 0).sum() == len(zeroed[0]) * len(zeroed[1])


def test_colour_ops_by_hand():
    rgb = torch.tensor([0.2, 0.4, 0.9]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert brightness(rgb, torch.tensor([0.25]))[0, :, 0, 0].tolist() == pytest.approx([0.45, 0.65, 1.15])
    assert saturation(rgb, torch.tensor([0.0]))[0, :, 0, 0].tolist() == pytest.approx([0.5] * 3)  # grey
    assert saturation(rgb, torch.tensor([2.0]))[0, :, 0, 0].tolist() == pytest.approx([-0.1, 0.3, 1.3])
    grey = torch.tensor([[0.0, 1.0], [1.0, 2.0]]).view(1, 1, 2, 2)  # mean 1
    assert contrast(grey, torch.tensor([0.5]))[0, 0].tolist() == [[0.5, 1.0], [1.0, 1.5]]
    assert torch.equal(saturation(grey, torch.tensor([1.7])), grey)  # one channel: nothing to saturate


@pytest.mark.parametrize("side, shift, cut", [(8, 1, 4), (28, 4, 14), (32, 4, 16)])
def test_drawn_numbers_span_the_papers_ranges(side, shift, cut):
    augment = DiffAugment(POLICIES, (1, side, side))
    drawn = augment.draw([torch.Generator().manual_seed(0)], (4000,), "cpu")
    assert augment.cut == (cut, cut)
    for key, (lo, hi) in {"brightness": (-0.5, 0.5), "saturation": (0, 2), "contrast": (0.5, 1.5)}.items():
        assert lo <= drawn[key].min() < lo + 0.01 and hi - 0.01 < drawn[key].max() < hi, key
    assert set(drawn["shift"].unique().tolist()) == set(range(-shift, shift + 1))
    assert set(drawn["centre"].unique().tolist()) == set(range(side + 1))  # even sizes: one past the last too


@pytest.mark.parametrize("policy", [p for r in (1, 2, 3) for p in itertools.permutations(POLICIES, r)])
def test_gradients_flow_through_every_policy_and_combination(policy):
    augment = DiffAugment(policy, (3, 8, 8))
    x = torch.rand(5, 3, 8, 8, requires_grad=True)
    drawn = augment.draw([torch.Generator().manual_seed(1)], (5,), "cpu")
    out = augment(x, drawn)
    assert out.shape == x.shape and not torch.equal(out, x)
    weight = torch.rand_like(out)
    (out * weight).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).any(dim=(1, 2, 3)).all()  # every image reaches x
    if "color" not in policy:  # moves and masks: each output pixel is one input pixel or a zero
        back = torch.autograd.grad(augment(x, drawn).sum(), x)[0]
        assert set(back.unique().tolist()) <= {0.0, 1.0}  # a pixel reaches at most one place
        assert back.sum() == augment(torch.ones_like(x), drawn).sum()  # ...and every kept place has one pixel


def test_each_member_draws_its_own_runs_numbers():
    augment = DiffAugment(POLICIES, (1, 8, 8))
    joint = augment.draw([torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)], (3, 2), "cpu")
    for k, seed in enumerate((0, 1)):  # a separate run augments its real rows (3), then its fake rows (2)
        own = torch.Generator().manual_seed(seed)
        real, fake = augment.draw([own], (3,), "cpu"), augment.draw([own], (2,), "cpu")
        for key in joint:
            assert torch.equal(joint[key][5 * k:5 * k + 5], torch.cat([real[key], fake[key]])), key


@pytest.mark.parametrize("policy, shape, words", [
    (["color", "zoom"], (1, 8, 8), "'zoom' is not a DiffAugment policy; the known ones are color, translation, cutout"),
    ("translation,translation", (1, 8, 8), "lists translation twice"),
    (["cutout"], (2,), "data.shape=[2] is not one (toy 2-D points?); use augment=none"),
])
def test_bad_policies_and_toy_data_are_one_line(policy, shape, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        DiffAugment(policy, shape)


def test_augment_none_is_the_default_and_draws_nothing(cfg_factory):
    from ganexp.run.build import build_module

    module = build_module(cfg_factory("eval=none"))
    assert not module.augment and DiffAugment("", (2,)).policy == ()  # an empty policy is no augmentation
    state = module.draws.get_state()
    x = torch.rand(1, 4, 1, 8, 8)
    assert module.augmented(x, (4,)) is x and torch.equal(module.draws.get_state(), state)
    assert DiffAugment(" color, cutout ", (1, 8, 8)).policy == ("color", "cutout")  # "a,b" as Hydra passes a quoted one


DIGITS = ["data=digits", "model=mlp_small", "eval=none", "log_every=1", "image_every=0", "augment=diffaugment"]


@pytest.mark.parametrize("model", ["mlp_small", pytest.param("dcgan", marks=pytest.mark.slow)])
def test_a_stacked_member_with_diffaugment_is_its_separate_run(model, tmp_path):
    """Stacked MLPs score real and fake in one joint pass, a separate run (and a DCGAN stack) in two: each member
    still draws its augmentation (real rows, then fake rows, then its noise) as its run does; R1 on the augmented
    reals."""
    budget = [*DIGITS, f"model={model}", "trainer.limit_train_batches=5", "ckpt_every=5"]
    jobs = [["optimizer.lr=1e-4", "seed=0"],
            ["optimizer.lr=5e-4", "noise.instance_sigma=0.1", "loss.r1_gamma=1", "seed=1"]]
    stacked = [make_cfg(tmp_path / f"stacked{k}", *budget, *job) for k, job in enumerate(jobs)]
    assert len({group_key(c) for c in stacked}) == 1 and {why_alone(c) for c in stacked} == {None}
    assert group_key(make_cfg(tmp_path / "x", *budget, "augment.policy=[color]")) != group_key(stacked[0])
    assert group_key(make_cfg(tmp_path / "y", *budget, "augment=none")) != group_key(stacked[0])
    assert [r["status"] for r in train_stack(stacked, jobs)] == ["finished"] * 2
    for k, job in enumerate(jobs):
        train(make_cfg(tmp_path / f"separate{k}", *budget, *job))
        _assert_same_run(tmp_path / f"stacked{k}", tmp_path / f"separate{k}", atol=2e-5 if model == "mlp_small" else 1e-4)
    train(make_cfg(tmp_path / "plain", *budget, *jobs[0], "augment=none"))
    a, b = _ckpt(tmp_path / "plain")["state_dict"], _ckpt(tmp_path / "separate0")["state_dict"]
    assert not all(torch.equal(a[name], b[name]) for name in b)  # it did augment


def test_a_resume_with_diffaugment_is_bit_identical(tmp_path):
    budget = [*DIGITS, "trainer.limit_train_batches=4", "ckpt_every=100", "noise.instance_sigma=0.1"]
    train(make_cfg(tmp_path / "resumed", *budget, "trainer.max_epochs=1"))
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert _ckpt(tmp_path / "resumed")["hyper_parameters"]["augment"] == {"policy": list(POLICIES)}
    train(make_cfg(tmp_path / "resumed", *budget, "trainer.max_epochs=2", f"ckpt_path={last}"))
    train(make_cfg(tmp_path / "straight", *budget, "trainer.max_epochs=2"))
    a, b = _ckpt(tmp_path / "resumed"), _ckpt(tmp_path / "straight")
    assert a["iteration"] == b["iteration"] == 8
    assert torch.equal(a["rng"]["draws"], b["rng"]["draws"])
    for name, tensor in b["state_dict"].items():
        assert torch.equal(a["state_dict"][name], tensor), name
