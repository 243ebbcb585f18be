"""Bad input gives one line and exit 2; divergence and kill -9 lose nothing."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ganexp.run.signals import EXIT_CODES
from tests.helpers import ROOT, run_train

pytestmark = pytest.mark.slow

# Command-line smoke tests of the exit code and "nothing written"; the whole catalogue of bad values
# runs in-process against the check itself (tests/run/test_validate.py).
BAD_INPUTS = [
    (["loss=nonsaturatingg"], ["loss=nonsaturatingg", "choose one of", "nonsaturating, wgan_gp"]),
    (["optimizer.lr=inf"], ["optimizer.lr=inf is not finite"]),
    (["-m", "optimizer.lr=1e-4,-1"], ["optimizer.lr=-1 is out of range"]),
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
    last = result.stderr.strip().splitlines()[-1]
    assert "diverged: non-finite loss at iteration" in last and "the last good checkpoint is" in last
    run = next(tmp_path.glob("outputs/*/*"))
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "diverged" and record["diverged_at"] >= 1
    assert record["iteration"] < 44  # stopped early (2 epochs of 22)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["iteration"] < record["diverged_at"]
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


RESUME_ARGS = ["model=mlp_small", "trainer.max_epochs=3", "ckpt_every=10", "log_every=5", "image_every=0",
               "trainer.enable_progress_bar=false", "noise.instance_sigma=0.1", "trainer.accelerator=cpu",
               "ema.decay=0.9", "ema.start=3"]  # the EMA generator is resumed bit-identically too


def _generator_state(ckpt_path):
    state = torch.load(ckpt_path, weights_only=True)["state_dict"]
    kept = {k: v for k, v in state.items() if k.startswith(("generator.", "generator_ema."))}
    assert any(k.startswith("generator_ema.") for k in kept)
    return kept


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
        if found and torch.load(found[0], weights_only=True)["iteration"] >= 30:  # mid-epoch 2 (22 per epoch)
            ckpt = found[0]
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt is not None, "the run finished before a mid-run checkpoint was seen"
    stopped_at = torch.load(ckpt, weights_only=True)["iteration"]
    assert stopped_at < 66 and stopped_at % 22 != 0  # killed mid-epoch

    result = run_train(*RESUME_ARGS, f"ckpt_path={ckpt}", cwd=killed)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = _generator_state(ckpt)
    assert torch.load(ckpt, weights_only=True)["iteration"] == 66
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


class SignalSelf:
    """A test callback: the process signals itself after iteration GANEXP_TEST_SIGNAL_AT, as `kill` would."""

    def __new__(cls):
        from pytorch_lightning.callbacks import Callback

        class _Signal(Callback):
            def setup(self, trainer, pl_module, stage):  # GANEXP_TEST_SIGNAL_AT=setup: during a slow setup,
                if os.environ["GANEXP_TEST_SIGNAL_AT"] == "setup":  # before a resume's checkpoint is read
                    os.kill(os.getpid(), getattr(signal, os.environ["GANEXP_TEST_SIGNAL"]))
                    time.sleep(120)  # as MNIST's metrics classifier trains on first use (minutes)

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if pl_module.iteration == int(os.environ["GANEXP_TEST_SIGNAL_AT"]) and not self._between():
                    os.kill(os.getpid(), getattr(signal, os.environ["GANEXP_TEST_SIGNAL"]))

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # between two iterations
                if pl_module.iteration == int(os.environ["GANEXP_TEST_SIGNAL_AT"]) and self._between():
                    os.kill(os.getpid(), getattr(signal, os.environ["GANEXP_TEST_SIGNAL"]))

            @staticmethod
            def _between() -> bool:
                return os.environ.get("GANEXP_TEST_SIGNAL_BETWEEN") == "1"
        return _Signal()


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_during_setup_stops_at_once_and_marks_the_run_interrupted(name, code, tmp_path):
    # Before the first iteration there is nothing to finish or checkpoint: waiting for it (the classifier's
    # first training took 132 s after a SIGTERM) would outlast a cluster's or docker's grace period.
    env = {"GANEXP_PARTS": "callback=tests.run.test_faults.SignalSelf", "GANEXP_TEST_SIGNAL_AT": "setup",
           "GANEXP_TEST_SIGNAL": name}
    result = run_train(*RESUME_ARGS, "+callbacks.signal._target_=tests.run.test_faults.SignalSelf", cwd=tmp_path, env=env,
                       timeout=100)  # the setup sleeps 120 s: a deferred stop runs past this
    assert result.returncode == code, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert f"interrupted by {name} before training started (iteration 0)" in last, last
    assert "run the same command again" in last and "Traceback" not in result.stderr
    run = next(tmp_path.glob("outputs/*/*"))
    record = json.loads((run / "metrics.json").read_text())
    assert (record["status"], record["signal"], record["iteration"]) == ("interrupted", name, 0)
    assert not (run / "checkpoints" / "last.ckpt").exists()


def test_a_signal_during_a_resumes_setup_keeps_its_checkpoint_and_iteration(tmp_path):
    env = {"GANEXP_PARTS": "callback=tests.run.test_faults.SignalSelf", "GANEXP_TEST_SIGNAL_AT": "setup",
           "GANEXP_TEST_SIGNAL": "SIGTERM"}
    args = [*RESUME_ARGS, "trainer.max_epochs=1", "+callbacks.signal._target_=tests.run.test_faults.SignalSelf"]
    assert run_train(*args, cwd=tmp_path, env={**env, "GANEXP_TEST_SIGNAL_AT": "-1"}).returncode == 0
    run = next(tmp_path.glob("outputs/*/*"))
    ckpt = run / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    result = run_train(*args, "trainer.max_epochs=2", f"ckpt_path={ckpt}", cwd=tmp_path, env=env, timeout=100)
    assert result.returncode == 143, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "interrupted by SIGTERM before training started (iteration 22)" in last, last
    assert f"resume with: python train.py ckpt_path={ckpt}" in last
    record = json.loads((run / "metrics.json").read_text())
    assert (record["status"], record["iteration"]) == ("interrupted", 22)  # where its checkpoint is, not 0
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_checkpoints_the_iteration_marks_interrupted_and_the_resume_is_bit_identical(name, code, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    straight.mkdir(), stopped.mkdir()
    assert run_train(*RESUME_ARGS, cwd=straight).returncode == 0
    reference = _generator_state(next(straight.glob("outputs/*/*/checkpoints/last.ckpt")))

    env = {"GANEXP_PARTS": "callback=tests.run.test_faults.SignalSelf", "GANEXP_TEST_SIGNAL_AT": "31",
           "GANEXP_TEST_SIGNAL": name}
    first = run_train(*RESUME_ARGS, "+callbacks.signal._target_=tests.run.test_faults.SignalSelf", cwd=stopped, env=env)
    assert first.returncode == code, first.stderr[-2000:]
    assert f"interrupted by {name} at iteration 31" in first.stderr.strip().splitlines()[-1]
    run = next(stopped.glob("outputs/*/*"))
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == name and record["iteration"] == 31
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["iteration"] == 31  # mid-epoch 2, not a ckpt_every multiple

    # the checkpoint's stored config names the test callback: resuming it needs the same declaration
    resumed = run_train(*RESUME_ARGS, f"ckpt_path={ckpt}", cwd=stopped, env={**env, "GANEXP_TEST_SIGNAL_AT": "-1"})  # the carried callback, off
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(ckpt, weights_only=True)["iteration"] == 66
    state = _generator_state(ckpt)
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_signal_between_two_iterations_stops_after_the_next_and_the_resume_is_bit_identical(tmp_path):
    """Lightning ends its epoch when it is told to stop between two batches: a checkpoint written then would make
    the resume skip the rest of the epoch (seen as a SLURM job ending 40 iterations short). One more runs instead."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    straight.mkdir(), stopped.mkdir()
    assert run_train(*RESUME_ARGS, cwd=straight).returncode == 0
    reference = _generator_state(next(straight.glob("outputs/*/*/checkpoints/last.ckpt")))
    env = {"GANEXP_PARTS": "callback=tests.run.test_faults.SignalSelf", "GANEXP_TEST_SIGNAL_AT": "31",
           "GANEXP_TEST_SIGNAL": "SIGTERM", "GANEXP_TEST_SIGNAL_BETWEEN": "1"}
    first = run_train(*RESUME_ARGS, "+callbacks.signal._target_=tests.run.test_faults.SignalSelf", cwd=stopped, env=env)
    assert first.returncode == 143, first.stderr[-2000:]
    ckpt = next(stopped.glob("outputs/*/*/checkpoints/last.ckpt"))
    assert torch.load(ckpt, weights_only=True)["iteration"] == 32  # the iteration after the signal, mid-epoch 2
    resumed = run_train(*RESUME_ARGS, f"ckpt_path={ckpt}", cwd=stopped, env={**env, "GANEXP_TEST_SIGNAL_AT": "-1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(ckpt, weights_only=True)["iteration"] == 66
    state = _generator_state(ckpt)
    assert all(torch.equal(state[k], reference[k]) for k in reference)


@pytest.mark.slow
def test_stops_at_an_epochs_last_batch_and_mid_epoch_in_turn_resume_bit_identical(tmp_path):
    """A checkpoint written after an epoch's last batch but before the epoch ended was restored by Lightning as if
    the next epoch had begun, and a later mid-epoch checkpoint of that resumed run as if its epoch were over: a
    SLURM job ended 42 iterations late. Stops at the last batch (10, 20), mid-epoch (15), then the end (30), each
    at a ckpt_every multiple (a stop saved mid-epoch was saved again at the epoch's end, and its resume ended at 25)
    and by another signal (SIGTERM leaves fit before the epoch's end; the others do not)."""
    args = ["data=toy", "model=toy_mlp", "eval=none", "trainer.limit_train_batches=10", "trainer.max_epochs=3",
            "trainer.enable_progress_bar=false", "image_every=0", "ema.decay=0.9", "ema.start=3", "ckpt_every=5"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    straight.mkdir(), stopped.mkdir()
    assert run_train(*args, cwd=straight).returncode == 0
    reference = _generator_state(next(straight.glob("outputs/*/*/checkpoints/last.ckpt")))
    env = {"GANEXP_PARTS": "callback=tests.run.test_faults.SignalSelf"}
    first = run_train(*args, "+callbacks.signal._target_=tests.run.test_faults.SignalSelf", cwd=stopped,
                      env={**env, "GANEXP_TEST_SIGNAL_AT": "10", "GANEXP_TEST_SIGNAL": "SIGTERM"})
    assert first.returncode == 143, first.stderr[-2000:]
    ckpt = next(stopped.glob("outputs/*/*/checkpoints/last.ckpt"))
    for at, name in ((15, "SIGUSR2"), (20, "SIGINT"), (-1, "SIGTERM")):
        again = run_train(*args, f"ckpt_path={ckpt}", cwd=stopped,
                          env={**env, "GANEXP_TEST_SIGNAL_AT": str(at), "GANEXP_TEST_SIGNAL": name})
        assert again.returncode == (EXIT_CODES[name] if at > 0 else 0), again.stderr[-2000:]
        assert torch.load(ckpt, weights_only=True)["iteration"] == (at if at > 0 else 30)
    state = _generator_state(ckpt)
    assert all(torch.equal(state[k], reference[k]) for k in reference)
