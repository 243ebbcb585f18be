"""Real multiruns of train.py on digits: job folders, the summary, failures, re-runs, parallel jobs."""
import csv
import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from pytorch_lightning.callbacks import Callback

from ganexp.run.validate import job_overrides
from tests.helpers import CONF, run_train

NO_EVAL = ["eval=none"] if (CONF / "eval" / "none.yaml").is_file() else []  # metrics cost minutes on 2 cores
FAST = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.enable_progress_bar=false", "log_every=1",
        "ckpt_every=1", *NO_EVAL]
SWEEP_GROUP = "sweep" if "- sweep:" in (CONF / "train.yaml").read_text() else "+sweep"


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml"))


def statuses(sweep_dir: Path) -> dict[str, str]:
    return {d.relative_to(sweep_dir).as_posix(): json.loads((d / "metrics.json").read_text())["status"]
            for d in job_dirs(sweep_dir)}


def summary_rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


# --- fast: the ready-made grids and the launcher configs compose ---------------------------------------------

@pytest.mark.parametrize("name, keys, jobs", [
    ("lr_smoothing_noise", ["optimizer.lr", "loss.label_smoothing", "noise.instance_sigma"], 12),
    ("seeds", ["seed"], 5),
    ("losses", ["loss"], 5),
])
def test_ready_made_sweeps_declare_their_grid(name, keys, jobs):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"{SWEEP_GROUP}={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert list(params) == keys
    assert len(job_overrides([f"{k}={v}" for k, v in params.items()])) == jobs


def test_parallel_launcher_config_runs_one_job_per_gpu_else_per_core():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    import ganexp.sweeps.launch  # noqa: F401  (registers ganexp_parallel_jobs)

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=parallel"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == (torch.cuda.device_count() or os.cpu_count())


def test_slurm_launcher_config_becomes_an_sbatch_script_with_one_gpu_per_task(tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import _make_sbatch_string

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                          f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    (tmp_path / "srun").write_text("#!/bin/sh\n")  # submitit only checks that srun exists
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    folder, base = params.pop("submitit_folder"), set(OmegaConf.structured(BaseQueueConf))
    executor = submitit.AutoExecutor(cluster="slurm", folder=folder, slurm_max_num_timeout=params.pop("max_num_timeout"))
    del params["_target_"]
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})  # as the launcher does
    script = _make_sbatch_string(command="python train.py", folder=folder, **executor._executor.parameters)
    for line in ("--gpus-per-task=1", "--ntasks-per-node=1", "--nodes=1", "--partition=gpu", "--time=240"):
        assert f"#SBATCH {line}\n" in script
    assert f"--output={tmp_path}/.submitit/" in script


def test_a_launcher_whose_plugin_is_missing_says_what_to_install(monkeypatch):
    import importlib.util

    from ganexp.errors import ConfigError
    from ganexp.sweeps.launch import check_launcher

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"hydra/launcher=parallel needs the hydra-joblib-launcher plugin; "
                                          r"install it with: pip install -e '\.\[parallel\]'"):
        check_launcher(["-m", "hydra/launcher=parallel", "seed=0,1"])
    check_launcher(["-m", "seed=0,1"])  # the default launcher needs nothing


# --- slow: real sweeps ------------------------------------------------------------------------------------

class KillJob(Callback):
    """SIGKILLs the whole sweep in job `num` as the iteration after `iteration` starts (the checkpoint of
    `iteration` written, the checkpoint callback running last), once (a marker file remembers it)."""

    def __init__(self, num: int = 2, iteration: int = 2):
        self.num, self.iteration = num, iteration

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        from hydra.core.hydra_config import HydraConfig

        marker = Path(os.environ["GANEXP_TEST_KILL_MARKER"])
        if HydraConfig.get().job.num == self.num and pl_module.iteration == self.iteration and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_interrupted_sweep_of_4_jobs_reruns_into_4_finished_jobs_and_a_4_row_summary(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "optimizer.lr=1e-4,2e-4", "seed=0,1", *FAST, f"hydra.sweep.dir={sweep_dir}",
            "+callbacks.kill._target_=tests.sweeps.test_sweep.KillJob"]
    env = {"GANEXP_TEST_KILL_MARKER": str(tmp_path / "killed"), "GANEXP_PARTS": "callback=tests.sweeps.test_sweep.KillJob"}
    first = run_train(*args, cwd=tmp_path, env=env)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    before = statuses(sweep_dir)
    assert sorted(before.values()) == ["finished", "finished", "running"]  # job 3 of 4 killed at iteration 2
    killed = next(sweep_dir / run for run, status in before.items() if status == "running")
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["iteration"] == 2
    finished = {run: (sweep_dir / run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
                for run, status in before.items() if status == "finished"}

    time.sleep(0.05)  # so that a rewritten checkpoint would get a new mtime
    second = run_train(*args, cwd=tmp_path, env=env)  # the same command
    assert second.returncode == 0, second.stderr[-3000:]
    runs = statuses(sweep_dir)
    assert len(runs) == 4 and set(runs.values()) == {"finished"}
    for run, mtime in finished.items():  # skipped, not retrained
        assert (sweep_dir / run / "checkpoints" / "last.ckpt").stat().st_mtime_ns == mtime
        assert "already finished; skipping" in (sweep_dir / run / "train.log").read_text()
    assert "resuming from" in (killed / "train.log").read_text()
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["iteration"] == 4

    # one folder per configuration, one subfolder per seed, readable names without the seed
    names = sorted(runs)
    assert [n.rsplit("/", 1)[1] for n in names] == ["seed=0", "seed=1", "seed=0", "seed=1"]
    assert all("optimizer.lr=" in n.split("/")[0] and "seed=" not in n.split("/")[0] for n in names)
    rows = summary_rows(sweep_dir)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    metric = list(rows[0])[6]  # run, optimizer.lr, seed, status, reason, iteration, <the ranking metric>
    assert all(math.isfinite(float(r[metric])) for r in rows), rows
    summary = (sweep_dir / "summary.md").read_text()
    assert "## Per configuration (mean ± std over seeds)" in summary and "all 4 jobs finished" in summary
    assert (sweep_dir / "summary.png").stat().st_size > 5000
    assert "all 4 jobs finished" in second.stdout


@pytest.mark.slow
def test_a_failing_job_is_recorded_the_sweep_goes_on_and_exits_1(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_train("-m", "batch_size=32,64,5000,128", *FAST, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 of 4 jobs did not finish (1 failed)" in result.stderr
    rows = summary_rows(sweep_dir)
    assert sorted(r["status"] for r in rows) == ["failed", "finished", "finished", "finished"]
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["batch_size"] == "5000" and "larger than the dataset" in failed["reason"]
    summary = (sweep_dir / "summary.md").read_text()
    assert "| — | 5000 |" in summary and "**failed**: batch_size=5000 is larger than the dataset" in summary
    finished_ranks = [line.split("|")[1].strip() for line in summary.splitlines() if line.endswith("finished |")]
    assert finished_ranks == ["1", "2", "3"]


class Rendezvous(Callback):
    """Every job waits at its first batch until `parties` jobs have arrived: a sequential launcher times out."""

    def __init__(self, parties: int = 2, timeout_s: float = 120):
        self.parties, self.timeout_s = parties, timeout_s

    def on_train_start(self, trainer, pl_module):
        folder = Path(os.environ["GANEXP_TEST_RENDEZVOUS"])
        arrival = {"pid": os.getpid(), "threads": torch.get_num_threads(), "device": str(pl_module.device)}
        (folder / f"{os.getpid()}.json").write_text(json.dumps(arrival))
        deadline = time.time() + self.timeout_s
        while len(list(folder.glob("*.json"))) < self.parties:
            if time.time() > deadline:
                raise TimeoutError(f"only {len(list(folder.glob('*.json')))} of {self.parties} jobs ran at once")
            time.sleep(0.1)


@pytest.mark.slow
def test_parallel_launcher_runs_two_jobs_at_once_with_the_cpu_threads_divided(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    meeting = tmp_path / "rendezvous"
    meeting.mkdir()
    sweep_dir = tmp_path / "sweep"
    result = run_train("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "optimizer.lr=1e-4,2e-4", *FAST,
                       "+callbacks.meet._target_=tests.sweeps.test_sweep.Rendezvous", f"hydra.sweep.dir={sweep_dir}",
                       cwd=tmp_path, env={"GANEXP_TEST_RENDEZVOUS": str(meeting),
                                                     "GANEXP_PARTS": "callback=tests.sweeps.test_sweep.Rendezvous"})
    assert result.returncode == 0, result.stderr[-3000:]
    arrivals = [json.loads(p.read_text()) for p in meeting.glob("*.json")]
    assert len({a["pid"] for a in arrivals}) == 2  # two worker processes, both inside training at once
    expected_threads = max(1, os.cpu_count() // 2)
    assert [a["threads"] for a in arrivals] == [expected_threads] * 2
    assert sorted(statuses(sweep_dir).values()) == ["finished", "finished"]
    assert len(summary_rows(sweep_dir)) == 2


def test_gpu_locks_give_each_job_a_gpu_of_its_own_and_wait_when_all_are_taken(tmp_path, monkeypatch):
    import threading

    from ganexp.sweeps.launch import lock_free_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # lock names are physical ids: other masks see the same locks
    first, held_first = lock_free_gpu(2, tmp_path)
    second, held_second = lock_free_gpu(2, tmp_path)
    assert (first, second) == (0, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu3.lock", "gpu5.lock"]
    got = []
    waiter = threading.Thread(target=lambda: got.append(lock_free_gpu(2, tmp_path, poll_s=0.02)))
    waiter.start()
    time.sleep(0.3)
    assert not got  # both GPUs taken: the third job waits
    held_second.close()  # the second job ends
    waiter.join(timeout=5)
    assert got and got[0][0] == 1
    held_first.close(), got[0][1].close()


def test_parallel_jobs_on_two_gpus_get_one_each_and_half_the_cpu_threads(tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    from hydra.core.hydra_config import HydraConfig

    import ganexp.sweeps.launch as launch

    monkeypatch.setattr(launch, "visible_gpus", lambda: 2)
    monkeypatch.setattr(launch, "GPU_LOCKS", tmp_path)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        jobs = [compose("train", overrides=["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"],
                        return_hydra_config=True) for _ in range(2)]
    previous, threads = HydraConfig.instance().cfg, torch.get_num_threads()
    HydraConfig.instance().set_config(jobs[0])  # as in a job of the sweep
    try:
        with launch.job_resources(jobs[0]), launch.job_resources(jobs[1]):  # two jobs at once
            assert [(j.trainer.accelerator, list(j.trainer.devices)) for j in jobs] == [("gpu", [0]), ("gpu", [1])]
            assert torch.get_num_threads() == 4
            assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu0.lock", "gpu1.lock"]
        with launch.job_resources(jobs[1]):  # the locks went with the jobs
            assert list(jobs[1].trainer.devices) == [0]
    finally:
        torch.set_num_threads(threads)
        HydraConfig.instance().cfg = previous


@pytest.mark.slow
def test_every_job_of_a_ready_made_grid_is_checked_before_the_sweep_starts():
    from ganexp.errors import ConfigError
    from ganexp.sweeps.summary import with_grid
    from ganexp.run.validate import check_command_line

    args = ["-m", f"{SWEEP_GROUP}=lr_smoothing_noise", "seed=0,1", "optimizer.lr=0.1"]
    assert with_grid(args, CONF) == [*args, "loss.label_smoothing=0,0.1", "noise.instance_sigma=0,0.1"]  # CLI wins
    assert with_grid(args[1:], CONF) == args[1:]  # not a multirun
    with pytest.raises(ConfigError, match="has no meaning for loss=hinge"):
        check_command_line(with_grid(["-m", f"{SWEEP_GROUP}=losses", "loss.label_smoothing=0.1"], CONF), CONF)
