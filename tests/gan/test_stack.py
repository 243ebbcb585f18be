"""Stacked sweeps (ganexp/gan/stack.py, hydra/launcher=stacked): each member computes what its separate run
computes, writes what a separate run writes, and the launcher groups only what can share a stack."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from pytorch_lightning.callbacks import Callback

from ganexp.io.results import read_metrics
from ganexp.sweeps.stacked import group_key, plan, train_stack, why_alone
from tests.helpers import make_cfg, run_train
from train import train

TOY = ["data=toy", "model=toy_mlp", "eval=none", "log_every=1", "image_every=0"]
# lr, label smoothing, σ and seed vary together; member 3 shares member 0's seed (and so its data) but not its lr.
GRID = [["optimizer.lr=1e-4", "seed=0"],
        ["optimizer.lr=5e-4", "loss.label_smoothing=0.1", "seed=1"],
        ["noise.instance_sigma=0.1", "seed=2"],
        ["optimizer.lr=2e-3", "noise.instance_sigma=0.2", "loss.label_smoothing=0.2", "optimizer.d.lr=1e-3", "seed=0"]]


def _scalars(folder, tag: str) -> list[float]:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    return [e.value for e in events.Scalars(tag)]


def _ckpt(folder):
    return torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _assert_same_run(stacked, separate, atol=1e-5):
    a, b = _ckpt(stacked), _ckpt(separate)
    assert set(a) == set(b)  # the keys Lightning writes for a separate run, and ganexp's
    assert a["iteration"] == b["iteration"] and a["loops"] == b["loops"] and a["epoch"] == b["epoch"]
    for name, tensor in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][name], tensor, atol=atol, rtol=1e-4, msg=name)
    for mine, theirs in zip(a["optimizer_states"], b["optimizer_states"]):
        assert [{k: v for k, v in g.items() if k != "params"} for g in mine["param_groups"]] == \
               [{k: v for k, v in g.items() if k != "params"} for g in theirs["param_groups"]]
        for i, state in theirs["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(mine["state"][i][key], value, atol=atol, rtol=1e-4)
    torch.testing.assert_close(a["rng"]["draws"], b["rng"]["draws"], atol=0, rtol=0)  # the same draws, all of them
    for tag in ("loss/d", "loss/g", "d/acc", "grad/d_norm", "noise/sigma", "lr/g", "lr/d"):
        assert _scalars(stacked, tag) == pytest.approx(_scalars(separate, tag), rel=1e-4, abs=1e-5), tag


@pytest.mark.slow
def test_each_member_of_a_stack_is_its_separate_run_over_20_iterations(tmp_path):
    budget = [*TOY, "trainer.limit_train_batches=20", "ckpt_every=20"]
    stacked = [make_cfg(tmp_path / f"stacked{k}", *budget, *job) for k, job in enumerate(GRID)]
    assert len({group_key(c) for c in stacked}) == 1 and {why_alone(c) for c in stacked} == {None}
    records = train_stack(stacked, GRID)
    assert [r["status"] for r in records] == ["finished"] * 4 and [r["iteration"] for r in records] == [20] * 4
    for k, job in enumerate(GRID):
        train(make_cfg(tmp_path / f"separate{k}", *budget, *job))
        _assert_same_run(tmp_path / f"stacked{k}", tmp_path / f"separate{k}")
        record = read_metrics(tmp_path / f"stacked{k}")
        assert record["stacked"] is True and record["stack"]["size"] == 4 and record["stack"]["member"] == k
    assert _scalars(tmp_path / "stacked3", "lr/d") == [pytest.approx(1e-3)] * 20  # its own lr per network
    assert _scalars(tmp_path / "stacked2", "noise/sigma") == [pytest.approx(0.1)] * 20


DCGAN = ["model=dcgan", "data=digits", "eval=none", "log_every=1", "image_every=0"]
DCGAN_GRID = [["optimizer.lr=1e-4", "seed=0"], ["optimizer.lr=2e-4", "loss.label_smoothing=0.1", "seed=1"],
              ["optimizer.lr=5e-4", "noise.instance_sigma=0.1", "seed=0"]]


@pytest.mark.slow
def test_each_dcgan_member_is_its_separate_run_over_20_iterations(tmp_path):
    """Batch norm and convolutions stack (FunctionalStacked): each member's batch statistics over its own batch,
    its running statistics in its own row."""
    budget = [*DCGAN, "trainer.limit_train_batches=20", "ckpt_every=20"]
    stacked = [make_cfg(tmp_path / f"stacked{k}", *budget, *job) for k, job in enumerate(DCGAN_GRID)]
    assert len({group_key(c) for c in stacked}) == 1 and {why_alone(c) for c in stacked} == {None}
    records = train_stack(stacked, DCGAN_GRID)
    assert [r["iteration"] for r in records] == [20] * 3
    for k, job in enumerate(DCGAN_GRID):
        train(make_cfg(tmp_path / f"separate{k}", *budget, *job))
        _assert_same_run(tmp_path / f"stacked{k}", tmp_path / f"separate{k}", atol=1e-4)
        assert any("running_mean" in name for name in _ckpt(tmp_path / f"stacked{k}")["state_dict"])


def test_reuse_fake_stacks_as_its_separate_runs(tmp_path):
    budget = [*TOY, "trainer.limit_train_batches=10", "ckpt_every=10", "reuse_fake=true", "d_steps=2"]
    jobs = GRID[:2]
    train_stack([make_cfg(tmp_path / f"stacked{k}", *budget, *job) for k, job in enumerate(jobs)], jobs)
    for k, job in enumerate(jobs):
        train(make_cfg(tmp_path / f"separate{k}", *budget, *job))
        _assert_same_run(tmp_path / f"stacked{k}", tmp_path / f"separate{k}")


@pytest.mark.slow
def test_stacked_figures_are_their_separate_runs_figures(tmp_path):
    """Every hook reaches every member: progression.png has a row per epoch (it had only the first and the last
    one when members missed on_train_epoch_end), and the toy figures, which step a copy of the member's own
    optimizer, stack too."""
    from PIL import Image

    image = ["data=digits", "model=mlp_small", "eval=none", "image_every=0", "callbacks=figures",
             "trainer.max_epochs=3", "trainer.limit_train_batches=4", "log_every=2"]
    toy = [*TOY, "callbacks=toy", "trainer.max_epochs=2", "trainer.limit_train_batches=5", "image_every=5"]
    for name, budget, files in (("image", image, ["progression.png", "curves.png"]),
                                ("toy", toy, ["scatter.png", "decision_surface.png", "feature_space.png"])):
        jobs = GRID[:2]
        train_stack([make_cfg(tmp_path / f"{name}-stacked{k}", *budget, *job) for k, job in enumerate(jobs)], jobs)
        for k, job in enumerate(jobs):
            train(make_cfg(tmp_path / f"{name}-separate{k}", *budget, *job))
            for file in files:
                a = Image.open(tmp_path / f"{name}-stacked{k}" / file)
                b = Image.open(tmp_path / f"{name}-separate{k}" / file)
                assert a.size == b.size, (name, file)
            if name == "image":  # four rows: the untrained G and one per epoch
                assert Image.open(tmp_path / f"{name}-stacked{k}" / "progression.png").size[1] > 200
            cb = "ImageProgression" if name == "image" else "ToyFigures"
            assert _ckpt(tmp_path / f"{name}-stacked{k}")["callbacks"].keys() == \
                   _ckpt(tmp_path / f"{name}-separate{k}")["callbacks"].keys(), cb


@pytest.mark.slow
def test_noise_annealed_to_zero_in_one_member_stacks_as_its_separate_runs(tmp_path):
    """σ annealed every iteration reaches 0 in member 0 after one epoch while members 1 and 2 go on drawing
    noise and member 3 never draws any: each member's draws and weights are still its separate run's."""
    budget = [*TOY, "data.n=640", "trainer.max_epochs=3", "ckpt_every=100", "noise.anneal_per=iteration"]
    jobs = [["noise.instance_sigma=0.3", "noise.anneal=linear", "noise.anneal_epochs=1", "seed=0"],
            ["noise.instance_sigma=0.2", "noise.anneal=linear", "noise.anneal_epochs=3", "noise.instance_sigma_min=0.05",
             "seed=1"],
            ["noise.instance_sigma=0.1", "optimizer.lr=5e-4", "seed=2"],
            ["noise.instance_sigma=0", "seed=3"]]
    stacked = [make_cfg(tmp_path / f"stacked{k}", *budget, *job) for k, job in enumerate(jobs)]
    assert train_stack(stacked, jobs)[0]["iteration"] == 30
    for k, job in enumerate(jobs):
        train(make_cfg(tmp_path / f"separate{k}", *budget, *job))
        _assert_same_run(tmp_path / f"stacked{k}", tmp_path / f"separate{k}")
    sigmas = _scalars(tmp_path / "stacked0", "noise/sigma")
    assert sigmas[0] == pytest.approx(0.3) and sigmas[10:] == [0.0] * 20  # off from the second epoch on


@pytest.mark.slow
@pytest.mark.parametrize("loss, varied", [
    ("wgan_gp", [["loss.gp_weight=5", "seed=0"], ["loss.gp_weight=10", "seed=1"], ["loss.gp_weight=0", "seed=2"]]),
    ("nonsaturating", [["loss.r1_gamma=0", "seed=0"], ["loss.r1_gamma=10", "seed=1"], ["loss.r1_gamma=1", "seed=1"]]),
])
def test_penalty_weights_stack(loss, varied, tmp_path):
    budget = [*TOY, f"loss={loss}", "d_steps=2", "trainer.limit_train_batches=6", "ckpt_every=6"]
    records = train_stack([make_cfg(tmp_path / f"stacked{k}", *budget, *job) for k, job in enumerate(varied)], varied)
    assert [r["status"] for r in records] == ["finished"] * 3
    for k, job in enumerate(varied):
        train(make_cfg(tmp_path / f"separate{k}", *budget, *job))
        _assert_same_run(tmp_path / f"stacked{k}", tmp_path / f"separate{k}", atol=2e-5)


def _squared_mean_d(real, fake, label_smoothing=0.0):  # not a mean of per-sample terms: a square of means
    return (real.mean() - (1 - label_smoothing)).square() + fake.mean().square()


def _squared_mean_g(fake):
    return (fake.mean() - 1).square()


def _l1_d(real, fake, label_smoothing=0.0):  # a mean over samples: may take the one-call path
    return (real - (1 - label_smoothing)).abs().mean() + fake.abs().mean()


def _l1_g(fake):
    return (fake - 1).abs().mean()


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["minimax", "lsgan", "hinge", "squared_mean", "l1"])
def test_every_loss_stacks_as_its_separate_runs(loss, tmp_path, monkeypatch):
    """Built-in losses (means over samples: one call on all members' logits), a registered mean over samples,
    and a registered loss that is not one (it must run per member: one call would mix the members' means)."""
    from ganexp.gan.losses import LOSSES, LossPair

    monkeypatch.setitem(LOSSES, "squared_mean", LossPair(_squared_mean_d, _squared_mean_g, True))
    monkeypatch.setitem(LOSSES, "l1", LossPair(_l1_d, _l1_g, True, sample_mean=True))
    varied = [["optimizer.lr=1e-4", "seed=0"], ["optimizer.lr=5e-4", "noise.instance_sigma=0.1", "seed=1"],
              ["optimizer.lr=2e-4", "seed=2"]]
    if LOSSES[loss].has_targets:
        varied[0].append("loss.label_smoothing=0.2")
    budget = [*TOY, "loss=nonsaturating", f"loss.name={loss}", "trainer.limit_train_batches=8", "ckpt_every=8"]
    records = train_stack([make_cfg(tmp_path / f"stacked{k}", *budget, *job) for k, job in enumerate(varied)], varied)
    assert [r["status"] for r in records] == ["finished"] * 3
    for k, job in enumerate(varied):
        train(make_cfg(tmp_path / f"separate{k}", *budget, *job))
        _assert_same_run(tmp_path / f"stacked{k}", tmp_path / f"separate{k}", atol=2e-5)


class HookLog(Callback):
    """Records the epoch and end hooks each run's callbacks get, by run folder."""

    stackable = True  # reads only pl_module.run
    calls: dict[str, list[str]] = {}

    def _log(self, pl_module, hook: str) -> None:
        HookLog.calls.setdefault(pl_module.run.out.name, []).append(hook)

    def on_train_epoch_start(self, trainer, pl_module):
        self._log(pl_module, "epoch_start")

    def on_train_epoch_end(self, trainer, pl_module):
        self._log(pl_module, "epoch_end")

    def on_train_end(self, trainer, pl_module):
        self._log(pl_module, "train_end")


@pytest.mark.slow
def test_a_diverging_member_is_frozen_and_the_others_go_on(tmp_path, monkeypatch):
    monkeypatch.setenv("GANEXP_PARTS", "callback=tests.gan.test_stack.HookLog")
    budget = [*TOY, "trainer.limit_train_batches=12", "ckpt_every=1", "trainer.max_epochs=2",
              "+callbacks.hooks._target_=tests.gan.test_stack.HookLog"]
    jobs = [["optimizer.lr=2e-4"], ["optimizer.lr=1e12"], ["optimizer.lr=5e-4", "seed=1"]]
    records = train_stack([make_cfg(tmp_path / f"stacked{k}", *budget, *job) for k, job in enumerate(jobs)], jobs)
    assert [r["status"] for r in records] == ["finished", "diverged", "finished"]
    alone = train(make_cfg(tmp_path / "separate1", *budget, *jobs[1]))[0]  # what it does as a separate run
    assert {k: records[1][k] for k in ("status", "diverged_at", "reason", "iteration")} == \
           {k: alone[k] for k in ("status", "diverged_at", "reason", "iteration")}
    # the frozen member ends its last epoch as its own run does (ImageProgression's last row), then only ends
    assert HookLog.calls["stacked1"] == HookLog.calls["separate1"] == ["epoch_start", "epoch_end", "train_end"]
    assert HookLog.calls["stacked0"] == ["epoch_start", "epoch_end"] * 2 + ["train_end"]
    assert records[1]["iteration"] < 12 and "non-finite" in records[1]["reason"]
    for k in (0, 2):  # untouched by their neighbour's NaNs
        train(make_cfg(tmp_path / f"separate{k}", *budget, *jobs[k]))
        _assert_same_run(tmp_path / f"stacked{k}", tmp_path / f"separate{k}")


@pytest.mark.slow
def test_a_member_checkpoint_resumes_as_a_separate_run(tmp_path):
    """A stacked member's last.ckpt (optimizer state, loop progress, data position, draws) resumed alone
    ends where the same run trained straight through ends."""
    budget = [*TOY, "trainer.limit_train_batches=8", "ckpt_every=100"]
    jobs = [["optimizer.lr=1e-3", "noise.instance_sigma=0.1"], ["optimizer.lr=3e-4", "seed=1"]]
    train_stack([make_cfg(tmp_path / f"m{k}", *budget, *job, "trainer.max_epochs=1") for k, job in enumerate(jobs)],
                jobs)
    for k, job in enumerate(jobs):
        resumed = make_cfg(tmp_path / f"m{k}", *budget, *job, "trainer.max_epochs=2",
                           f"ckpt_path={tmp_path / f'm{k}' / 'checkpoints' / 'last.ckpt'}")
        assert train(resumed)[0]["status"] == "finished"
        train(make_cfg(tmp_path / f"straight{k}", *budget, *job, "trainer.max_epochs=2"))
        a, b = _ckpt(tmp_path / f"m{k}"), _ckpt(tmp_path / f"straight{k}")
        assert a["iteration"] == b["iteration"] == 16
        for name, tensor in b["state_dict"].items():
            torch.testing.assert_close(a["state_dict"][name], tensor, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_a_stack_scores_its_members_together_as_their_separate_runs_score(tmp_path, monkeypatch):
    """Digits with the metrics classifier: every evaluation of the stack (each `eval.every`, and the final
    one on n_final) is one classifier call for all members' samples, and each member's metrics equal the
    ones its separate run computes alone."""
    from ganexp.metrics.classifier import DomainClassifier

    sizes: list[int] = []
    embed = DomainClassifier.embed
    monkeypatch.setattr(DomainClassifier, "embed", lambda self, images, **kw: (sizes.append(len(images)),
                                                                               embed(self, images, **kw))[1])
    budget = ["data=digits", "model=mlp_small", "image_every=0", "trainer.limit_train_batches=10", "ckpt_every=10",
              "eval.every=5", "eval.n=500", "eval.n_final=1000"]
    jobs = [["optimizer.lr=1e-4", "seed=0"], ["optimizer.lr=5e-4", "loss.label_smoothing=0.1", "seed=1"],
            ["noise.instance_sigma=0.1", "seed=2"]]
    records = train_stack([make_cfg(tmp_path / f"stacked{k}", *budget, *job) for k, job in enumerate(jobs)], jobs)
    assert [r["status"] for r in records] == ["finished"] * 3
    training = sizes[sizes.index(1500):]  # before: the test split's features and the two floors (real images)
    # iterations 5 and 10 (3 x 500 samples), the final scores (3 x 1,000); then a member whose best iteration
    # was not its last re-scores best.ckpt on its own, as its separate run does
    assert training[:3] == [1500, 1500, 3000] and set(training[3:]) <= {1000} and len(training) <= 6
    for k, job in enumerate(jobs):
        train(make_cfg(tmp_path / f"separate{k}", *budget, *job))
        mine, theirs = read_metrics(tmp_path / f"stacked{k}"), read_metrics(tmp_path / f"separate{k}")
        # weights equal within ~1e-7 can round a few pixels the other way in uint8: 2e-4 apart measured
        assert mine["final"] == pytest.approx(theirs["final"], rel=1e-3, abs=1e-6)
        assert mine["best_iteration"] == theirs["best_iteration"] and mine["protocol"] == theirs["protocol"]
        assert _scalars(tmp_path / f"stacked{k}", "metrics/fid") == pytest.approx(
            _scalars(tmp_path / f"separate{k}", "metrics/fid"), rel=1e-3)


def test_members_with_equal_data_hold_one_copy_as_they_are_built(tmp_path):
    from ganexp.run.build import build_datamodule
    from ganexp.gan.stack import share_data

    distinct, datas = [], []
    for k, job in enumerate([["seed=0"], ["seed=1", "data.seed=0", "optimizer.lr=1e-3"], ["data.seed=5"], ["seed=2", "data.seed=5"]]):
        data = build_datamodule(make_cfg(tmp_path / str(k), *TOY, *job).data)
        data.setup("fit")
        own = data.train_data
        share_data(data, distinct)
        datas.append((data, own))
    # toy points come from data.seed (default: seed): jobs 0 and 1 share one tensor, 2 and 3 another, each member's equal to its own
    assert len(distinct) == 2 and datas[1][0].train_data is datas[0][0].train_data
    assert datas[3][0].train_data is datas[2][0].train_data and datas[2][0].train_data is not datas[0][0].train_data
    assert all(torch.equal(d.train_data, own) for d, own in datas)


@pytest.mark.parametrize("override, stacks", [
    ("optimizer.lr=1e-3", True), ("loss.label_smoothing=0.2", True), ("noise.instance_sigma=0.3", True),
    ("noise.anneal=linear", True), ("seed=7", True), ("loss.r1_gamma=5", True), ("optimizer.g.lr=1e-3", True),
    ("batch_size=32", False), ("d_steps=2", False), ("loss=lsgan", False), ("model.generator.hidden=[8]", False),
    ("data.dist=grid", False), ("optimizer.betas=[0.0,0.9]", False), ("optimizer=rmsprop", False),
    ("noise.latent_dim=4", False), ("trainer.max_epochs=2", False), ("ema.decay=0.9", False),
])
def test_what_stacks_with_what(override, stacks, tmp_path):
    base = make_cfg(tmp_path / "a", *TOY)
    other = make_cfg(tmp_path / "b", *TOY, override)
    assert (group_key(base) == group_key(other)) is stacks


@pytest.mark.parametrize("override, words", [
    ("trainer.precision=bf16-mixed", "trainer.precision=bf16-mixed"),
    ("ckpt_path=x.ckpt", "it starts from a checkpoint"),
    ("trainer.devices=2", "several devices"),
    ("optimizer.d._target_=torch.optim.Adagrad", "optimizer.d (Adagrad) is not one whose step is linear in lr"),
])
def test_what_runs_alone_says_why(override, words, tmp_path, monkeypatch):
    monkeypatch.setenv("GANEXP_PARTS", "optimizer=torch.optim.Adagrad")
    assert words in why_alone(make_cfg(tmp_path, *TOY, override))


class OwnCallback(Callback):
    """A user's callback: it might read trainer.logger, default_root_dir or should_stop, which a stack shares."""


class OwnStackableCallback(OwnCallback):
    stackable = True  # promises to read its run from pl_module.run only


@pytest.mark.parametrize("name, stacks", [("OwnCallback", False), ("OwnStackableCallback", True)])
def test_a_callback_of_ones_own_stacks_only_when_it_declares_so(name, stacks, tmp_path, monkeypatch):
    monkeypatch.setenv("GANEXP_PARTS", f"callback=tests.gan.test_stack.{name}")
    why = why_alone(make_cfg(tmp_path, *TOY, f"+callbacks.own._target_=tests.gan.test_stack.{name}"))
    assert why == (None if stacks else f"callbacks.own ({name}) is not ganexp's own and does not declare "
                                       "stackable = True (members share one trainer)")


@pytest.mark.parametrize("overrides", [
    ["model.discriminator.spectral_norm=true"], ["callbacks=toy"], ["reuse_fake=true"],
    ["model=dcgan", "data=digits"], ["model=dcgan", "data=digits", "model.discriminator.spectral_norm=true"],
])
def test_every_built_in_model_and_option_stacks(overrides, tmp_path):
    assert why_alone(make_cfg(tmp_path, *TOY, *overrides)) is None


def test_members_get_every_callback_hook_of_lightning():
    from pytorch_lightning.callbacks import Callback
    from ganexp.gan.stack import Members

    hooks = [name for name in vars(Callback) if name.startswith("on_") or name in ("setup", "teardown")]
    assert len(hooks) > 30 and "on_train_epoch_end" in hooks
    assert all(vars(Members).get(h) is not None for h in hooks if h not in ("on_save_checkpoint", "on_load_checkpoint"))


def test_plan_groups_equal_keys_up_to_max_stack_in_sweep_order():
    assert plan(["a", "b", "a", None, "a", "a", "b"], 3) == [[0, 2, 4], [1, 6], [3], [5]]
    assert plan([None, None], 16) == [[0], [1]]


LAUNCH = ["-m", "data=toy", "model=toy_mlp", "optimizer.lr=1e-4,5e-4", "noise.instance_sigma=0,0.1", "seed=0,1",
          "hydra/launcher=stacked", "hydra.launcher.max_stack=3", "trainer.limit_train_batches=10",
          "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "eval.n=250", "eval.n_final=500",
          "log_every=2", "image_every=0"]


@pytest.mark.slow
def test_the_stacked_launcher_end_to_end(tmp_path):
    """8 jobs in stacks of 3, 3, 2: 8 run folders like a separate run's (same files, same TensorBoard tags),
    the same summary; the same command again skips them all; a member's checkpoint samples."""
    sweep = tmp_path / "sweep"
    result = run_train(*LAUNCH, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ganexp: stacked launcher: 8 jobs, 8 of them in 3 stacks (3, 3, 2)" in result.stdout
    folders = sorted(p.parent for p in sweep.glob("*/seed=*/metrics.json"))
    assert len(folders) == 8
    separate = tmp_path / "separate"
    assert run_train(*[a for a in LAUNCH if a not in ("-m", "hydra/launcher=stacked", "hydra.launcher.max_stack=3")
                       and "," not in a], "optimizer.lr=1e-4", "noise.instance_sigma=0", "seed=0",
                     f"hydra.run.dir={separate}", cwd=tmp_path).returncode == 0
    want = EventAccumulator(str(separate)).Reload().Tags()
    files = {p.name for p in separate.iterdir() if not p.name.startswith("events.")}
    for folder in folders:
        record = read_metrics(folder)
        assert record["status"] == "finished" and record["stacked"] is True and record["iteration"] == 10
        assert record["stack"]["size"] in (2, 3) and "swd" in record["final"]
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
        tags = EventAccumulator(str(folder)).Reload().Tags()
        assert set(tags["scalars"]) == set(want["scalars"]) and set(tags["tensors"]) == set(want["tensors"])
        assert {p.name for p in folder.iterdir() if not p.name.startswith("events.")} == files
        assert {p.name for p in (folder / "checkpoints").iterdir()} == {p.name for p in (separate / "checkpoints").iterdir()}
        assert (folder / ".hydra" / "overrides.yaml").is_file()
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert len(rows) == 8 and {r["status"] for r in rows} == {"finished"}
    again = run_train(*LAUNCH, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert again.returncode == 0 and "run alone: 8 (it has finished (skipped))" in again.stdout
    npz = tmp_path / "s.npz"
    subprocess.run([sys.executable, "-m", "ganexp.sample", str(folders[0]), "--n", "50", "--out", str(npz)],
                   check=True, capture_output=True)
    assert npz.is_file()


@pytest.mark.slow
def test_a_dcgan_sweep_runs_as_one_stack(tmp_path):
    result = run_train("-m", "model=dcgan", "data=digits", "optimizer.lr=1e-4,2e-4,5e-4", "loss.label_smoothing=0,0.1",
                       "hydra/launcher=stacked", "trainer.limit_train_batches=3", "trainer.max_epochs=1", "eval=none",
                       "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ganexp: stacked launcher: 6 jobs, 6 of them in 1 stack (6)" in result.stdout
    records = [json.loads(p.read_text()) for p in (tmp_path / "s").glob("*/seed=0/metrics.json")]
    assert len(records) == 6 and all(r["status"] == "finished" and r["stack"]["size"] == 6 for r in records)
    assert all(r["iteration"] == 3 for r in records)


@pytest.mark.slow
def test_a_sweep_that_cannot_stack_still_runs_and_says_why(tmp_path):
    result = run_train("-m", *TOY, "trainer.precision=bf16-mixed", "optimizer.lr=1e-4,2e-4",
                       "hydra/launcher=stacked", "trainer.limit_train_batches=3", "trainer.max_epochs=1",
                       "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [l for l in result.stdout.splitlines() if l.startswith("ganexp: stacked launcher:")]
    assert lines == ["ganexp: stacked launcher: 2 jobs, 0 of them in 0 stacks (none); run alone: 2 "
                     "(trainer.precision=bf16-mixed (stacks train in 32-bit))"]
    records = [json.loads(p.read_text()) for p in (tmp_path / "s").glob("*/seed=0/metrics.json")]
    assert len(records) == 2 and all(r["status"] == "finished" and "stacked" not in r for r in records)


class SignalOnce:
    """A test callback: the process signals itself once after iteration GANEXP_TEST_SIGNAL_AT (every member
    of a stack has this callback; a second signal would mean "stop now")."""

    sent = False
    stackable = True  # reads only pl_module.iteration: a stack may run it for every member

    def __new__(cls):
        from pytorch_lightning.callbacks import Callback

        class _Signal(Callback):
            def setup(self, trainer, pl_module, stage):  # GANEXP_TEST_SIGNAL_AT=setup: during a slow setup
                if os.environ.get("GANEXP_TEST_SIGNAL_AT") == "setup" and not SignalOnce.sent:
                    SignalOnce.sent = True
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(120)

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                at = os.environ.get("GANEXP_TEST_SIGNAL_AT")
                if at and at.isdigit() and not SignalOnce.sent and pl_module.iteration == int(at):
                    SignalOnce.sent = True
                    os.kill(os.getpid(), signal.SIGTERM)
        return _Signal()


@pytest.mark.slow
def test_a_signal_during_the_stacks_setup_stops_every_member_at_once(tmp_path):
    sweep, parts = tmp_path / "sweep", {"GANEXP_PARTS": "callback=tests.gan.test_stack.SignalOnce"}
    args = ["-m", *TOY, "optimizer.lr=1e-4,5e-4", "hydra/launcher=stacked", "trainer.limit_train_batches=10",
            "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
            "+callbacks.signal._target_=tests.gan.test_stack.SignalOnce", f"hydra.sweep.dir={sweep}"]
    first = run_train(*args, cwd=tmp_path, env={**parts, "GANEXP_TEST_SIGNAL_AT": "setup"}, timeout=100)
    assert first.returncode == 143, first.stderr[-2000:]
    folders = sorted(p.parent for p in sweep.glob("*/seed=0/metrics.json"))
    assert len(folders) == 2
    for folder in folders:
        record = read_metrics(folder)
        assert (record["status"], record["iteration"]) == ("interrupted", 0), record
        assert record["reason"] == "SIGTERM before training started (iteration 0)"
        assert not (folder / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_a_signal_stops_every_member_at_one_iteration_and_the_same_command_resumes_them(tmp_path):
    sweep, parts = tmp_path / "sweep", {"GANEXP_PARTS": "callback=tests.gan.test_stack.SignalOnce"}
    args = ["-m", *TOY, "optimizer.lr=1e-4,5e-4", "hydra/launcher=stacked", "trainer.limit_train_batches=10",
            "trainer.max_epochs=2", "ckpt_every=100", "trainer.enable_progress_bar=false",
            "+callbacks.signal._target_=tests.gan.test_stack.SignalOnce", f"hydra.sweep.dir={sweep}"]
    first = run_train(*args, cwd=tmp_path, env={**parts, "GANEXP_TEST_SIGNAL_AT": "7"})
    assert first.returncode == 143, first.stderr[-2000:]
    folders = sorted(p.parent for p in sweep.glob("*/seed=0/metrics.json"))
    assert len(folders) == 2
    for folder in folders:
        record = read_metrics(folder)
        assert record["status"] == "interrupted" and record["iteration"] == 7 and record["stacked"] is True
        assert _ckpt(folder)["iteration"] == 7
    again = run_train(*args, cwd=tmp_path, env=parts)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "run alone: 2 (it resumes its last.ckpt)" in again.stdout
    for folder, lr in zip(folders, ("0.0001", "0.0005")):
        assert f"optimizer.lr={lr}" in folder.parent.name
        assert read_metrics(folder)["status"] == "finished" and _ckpt(folder)["iteration"] == 20
        straight = tmp_path / f"straight{lr}"
        train(make_cfg(straight, *TOY, f"optimizer.lr={lr}", "trainer.limit_train_batches=10", "trainer.max_epochs=2",
                       "ckpt_every=100"))
        for name, tensor in _ckpt(straight)["state_dict"].items():
            torch.testing.assert_close(_ckpt(folder)["state_dict"][name], tensor, atol=1e-5, rtol=1e-4)
