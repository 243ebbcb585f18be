"""Bad input gives one line and exit 2; divergence and kill -9 lose nothing."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, run_train

pytestmark = pytest.mark.slow

BAD_INPUTS = [
    (["loss=nonsaturatingg"], ["loss=nonsaturatingg", "choose one of", "nonsaturating, wgan_gp"]),
    (["model=mlpp"], ["model=mlpp is not an option of model", "dcgan, mlp, mlp_small, toy_mlp"]),
    (["optimizer.lrr=0.1"], ["optimizer.lrr is not a config key", "lr, betas"]),
    (["optimizer.lr=abc"], ["optimizer.lr=abc is not a number"]),
    (["optimizer.lr=0"], ["optimizer.lr=0 is out of range", "> 0"]),
    (["optimizer.lr=-1e-3"], ["optimizer.lr=-0.001 is out of range"]),
    (["optimizer.d.lr=0"], ["optimizer.d.lr=0 is out of range"]),
    (["loss.label_smoothing=1.0"], ["loss.label_smoothing=1.0 is out of range", "[0, 1)"]),
    (["loss.label_smoothing=-0.1"], ["loss.label_smoothing=-0.1 is out of range"]),
    (["noise.instance_sigma=-0.5"], ["noise.instance_sigma=-0.5 is out of range", ">= 0"]),
    (["d_steps=0"], ["d_steps=0 is out of range", ">= 1"]),
    (["d_steps=1.5"], ["d_steps=1.5 is not an integer"]),
    (["noise.latent_dim=0"], ["noise.latent_dim=0 is out of range"]),
    (["batch_size=0"], ["batch_size=0 is out of range"]),
    (["batch_size=big"], ["batch_size=big is not an integer"]),
    (["noise.prior=gaussian"], ["noise.prior=gaussian is not allowed", "normal, uniform"]),
    (["model.generator.init=he"], ["model.generator.init=he is not allowed", "default, xavier, kaiming"]),
    (["loss=hinge", "loss.label_smoothing=0.1"], ["has no meaning for loss=hinge"]),
    (["loss=wgan_gp", "loss.label_smoothing=0.1"], ["has no meaning for loss=wgan_gp"]),
    (["model=dcgan", "data=toy"], ["model=dcgan needs images"]),
    (["-m", "trainer.strategy=ddp_find_unused_parameters_true"], ["-m (multirun) with DDP"]),
    (["-m", "optimizer.lr=1e-4,-1"], ["optimizer.lr=-1 is out of range"]),
    (["optimizer.lr=[1"], ["cannot parse the overrides"]),
    (["data=mnist", "data.root=EMPTY", "data.download=false"],
     ["MNIST not found", "train-images-idx3-ubyte", "GANEXP_DATA_DIR=", "data.root="]),
    (["ckpt_path=TRUNCATED"], ["cannot read checkpoint", "truncated"]),
    (["ckpt_path=MISSING"], ["no checkpoint at"]),
]


@pytest.fixture(scope="module")
def truncated_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("truncated")
    good = folder / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, good)
    bad = folder / "checkpoints" / "last.ckpt"
    bad.parent.mkdir()
    bad.write_bytes(good.read_bytes()[:500])
    return bad


@pytest.mark.parametrize("args, words", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing_half_written(args, words, tmp_path, truncated_ckpt):
    (tmp_path / "empty").mkdir()
    subs = {"EMPTY": str(tmp_path / "empty"), "TRUNCATED": str(truncated_ckpt), "MISSING": str(tmp_path / "no.ckpt")}
    args = [a.replace(k, v) if k in a else a for a in args for k, v in [next(
        ((k, v) for k, v in subs.items() if k in a), ("", ""))]]
    result = run_train(*args, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0]
    assert not list(tmp_path.rglob("*.ckpt")), "no checkpoint may be written"
    for record in tmp_path.rglob("metrics.json"):  # a run folder Hydra made says why, in full
        assert json.loads(record.read_text())["status"] == "failed"


def test_truncated_checkpoint_given_to_sample(truncated_ckpt, tmp_path):
    result = subprocess.run([sys.executable, "-m", "ganexp.sample", str(truncated_ckpt), "--out",
                             str(tmp_path / "x.png")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "cannot read checkpoint" in result.stderr and not (tmp_path / "x.png").exists()


def test_a_checkpoint_that_needs_code_to_unpickle_is_refused(tmp_path):
    evil = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": {"model": object()}}, evil)  # arbitrary object: not weights_only-safe
    result = subprocess.run([sys.executable, "-m", "ganexp.sample", str(evil)], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 2 and "cannot read checkpoint" in result.stderr


def test_divergence_stops_cleanly_keeps_the_last_good_checkpoint_and_says_diverged(tmp_path):
    result = run_train("model=mlp_small", "optimizer=sgd", "optimizer.lr=1e6", "trainer.max_epochs=2", "log_every=1",
                       "ckpt_every=2", "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "diverged at iteration" in result.stderr.strip().splitlines()[-1]
    run = next(tmp_path.glob("outputs/*/*"))
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "diverged" and record["diverged_at"] >= 1
    assert record["iteration"] < 56  # stopped early
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["iteration"] < record["diverged_at"]
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


RESUME_ARGS = ["model=mlp_small", "trainer.max_epochs=3", "ckpt_every=10", "log_every=5", "image_every=0",
               "trainer.enable_progress_bar=false", "noise.instance_sigma=0.1", "trainer.accelerator=cpu"]


def _generator_state(ckpt_path):
    state = torch.load(ckpt_path, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("generator.")}


def test_kill_9_mid_epoch_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    assert run_train(*RESUME_ARGS, cwd=straight).returncode == 0
    reference = _generator_state(next(straight.glob("outputs/*/*/checkpoints/last.ckpt")))

    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *RESUME_ARGS, "+trainer.max_time=null"],
                            cwd=killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = list(killed.glob("outputs/*/*/checkpoints/last.ckpt"))
        if found and torch.load(found[0], weights_only=True)["iteration"] >= 30:  # mid-epoch 2 (28 per epoch)
            ckpt = found[0]
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt is not None, "the run finished before a mid-run checkpoint was seen"
    stopped_at = torch.load(ckpt, weights_only=True)["iteration"]
    assert stopped_at < 84 and stopped_at % 28 != 0  # killed mid-epoch

    result = run_train(*RESUME_ARGS, f"ckpt_path={ckpt}", cwd=killed)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = _generator_state(ckpt)
    assert torch.load(ckpt, weights_only=True)["iteration"] == 84
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
