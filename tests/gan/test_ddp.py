"""trainer=ddp as a user runs it: two CPU processes (gloo), one run folder, identical weights."""
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from tests.helpers import CONF, ROOT, run_train

pytestmark = pytest.mark.slow
NO_EVAL = ["eval=none"] if (CONF / "eval" / "none.yaml").is_file() else []  # metrics cost minutes on 2 cores
ITERATIONS = 4
# A process launched by torchrun, SLURM or Lightning itself has these; a user's shell does not. With LOCAL_RANK
# set, Lightning takes the run for one rank of a job launched from outside and waits for ranks it never starts.
LAUNCHED = ("LOCAL_RANK", "NODE_RANK", "RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
            "MASTER_PORT")


def digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RankDigest(Callback):
    """Each rank writes rank<r>.json into the run folder: weight hashes before and after, its first batch's hash."""

    def on_train_start(self, trainer, pl_module):
        self.start = {"generator": digest(pl_module.generator), "discriminator": digest(pl_module.discriminator)}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.first_batch = hashlib.sha256(batch.cpu().numpy().tobytes()).hexdigest()

    def on_train_end(self, trainer, pl_module):
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "iteration": pl_module.iteration,
                  "start": self.start, "first_batch": self.first_batch,
                  "end": {"generator": digest(pl_module.generator), "discriminator": digest(pl_module.discriminator)}}
        with open(f"{trainer.default_root_dir}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(record, f)


def run_ddp(cwd, port: int, timeout: int) -> subprocess.CompletedProcess | None:
    """train.py with trainer=ddp on 2 CPU processes in a session of its own; None when it ran past `timeout`
    (then the whole session, rank 1 included, is killed: a rank left behind would hold the port)."""
    args = [sys.executable, str(ROOT / "train.py"), "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.max_epochs=1", f"trainer.limit_train_batches={ITERATIONS}", "trainer.enable_progress_bar=false",
            "log_every=1", "ckpt_every=2", "+callbacks.digest._target_=tests.gan.test_ddp.RankDigest", *NO_EVAL]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHED and not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    env.update(GANEXP_PARTS="callback=tests.gan.test_ddp.RankDigest", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as stop:  # past the limit, or pytest interrupted: no rank is left behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        if not isinstance(stop, subprocess.TimeoutExpired):
            raise
        logs = {p.name: p.read_text()[-1500:] for p in Path(cwd).glob("outputs/*/*/*.log")}
        print(f"DDP run past {timeout} s; stdout: {out[-1500:]}\nstderr: {err[-1500:]}\nlogs: {logs}")
        return None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_two_process_ddp_on_cpu_keeps_both_ranks_identical_and_writes_from_rank_0_only(tmp_path, monkeypatch):
    # What an in-process Lightning DDP run leaves in a test worker's os.environ (CI ran this test in a worker
    # after one, and rank 0 waited for a rank 1 it never launched): the run starts from a user's clean shell.
    for key, value in {"LOCAL_RANK": "0", "NODE_RANK": "0", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    # Retried with a new port when gloo's port, free when picked, was taken by a parallel test's server. A run
    # past 240 s is a hang (the stalls CI saw were the LOCAL_RANK above, not load): it fails at once, not 3 times.
    for attempt in range(3):
        (tmp_path / str(attempt)).mkdir()
        with socket.socket() as probe:  # a free port of our own each attempt (not one inherited in MASTER_PORT)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        result = run_ddp(tmp_path / str(attempt), port, timeout=240)
        assert result is not None, "the DDP run hung past 240 s (its output and logs are printed above)"
        if "EADDRINUSE" not in result.stderr:
            break
    tmp_path = tmp_path / str(attempt)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # rank 1 was launched into rank 0's folder
    run = runs[0]
    ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["iteration"] for r in ranks] == [ITERATIONS, ITERATIONS]
    assert ranks[0]["start"] == ranks[1]["start"]  # DDP broadcast rank 0's initial weights
    assert ranks[0]["end"] == ranks[1]["end"]  # ...and the all-reduced gradients kept them equal
    for net in ("generator", "discriminator"):
        assert ranks[0]["end"][net] != ranks[0]["start"][net]  # they did train
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]  # each rank has its own shard of the data

    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # TensorBoard: rank 0 only
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["iteration"] == ITERATIONS
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"
    rank1_log = run / "train_ddp_process_1.log"  # Hydra's log of the rank-1 process: its own lines only
    assert not rank1_log.exists() or "GLOBAL_RANK: 1" in rank1_log.read_text() and "Trainer.fit" not in rank1_log.read_text()


def test_ddp_with_multirun_is_refused_in_one_line(tmp_path):
    result = run_train("-m", "trainer=ddp", "optimizer.lr=1e-4,2e-4", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "-m (multirun) with DDP" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_ddp_with_a_stray_local_rank_is_refused_in_one_line_before_any_folder(tmp_path):
    # Without the check, rank 0 waits forever in torch's rendezvous for a rank 1 it never starts (no signal stops it).
    result = run_train("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", cwd=tmp_path, timeout=120,
                       env={"LOCAL_RANK": "0"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "LOCAL_RANK=0 is set in the environment without WORLD_SIZE" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()
