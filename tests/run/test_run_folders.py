"""One run per folder, and a job is what its overrides say (issue 15, findings 2-4): the folder lock
with real train.py processes, job folder names, finished folders asked for other settings."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from ganexp.errors import ConfigError
from ganexp.run.jobs import check_same_job, job_dir, settings
from ganexp.run.lock import LOCK_FILE, FolderInUse, check_free, folder_lock
from tests.helpers import FAST, ROOT, make_cfg, run_train

PAUSE = {"GANEXP_PARTS": "callback=tests.run.test_run_folders.PauseAt"}
PAUSED = ["+callbacks.pause._target_=tests.run.test_run_folders.PauseAt", "eval=none", *FAST]


class PauseAt:
    """A test callback: after iteration GANEXP_TEST_PAUSE_AT it writes <run>/paused and waits for <run>/go."""

    def __new__(cls):
        from pytorch_lightning.callbacks import Callback

        class _Pause(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if pl_module.iteration == int(os.environ.get("GANEXP_TEST_PAUSE_AT", "-1")):
                    folder = Path(trainer.default_root_dir)
                    (folder / "paused").write_text(str(os.getpid()))
                    deadline = time.time() + 120
                    while not (folder / "go").exists() and time.time() < deadline:
                        time.sleep(0.05)
        return _Pause()


def _start_paused(run: Path, cwd: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run}", *PAUSED], cwd=cwd,
                            env={**os.environ, **PAUSE, "GANEXP_TEST_PAUSE_AT": "5"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((run / "paused").exists() and (run / "paused").read_text()):  # written, not only created
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:] if proc.stderr else ""
        time.sleep(0.05)
    return proc


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_second_run_into_a_live_folder_is_refused_in_one_line_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    first = _start_paused(run, tmp_path)
    try:
        lock = json.loads((run / LOCK_FILE).read_text())
        assert lock["pid"] == first.pid and lock["host"]
        before = _tree(run)
        for extra in ([], ["seed=3"], ["loss=hinge"]):  # the same command, or another experiment: both refused
            second = run_train(f"hydra.run.dir={run}", *PAUSED, *extra, cwd=tmp_path, env=PAUSE, timeout=120)
            assert second.returncode == 2, second.stderr[-2000:]
            line = second.stderr.strip()
            assert "\n" not in line and f"{run} is in use" in line and f"pid {first.pid}" in line, line
            assert _tree(run) == before  # no .hydra/attempts, no train.log line, no metrics change
        (run / "go").write_text("")
        assert first.wait(timeout=120) == 0, first.stderr.read()[-2000:]
    finally:
        first.kill()
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "finished" and record["iteration"] == 22 and record["reason"] is None
    assert not (run / LOCK_FILE).exists()  # released on exit


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_stale_and_the_next_run_takes_it_over(tmp_path):
    run = tmp_path / "run"
    first = _start_paused(run, tmp_path)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == first.pid  # left behind by the dead process
    check_free(run)  # ...and free: the kernel dropped the dead process's flock
    (run / "paused").unlink()
    again = run_train(f"hydra.run.dir={run}", *PAUSED, cwd=tmp_path, env=PAUSE, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"
    assert f"taking over the lock of a run that ended without releasing it (pid {first.pid}" in (run / "train.log").read_text()
    assert not (run / LOCK_FILE).exists()


def test_train_in_process_refuses_a_held_folder_and_leaves_its_record_alone(tmp_path):
    from train import train

    cfg = make_cfg(tmp_path, "eval=none")
    (tmp_path / "metrics.json").write_text('{"status": "running", "note": "the other run\'s"}')
    with folder_lock(tmp_path):  # another open file description: flock conflicts as with another process
        with pytest.raises(FolderInUse, match=f"pid {os.getpid()}"):
            train(cfg, [])
        with pytest.raises(FolderInUse):
            check_free(tmp_path)
        assert json.loads((tmp_path / "metrics.json").read_text())["note"] == "the other run's"
    check_free(tmp_path)  # released


def test_ddp_ranks_other_than_zero_run_in_rank_zeros_folder_without_a_lock(tmp_path, monkeypatch):
    with folder_lock(tmp_path):
        monkeypatch.setenv("LOCAL_RANK", "1")
        check_free(tmp_path)
        with folder_lock(tmp_path):
            pass
        monkeypatch.setenv("LOCAL_RANK", "0")
        with pytest.raises(FolderInUse):
            check_free(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_line(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write in"):
            with folder_lock(tmp_path / "run"):
                pass
    finally:
        tmp_path.chmod(0o700)


@pytest.mark.parametrize("a, b", [
    (["data.path=/data/a"], ["data.path=/data/b"]),
    (["data.path=/x/images"], ["data.path=/y/images"]),  # same last part: the hash tells them apart
    (["data.root=/mnt/one"], ["data.root=/mnt/two"]),
    (["trainer.devices=1"], ["trainer.devices=2"]),
    (["trainer.accelerator=cpu"], ["trainer.accelerator=gpu"]),
    (["model.generator.hidden=[" + ",".join(["512"] * 20) + "]"], ["model.generator.hidden=[" + ",".join(["512"] * 21) + "]"]),
    (["+trainer.gradient_clip_val=1"], ["+trainer.gradient_clip_val=2"]),
    (["loss=hinge"], ["loss=minimax"]),
    (["noise.instance_sigma=0.1"], []),
])
def test_jobs_that_differ_in_any_override_get_different_folders(a, b):
    name_a, name_b = job_dir(a + ["optimizer.lr=1e-4"], 0), job_dir(b + ["optimizer.lr=1e-4"], 0)
    assert name_a != name_b
    for name in (name_a, name_b):
        head, seed = name.rsplit("/", 1)
        assert seed == "seed=0" and "/" not in head and len(head.encode()) <= 255
        assert "optimizer.lr=1e-4" in head


def test_job_folder_names_are_readable():
    assert job_dir(["optimizer.lr=1e-4", "loss.label_smoothing=0.1"], 2) == "loss.label_smoothing=0.1,optimizer.lr=1e-4/seed=2"
    assert job_dir(["seed=1"], 1) == "seed=1"
    assert job_dir(["sweep=lr_smoothing_noise", "hydra/launcher=joblib", "optimizer.lr=1e-4"], 0) == "optimizer.lr=1e-4/seed=0"
    name = job_dir(["data=image_folder", "data.path=/home/me/datasets/faces/"], 0)
    assert name.startswith("data.path=faces~") and ",data=image_folder/seed=0" in name
    long = job_dir([f"+callbacks.x{i}.every={i}" for i in range(40)], 0)
    assert len(long.split("/")[0]) <= 200 and long.endswith("/seed=0")


def test_a_job_is_its_settings_however_they_are_spelled():
    assert settings(["optimizer.lr=1e-4", "loss=hinge"]) == settings(["loss=hinge", "optimizer.lr=0.0001"])
    assert settings(["data.root=/a", "trainer.enable_progress_bar=false", "hydra.sweep.dir=x"]) == {}
    assert settings(["seed=1"]) != settings(["seed=2"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("finished")
    run = cwd / "run"
    result = run_train(f"hydra.run.dir={run}", "optimizer.lr=1e-4", "eval=none", *FAST, cwd=cwd, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return run


@pytest.fixture
def finished_copy(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.slow
@pytest.mark.parametrize("changed, keys", [
    (["loss=hinge", "optimizer.lr=5e-3"], ["loss: (default) → hinge", "optimizer.lr: 0.0001 → 0.005"]),
    (["trainer.max_epochs=2"], ["trainer.max_epochs: 1 → 2"]),
    (["seed=7"], ["seed: (default) → 7"]),
    (["noise.instance_sigma=0.1", "optimizer=rmsprop"], ["noise.instance_sigma", "optimizer: (default) → rmsprop"]),
])
def test_a_finished_folder_asked_for_other_settings_is_refused_listing_the_keys_and_left_as_it_was(finished_copy,
                                                                                                   changed, keys):
    run = finished_copy
    before = _tree(run)
    fast = [o for o in FAST if not any(o.split("=")[0] == c.split("=")[0] for c in changed)]
    lr = [] if any(c.startswith("optimizer.lr") for c in changed) else ["optimizer.lr=1e-4"]
    result = run_train(f"hydra.run.dir={run}", "eval=none", *lr, *fast, *changed, cwd=run.parent, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip()
    assert "\n" not in line and "holds a finished run with other settings" in line, line
    for key in keys:
        assert key in line, line
    assert _tree(run) == before


def test_the_same_finished_job_is_skipped_however_it_is_spelled(finished_copy):
    run = finished_copy
    before = _tree(run)
    again = run_train(f"hydra.run.dir={run}", "optimizer.lr=0.0001", "eval=none", *FAST, cwd=run.parent, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    kept = {k: v for k, v in _tree(run).items() if k != "train.log" and ".hydra/attempts" not in k}
    assert kept == {k: v for k, v in before.items() if k != "train.log"}  # the run itself untouched
    assert "already finished; skipping" in again.stdout


def test_check_same_job_reads_the_stored_overrides_as_data(tmp_path):
    (tmp_path / ".hydra").mkdir()
    for text in ("{a: 1}", "[1, 2]", "- 'key=[unclosed'"):
        (tmp_path / ".hydra" / "overrides.yaml").write_text(text)
        with pytest.raises(ConfigError) as err:
            check_same_job(tmp_path, ["loss=hinge"])
        assert "\n" not in str(err.value) and "another folder" in str(err.value)


def _image_folder(path: Path, shade: int) -> Path:
    path.mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (8, 8), (shade, i * 20, 0)).save(path / f"{i}.png")
    return path


@pytest.mark.slow
def test_a_sweep_over_image_folders_runs_every_job_in_its_own_folder(tmp_path):
    a, b = _image_folder(tmp_path / "x" / "images", 10), _image_folder(tmp_path / "y" / "images", 200)
    sweep = tmp_path / "sweep"
    args = ["-m", f"hydra.sweep.dir={sweep}", "data=image_folder", f"data.path={a},{b}", "data.size=8", "batch_size=4",
            "eval=none", *FAST]
    result = run_train(*args, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = sorted(p.parent for p in sweep.glob("**/metrics.json"))
    assert len(jobs) == 2
    stored = {str(j.relative_to(sweep)): (j / ".hydra" / "overrides.yaml").read_text() for j in jobs}
    assert sum(f"data.path={a}" in text for text in stored.values()) == 1
    assert sum(f"data.path={b}" in text for text in stored.values()) == 1
    assert all("data.path=images~" in name and "enable_progress_bar" not in name for name in stored)
    assert all(json.loads((j / "metrics.json").read_text())["status"] == "finished" for j in jobs)
    assert len((sweep / "summary.csv").read_text().strip().splitlines()) == 1 + 2  # header + both jobs

    rerun = run_train(*args, cwd=tmp_path, timeout=300)  # the same sweep again: every job skipped
    assert rerun.returncode == 0 and rerun.stdout.count("already finished; skipping") == 2, rerun.stdout[-2000:]


@pytest.mark.slow
def test_a_sweep_rerun_into_a_job_folder_with_other_settings_is_refused_before_any_job_runs(tmp_path):
    sweep = tmp_path / "sweep"
    base = ["-m", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job", "eval=none", *FAST]
    assert run_train(*base, "optimizer.lr=1e-3", cwd=tmp_path, timeout=300).returncode == 0
    before = _tree(sweep)
    result = run_train(*base, "optimizer.lr=2e-3", cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip()
    assert "\n" not in line and "optimizer.lr: 0.001 → 0.002" in line, line
    assert _tree(sweep) == before


@pytest.mark.slow
def test_a_sweep_whose_jobs_would_share_a_folder_is_refused_before_it_starts(tmp_path):
    result = run_train("-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweep.subdir=job", "optimizer.lr=1e-3,2e-3",
                       "eval=none", *FAST, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "two jobs of this sweep go to one folder (job)" in result.stderr, result.stderr
    assert not (tmp_path / "sweep").exists()


def test_a_job_folder_name_fits_the_file_system_in_bytes_not_characters():
    from ganexp.run.jobs import MAX_NAME, job_dir

    task = [f'+x{i}="{"ü" * 29}"' for i in range(5)]  # 189 characters, 334 bytes in UTF-8
    name = job_dir(task, 0).split("/")[0]
    assert len(name.encode()) <= MAX_NAME and name.startswith('+x0="üü')
    assert job_dir(task, 0) != job_dir([*task[:4], f'+x4="{"ü" * 28}"'], 0)  # cut, still told apart by the hash
