"""`hydra/launcher=slurm` on a real SLURM cluster (tests/helpers/slurm.py: munged, slurmctld and slurmd of this
machine, accounting off), and what a job does with SLURM's signals."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import ROOT, run_train
from tests.helpers.slurm import Cluster

JOB = ["data=toy", "model=toy_mlp", "trainer.limit_train_batches=50", "eval=none", "trainer.enable_progress_bar=false"]
SHORT, LONG = 2, 500  # epochs of 50 iterations: LONG outlasts two attempts of a one-minute time limit (on a loaded
# machine an attempt trains less: up to 20 attempts)


def _record_of(sweep: Path, override: str) -> Path:
    """The metrics.json of the sweep's job with `override` (the swept keys lead a job folder's name)."""
    return next(p for p in sweep.glob("*/seed=*/metrics.json") if override in p.parent.parent.name.split(","))


def _generator(ckpt: Path) -> dict:
    return {k: v for k, v in torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"].items()
            if k.startswith("generator.")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    if c.why_not():
        pytest.skip(c.why_not())
    try:
        c.start()
    except RuntimeError as err:
        pytest.skip(f"the SLURM daemons did not start here: {str(err).splitlines()[0]}")
    yield c
    c.stop()


@pytest.mark.slow
def test_a_sweep_whose_job_outlasts_its_time_limit_is_requeued_and_ends_equal_to_an_uninterrupted_run(cluster, tmp_path):
    env = {**os.environ, **cluster.env, "OMP_NUM_THREADS": "1"}
    sweep = tmp_path / "sweep"
    reference = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *JOB, f"trainer.max_epochs={LONG}",
                                  f"hydra.run.dir={tmp_path / 'reference'}"], env=env, cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # timeout_min=1: SLURM's SIGUSR2 comes 20-50 s after the start (slurmctld looks every 30 s), its kill after 60-90 s
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *JOB, f"trainer.max_epochs={SHORT},{LONG}",
         "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_task=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=1",
         "hydra.launcher.signal_delay_s=20", "hydra.launcher.max_num_timeout=20", f"hydra.sweep.dir={sweep}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-2000:]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    said = result.stdout + result.stderr  # Hydra's log lines go to stdout
    script = next(sweep.glob(".submitit/*/*_submission.sh")).read_text()  # each job's Python keeps an early SIGUSR2
    assert "-u -m ganexp.run.slurm_job -u -m submitit.core._submit" in script, script
    assert "Bypassing sacct error" not in said  # accounting off: one line, then job states from squeue
    assert said.count("sacct fails on this cluster") == 1, said[-3000:]

    records = {json.loads(p.read_text())["iteration"]: (p.parent, json.loads(p.read_text()))
               for p in sweep.glob("*/seed=*/metrics.json")}
    assert sorted(records) == [SHORT * 50, LONG * 50], {k: v[1].get("interruptions") for k, v in records.items()}
    assert all(r["status"] == "finished" for _, r in records.values())
    long_dir, long_record = records[LONG * 50]
    stops = long_record.get("interruptions", [])
    assert len(stops) >= 2 and all(s["signal"] == "SIGUSR2" for s in stops), long_record  # two requeues at least
    assert [s["iteration"] for s in stops] == sorted(s["iteration"] for s in stops)
    assert len(long_record["resumes"]) == len(stops)  # each attempt after a stop resumed from its last.ckpt
    assert 0 < stops[-1]["iteration"] < LONG * 50  # attempts trained on (one stopped during its setup would not)

    ckpt = long_dir / "checkpoints" / "last.ckpt"
    expected = _generator(next((tmp_path / "reference").glob("checkpoints/last.ckpt")))
    got = _generator(ckpt)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)

    summary = (sweep / "summary.md").read_text()
    assert f"| {SHORT} |" in summary and f"| {LONG} |" in summary and "all 2 jobs finished" in summary


@pytest.mark.slow
def test_a_cancelled_job_is_one_failed_job_of_the_sweep_and_a_rerun_resumes_it(cluster, tmp_path):
    env = {**os.environ, **cluster.env, "OMP_NUM_THREADS": "1"}
    sweep = tmp_path / "sweep"
    command = [sys.executable, str(ROOT / "train.py"), "-m", *JOB, f"trainer.max_epochs={SHORT},150,3",
               "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_task=0",
               "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=5",
               "hydra.launcher.array_parallelism=2", "ckpt_every=500", f"hydra.sweep.dir={sweep}"]
    first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (listing := cluster.run("squeue", "--noheader", "--array", "--format=%i|%T").stdout.split()):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.2)
    array = listing[0].split("_")[0]
    assert f"{array}_2|PENDING" in listing, listing  # job #2 waits for a slot (array_parallelism=2)
    assert cluster.run("scancel", f"{array}_2").returncode == 0  # cancelled before it ever started
    while not list(sweep.glob("*max_epochs=150*/seed=*/checkpoints/last.ckpt")):  # the long job has trained
        assert time.monotonic() < deadline and first.poll() is None, first.stdout.read() if first.poll() else ""
        time.sleep(1)
    assert cluster.run("scancel", f"{array}_1").returncode == 0  # job #1: trainer.max_epochs=150
    said = first.communicate(timeout=300)[0]
    assert first.returncode == 1, said[-3000:]
    failed = [line for line in said.splitlines() if "ended without a result" in line and "[HYDRA]" in line]
    assert len(failed) == 2, said[-3000:]
    assert "CANCELLED" in failed[0] and "trainer.max_epochs=150" in failed[0]
    assert "it never started" in failed[1] and "trainer.max_epochs=3" in failed[1]
    assert "Traceback" not in said, said[-3000:]
    summary = (sweep / "summary.md").read_text()
    assert "**interrupted**: SIGTERM at iteration" in summary and "| finished |" in summary
    assert "**failed**: SLURM job" in summary and "3 jobs" in summary, summary  # the one that never ran counts
    assert "| seed |" not in summary  # its folder holds the config Hydra would have written: seed 0 as the others
    stopped = json.loads(_record_of(sweep, "trainer.max_epochs=150").read_text())
    assert stopped["status"] == "interrupted" and stopped["signal"] == "SIGTERM"  # scancel's SIGTERM: a clean stop

    short = _record_of(sweep, f"trainer.max_epochs={SHORT}")
    before = short.read_bytes()
    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert short.read_bytes() == before  # the finished job was skipped (its job log says so)
    record = json.loads(_record_of(sweep, "trainer.max_epochs=150").read_text())
    assert record["status"] == "finished" and record["iteration"] == 150 * 50 and record["signal"] is None
    assert json.loads(_record_of(sweep, "trainer.max_epochs=3").read_text())["status"] == "finished"
    assert [s["signal"] for s in record["interruptions"]] == ["SIGTERM"] and len(record["resumes"]) == 1


class _Run:
    """What stop_on_signals needs of a module: GANModule.request_stop's contract."""

    interrupted = None
    training_started = True

    def request_stop(self, name: str) -> None:
        self.interrupted = self.interrupted or name


def test_in_a_submitit_job_sigusr2_stops_the_run_and_reaches_submitits_handler_only_afterwards():
    from ganexp.run.signals import hand_over, managed, stop_on_signals

    calls = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))  # submitit's, in a SLURM job
    try:
        assert managed()
        run = _Run()
        with stop_on_signals(run):
            os.kill(os.getpid(), signal.SIGUSR2)
            assert run.interrupted == "SIGUSR2" and calls == []  # the run stops after its iteration; no requeue yet
            os.kill(os.getpid(), signal.SIGUSR2)  # SLURM may signal again: ignored, the checkpoint is under way
            os.kill(os.getpid(), signal.SIGTERM)  # and the time limit's SIGTERM too (its SIGKILL follows anyway)
            assert run.interrupted == "SIGUSR2" and calls == []
        hand_over("SIGUSR2")  # once last.ckpt and metrics.json are written
        assert calls == [signal.SIGUSR2]
        ended = _Run()
        ended.attached, ended.trainer = True, SimpleNamespace(fit_loop=SimpleNamespace(done=True))
        with stop_on_signals(ended):  # the last iteration is done: the final evaluation runs on
            os.kill(os.getpid(), signal.SIGUSR2)
        assert ended.interrupted is None and calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_a_sigusr2_before_submitit_sets_its_handler_is_kept_for_the_run_not_the_end_of_the_job():
    """SLURM may send the time limit's SIGUSR2 up to 60 s early, while submitit is still starting: by default the
    signal ends the process (a job lost without a requeue). Through ganexp.run.slurm_job it is remembered."""
    probe = ["-m", "tests.helpers.submitit_like", "FOLDER", "x y"]
    plain = subprocess.run([sys.executable, "-u", *probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert plain.returncode == -signal.SIGUSR2 and plain.stdout == ""
    job = subprocess.run([sys.executable, "-u", "-m", "ganexp.run.slurm_job", "-u", *probe], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert job.returncode == 0, job.stderr
    assert job.stdout.strip() == "args=['FOLDER', 'x y'] early=['SIGUSR2'] managed=True"
    bad = subprocess.run([sys.executable, "-m", "ganexp.run.slurm_job", "tests.helpers.submitit_like"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.strip() == ("usage: python -m ganexp.run.slurm_job [-u] -m MODULE "
                                                          "[ARG ...] (got tests.helpers.submitit_like)")


def test_a_kept_early_sigusr2_stops_the_run_as_one_that_came_then_and_is_handed_over_afterwards(monkeypatch):
    from ganexp.run import signals

    calls = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))  # submitit's
    monkeypatch.setattr(signals, "_early", ["SIGUSR2"])
    try:
        run = _Run()
        with signals.stop_on_signals(run):  # training under way (a stack's member, a run past its setup)
            assert run.interrupted == "SIGUSR2" and signals._early == [] and calls == []
        setup = _Run()
        setup.training_started = False
        signals._early.append("SIGUSR2")
        with pytest.raises(signals.StoppedBeforeTraining) as stop:  # during setup: at once, as any signal then
            with signals.stop_on_signals(setup):
                pass
        assert stop.value.signal_name == "SIGUSR2" and signal.getsignal(signal.SIGUSR2) is not signals.signal.SIG_DFL
        assert calls == [] and signals._early == []
        outside = _Run()
        signals._early.append("SIGUSR2")
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)  # not a submitit job: nothing was remembered for it
        with signals.stop_on_signals(outside):
            assert outside.interrupted is None
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_outside_slurm_sigusr2_stops_a_run_as_sigterm_does():
    from ganexp.run.signals import managed, stop_on_signals

    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL and not managed()
    run = _Run()
    with stop_on_signals(run):
        os.kill(os.getpid(), signal.SIGUSR2)
    assert run.interrupted == "SIGUSR2" and signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


SLURM_JOB = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "vm"}


@pytest.mark.parametrize("submitit", [True, False])
def test_lightnings_own_slurm_requeue_is_off_only_in_submitits_jobs(submitit, monkeypatch, cfg_factory):
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    from ganexp.run.build import build_trainer

    for key, value in SLURM_JOB.items():
        monkeypatch.setenv(key, value)
    before = signal.signal(signal.SIGUSR2, (lambda *_: None) if submitit else signal.SIG_DFL)
    try:
        trainer = build_trainer(cfg_factory("data=toy", "model=toy_mlp", "eval=none"))
    finally:
        signal.signal(signal.SIGUSR2, before)
    environment = trainer._accelerator_connector.cluster_environment  # what Lightning's signal connector reads
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is (not submitit)


@pytest.mark.parametrize("args, message", [
    (["hydra.launcher.timeout_min=30", "hydra.launcher.signal_delay_s=900"],
     "hydra.launcher.signal_delay_s=900 is more than 480 s for timeout_min=30: submitit would take each time limit"),
    (["++hydra.launcher.timeout_min=30", "+hydra.launcher.signal_delay_s=481"], "is more than 480 s for timeout_min=30"),
    (["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=60"],
     "hydra.launcher.signal_delay_s=60 is not shorter than the time limit (timeout_min=1, 60 s)"),
    (["hydra.launcher.timeout_min=240", "hydra.launcher.signal_delay_s=2761"], "is more than 2760 s for timeout_min=240"),
])
def test_a_signal_delay_that_submitit_would_take_for_a_preemption_is_refused(args, message):
    from ganexp.errors import ConfigError
    from ganexp.sweeps.launch import check_launcher

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_launcher(["-m", "hydra/launcher=slurm", *args])
    check_launcher(["-m", "hydra/launcher=slurm", "hydra.launcher.timeout_min=240", "hydra.launcher.signal_delay_s=2760"])
    check_launcher(["-m", "hydra/launcher=slurm"])  # the defaults: 120 s before 240 min


def test_a_local_run_on_a_machine_with_slurms_commands_keeps_its_one_line_error(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    env = {"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    bad = run_train("data=toy", "model=toy_mlp", "optimizer.lr=-1", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    good = run_train(*JOB, "trainer.max_epochs=1", "trainer.limit_train_batches=2", cwd=tmp_path, env=env)
    assert good.returncode == 0 and "srun" not in good.stderr, good.stderr[-2000:]


def test_with_accounting_on_job_states_come_from_sacct_as_submitit_reads_them(tmp_path, monkeypatch):
    """A cluster with slurmdbd (not started here: it needs a database): a `sacct` that answers as sacct does."""
    from ganexp.sweeps.slurm import Watcher

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sacct").write_text("#!/bin/sh\necho 'JobID|State|NodeList'\necho '41_0|COMPLETED|vm'\n"
                                "echo '41_1|RUNNING|vm'\necho '41_1.batch|RUNNING|vm'\n")
    (fake / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    watcher = Watcher(delay_s=60)
    for job_id in ("41_0", "41_1"):
        watcher.register_job(job_id)
    watcher.update()
    assert watcher.accounting is True
    assert watcher.get_state("41_0", mode="cache") == "COMPLETED" and watcher.is_done("41_0", mode="cache")
    assert watcher.get_state("41_1", mode="cache") == "RUNNING" and not watcher.is_done("41_1", mode="cache")


def test_with_accounting_off_a_job_gone_from_squeue_has_ended(tmp_path, monkeypatch):
    from ganexp.sweeps.slurm import LEFT, Watcher

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sacct").write_text("#!/bin/sh\necho 'Slurm accounting storage is disabled' >&2\nexit 1\n")
    (fake / "squeue").write_text("#!/bin/sh\necho '52_0|CONFIGURING|vm'\necho '52_1|PENDING|'\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    watcher = Watcher(delay_s=60)
    for job_id in ("52_0", "52_1", "52_2"):
        watcher.register_job(job_id)
    watcher.update()
    assert watcher.accounting is False
    assert watcher.get_state("52_0", mode="cache") == "RUNNING"  # booting nodes: not ended
    assert not watcher.is_done("52_1", mode="cache")
    assert watcher.get_state("52_2", mode="cache") == LEFT and watcher.is_done("52_2", mode="cache")


@pytest.mark.parametrize("multirun, rest", [
    (False, ": it resumes from last.ckpt"),
    (True, " with hydra.sweep.dir=<the sweep folder>: finished jobs are skipped, the others resume from last.ckpt")])
def test_a_job_with_no_retries_left_says_in_its_record_how_to_go_on(multirun, rest, tmp_path, capsys):
    from ganexp.cli import requeue
    from ganexp.io.results import read_metrics, update_metrics

    def no_retries(signum, frame):  # submitit's handler once max_num_timeout requeues are used
        raise RuntimeError("max_num_timeout=8 reached")

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    update_metrics(tmp_path, status="interrupted", signal="SIGUSR2", reason="SIGUSR2 at iteration 40")
    before = signal.signal(signal.SIGUSR2, no_retries)
    try:
        record = read_metrics(tmp_path)
        if multirun:
            assert requeue(record, tmp_path, multirun) is None  # the sweep goes on
        else:
            with pytest.raises(SystemExit) as stop:
                requeue(record, tmp_path, multirun)
            assert stop.value.code == 140
    finally:
        signal.signal(signal.SIGUSR2, before)
    reason = read_metrics(tmp_path)["reason"]
    assert reason == ("SIGUSR2 at iteration 40, not requeued (max_num_timeout=8 reached); run the same command "
                      f"again{rest}")
    assert read_metrics(tmp_path)["status"] == "interrupted"
    if not multirun:
        assert capsys.readouterr().err.strip().splitlines() == [f"ganexp: error: {reason}"]
