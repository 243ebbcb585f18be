"""Each job of a sweep composed once (ganexp/run/compose.py): the pre-run check's compositions are what
Hydra's sweeper and launcher would compose, and a multirun composes each job once."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

from ganexp.run import compose as store
from ganexp.run.validate import check_command_line, job_overrides
from ganexp.sweeps.summary import with_grid
from tests.helpers import CONF, FAST, ROOT

GRID = ["-m", "sweep=lr_smoothing_noise", "seed=0,1", "optimizer.lr=0.1", "hydra.sweep.dir=/tmp/x", "data=toy"]


def test_the_jobs_are_hydras_lists_after_the_hydra_overrides():
    args = with_grid(GRID, CONF)
    overrides = [a for a in args if not a.startswith("-")]
    jobs = job_overrides(overrides)
    hydra_cfg = store.hydra_config(str(CONF), "train", tuple(a for a in overrides if "," not in a))
    hydra_jobs = store.sweep_jobs(overrides, jobs, hydra_cfg)
    assert len(hydra_jobs) == len(jobs) == 2 * 2 * 2  # seed x smoothing x sigma (lr given once on the command line)
    # BasicSweeper's order: the grid's keys first (the command line's lr in its place), then the command line's
    assert hydra_jobs[0] == ["hydra.sweep.dir=/tmp/x", "hydra.mode=MULTIRUN", "optimizer.lr=0.1", "loss.label_smoothing=0",
                             "noise.instance_sigma=0", "sweep=lr_smoothing_noise", "seed=0", "data=toy"]
    assert len({tuple(j) for j in hydra_jobs}) == len(jobs)
    search = store.hydra_config(str(CONF), "train", ("sweep=search",))  # Optuna's ranges: Hydra composes them
    if "optuna" in str(search.sweeper.get("_target_")):
        assert store.sweep_jobs(overrides, jobs, search) == [None] * len(jobs)


def test_a_stored_job_is_what_hydras_load_sweep_config_composes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["-m", "data=toy", "model=toy_mlp", "optimizer.lr=1e-4,2e-4", f"hydra.sweep.dir={tmp_path}", "eval=none"]
    store._store.clear()
    check_command_line(with_grid(args, CONF), CONF)
    assert len(store._store) == 2
    with initialize_config_dir(str(CONF), job_name="train", version_base="1.3"):
        master = GlobalHydra.instance().hydra.compose_config("train", [*args[1:], "hydra.mode=MULTIRUN"],
                                                              run_mode=RunMode.MULTIRUN)  # as hydra.main does
        loader = GlobalHydra.instance().config_loader()
        cached = store.CachingLoad(loader, loader.load_sweep_config)
        for lr in ("1e-4", "2e-4"):
            job = ["data=toy", "model=toy_mlp", f"optimizer.lr={lr}", "eval=none"]
            hydra = loader.load_sweep_config(master, job)
            ours = cached(master, job)
            assert ours is not hydra and OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(hydra)
            assert OmegaConf.is_struct(ours) and ours.hydra.sweep.dir == hydra.hydra.sweep.dir
            assert OmegaConf.get_cache(ours) == OmegaConf.get_cache(master)
            assert cached(master, job) is not ours  # a copy each time: the batch check's and the launch's
        assert OmegaConf.to_yaml(cached(master, [*job, "seed=3"])) == OmegaConf.to_yaml(
            loader.load_sweep_config(master, [*job, "seed=3"]))  # not stored: Hydra composes it


# --- slow: whole multiruns, counted --------------------------------------------------------------------------

DRIVER = """
import runpy, sys
from hydra._internal.config_loader_impl import ConfigLoaderImpl
compose = ConfigLoaderImpl.load_configuration
count = 0
def counted(self, *args, **kwargs):
    global count
    count += 1
    return compose(self, *args, **kwargs)
ConfigLoaderImpl.load_configuration = counted
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print(f"compositions: {count}", flush=True)
"""


def _sweep(tmp_path: Path, name: str, store_on: bool, *launcher: str) -> tuple[int, Path]:
    folder = tmp_path / name
    args = ["-m", "data=toy", "model=toy_mlp", "optimizer.lr=1e-4,2e-4", "eval=none", *FAST, "trainer.limit_train_batches=2",
            *launcher, f"hydra.sweep.dir={folder}"]
    env = {**os.environ, "GANEXP_COMPOSE_STORE": "1" if store_on else "0"}
    result = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return int(re.findall(r"compositions: (\d+)", result.stdout)[-1]), folder


def _written(folder: Path) -> dict:
    """Each job's .hydra files, the sweep folder's name written as <sweep>."""
    return {str(p.relative_to(folder)): p.read_text().replace(str(folder), "<sweep>")
            for p in sorted(folder.glob("*/*/.hydra/*.yaml"))}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=stacked"]], ids=["default", "stacked"])
def test_a_multirun_composes_each_job_once_and_writes_what_hydra_composes(tmp_path, launcher):
    jobs = 2
    count, folder = _sweep(tmp_path, "store", True, *launcher)
    before, plain = _sweep(tmp_path, "plain", False, *launcher)
    # with_grid's composition (the grid of a conf/sweep/ file), the pre-run check's of each job, Hydra's master
    # + hydra.main's two of the master config (Hydra.get_mode composes it once to read hydra.mode, then multirun)
    assert count == 1 + jobs + 2
    assert before == 1 + jobs + 2 + 2 * jobs  # + the batch check's and the launcher's of each job
    written, expected = _written(folder), _written(plain)
    assert len(written) == 3 * jobs and written.keys() == expected.keys()
    for name in written:
        if not name.endswith("hydra.yaml"):  # config.yaml, overrides.yaml
            assert written[name] == expected[name], name
    strip = re.compile(r"\d{4}-\d{2}-\d{2}|\d{2}-\d{2}-\d{2}")  # hydra.run.dir: ${now:...} of each process
    assert {k: strip.sub("<now>", v) for k, v in written.items()} == {k: strip.sub("<now>", v) for k, v in expected.items()}


@pytest.mark.slow
def test_hydras_own_basic_launcher_still_runs_a_sweep(tmp_path):
    count, folder = _sweep(tmp_path, "basic", True, "hydra/launcher=basic")
    assert count == 1 + 2 + 2 + 2 * 2  # Hydra's launcher composes the jobs itself
    assert "_target_: hydra._internal.core_plugins.basic_launcher.BasicLauncher" in (
        next(folder.glob("*/*/.hydra/hydra.yaml")).read_text())
    assert len(list(folder.glob("*/*/metrics.json"))) == 2


def test_the_default_launcher_is_ganexps_sequential_one_and_basic_is_hydras():
    from hydra import compose

    with initialize_config_dir(str(CONF), version_base="1.3"):
        default = compose("train", return_hydra_config=True).hydra.launcher
        basic = compose("train", overrides=["hydra/launcher=basic"], return_hydra_config=True).hydra.launcher
    assert default._target_ == "hydra_plugins.ganexp_basic.sequential_launcher.SequentialLauncher"
    assert basic._target_ == "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
