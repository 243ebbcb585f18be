"""A resume keeps every stored setting the command line does not set (docs/FAULTS.md "Resuming: what it may
change"): whole config groups (the option and its contents, empty or not) and top-level keys; and SIGHUP
stops a run as SIGTERM does."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from ganexp.run.resume import register_resolvers, resume_config
from tests.helpers import CONF, FAST, run_train
from tests.helpers.rgb_data import write_all

MACHINE = ("data.root", "data.download", "trainer.devices")  # where the files are, what this machine has


def _defaults() -> dict[str, str | None]:
    chosen = {}
    for entry in OmegaConf.load(CONF / "train.yaml").defaults:
        if isinstance(entry, DictConfig):
            chosen.update({k.removeprefix("optional "): v for k, v in entry.items()})
    return chosen


def _options() -> list[tuple[str, str]]:
    """Every (group, option) of conf/, the default options last of each group (they are cheap)."""
    groups = sorted({str(p.parent.relative_to(CONF)) for p in CONF.rglob("*.yaml") if p.parent != CONF})
    chosen = _defaults()
    return [(g, o) for g in groups for o in sorted((p.stem for p in (CONF / g).glob("*.yaml")),
                                                  key=lambda o: (o == chosen.get(g), o))]


COMPANIONS = {  # what an option needs beside it to make a run at all
    ("data", "image_folder"): ["data.path=DIR", "eval=none"],  # eval=none: their metrics need Inception's weights ("data", "toy"): ["model=toy_mlp"],
    ("model", "dcgan"): ["data=mnist"], ("model", "toy_mlp"): ["data=toy"],
    **{(g, o): ["data.root=DIR/data", "eval=none"] for g, o in [("data", "cifar10"), ("data", "stl10"), ("data", "celeba"),
                                                   ("experiment", "cifar10_dcgan"), ("experiment", "cifar10_hinge_sn")]},
    ("callbacks", "toy"): ["data=toy", "model=toy_mlp"], ("callbacks", "toy_figures"): ["data=toy", "model=toy_mlp"],
    ("trainer", "gpu"): [] if torch.cuda.is_available() else ["trainer.accelerator=cpu"],
    ("trainer", "ddp"): ["trainer.accelerator=cpu", "trainer.devices=2"],
}
SETTINGS = [["log_every=7"], ["eval_every=13"], ["image_every=11"], ["ckpt_every=17"], ["trainer.max_epochs=3"],
            ["trainer.max_time=00:00:05:00"], ["trainer.limit_train_batches=5"], ["trainer.precision=bf16-mixed"],
            ["eval.n=300", "eval.monitor=kid"], ["callbacks=toy", "data=toy", "model=toy_mlp", "callbacks.toy.every=4"],
            ["eval=none", "logger=none", "callbacks=toy", "data=toy", "model=toy_mlp"],  # the run
            ["~callbacks.samples"], ["+trainer.detect_anomaly=true"]]
CASES = [[f"{g}={o}", *COMPANIONS.get((g, o), [])] for g, o in _options()] + SETTINGS


def _compose(out: Path, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={out}", *overrides])


def _checkpoint(run: Path, stored: dict) -> Path:
    """A last.ckpt as far as resume_config reads one (its stored config; the training state is checked later)."""
    path = run / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": stored, "state_dict": {}, "optimizer_states": [], "loops": {}, "epoch": 0,
                "iteration": 0}, path)
    return path


def _made(tmp_path: Path, overrides: list[str]) -> tuple[Path, dict, Path]:
    register_resolvers()
    run = tmp_path / "run"
    made = [o.replace("DIR", str(tmp_path)) for o in overrides]
    if "data.root=DIR/data" in overrides:  # tiny files in torchvision's layouts
        write_all(tmp_path / "data")
    stored = OmegaConf.to_container(_compose(run, made), resolve=True)  # as GANModule stores it
    return run, stored, _checkpoint(run, stored)


def _resumed(out: Path, ckpt: Path, overrides: list[str] = ()) -> dict:
    command = [*overrides, f"ckpt_path={ckpt}"]
    merged, _ = resume_config(_compose(out, command), command)
    return OmegaConf.to_container(merged, resolve=True)


def _without(config: dict, keys) -> dict:
    config = json.loads(json.dumps(config))
    for key in keys:
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node.get(p) or {}
        node.pop(leaf, None)
    return config


@pytest.mark.parametrize("overrides", CASES, ids=[" ".join(c) for c in CASES])
def test_a_resume_without_overrides_composes_the_stored_config(tmp_path, overrides):
    run, stored, ckpt = _made(tmp_path, overrides)
    resumed = _resumed(run, ckpt)
    assert _without(resumed, (*MACHINE, "ckpt_path")) == _without(stored, (*MACHINE, "ckpt_path"))


def test_a_resume_into_a_new_folder_points_the_carried_callbacks_there(tmp_path):
    run, stored, ckpt = _made(tmp_path, ["callbacks=toy", "data=toy", "model=toy_mlp", "eval=none"])
    new = tmp_path / "new"
    resumed = _resumed(new, ckpt)
    callbacks = resumed["callbacks"]
    assert sorted(callbacks) == ["checkpoint", "curves", "samples", "toy"]
    assert (callbacks["toy"]["dirpath"], callbacks["curves"]["dirpath"]) == (str(new), str(new))
    assert callbacks["checkpoint"]["dirpath"] == str(new / "checkpoints")
    assert resumed["trainer"]["default_root_dir"] == str(new) and resumed["eval"] == {}


def test_where_a_resumed_run_writes_never_comes_from_the_checkpoint(tmp_path):
    """A checkpoint someone sent (stored locations elsewhere, a renamed copy of a callback) resumes writing
    into the run's own folder only."""
    run, stored, _ = _made(tmp_path, ["callbacks=toy", "data=toy", "model=toy_mlp"])
    victim = str(tmp_path / "victim")
    for part in (stored["callbacks"]["checkpoint"], stored["callbacks"]["toy"], stored["eval"], stored["logger"]):
        part["dirpath" if "dirpath" in part else "save_dir"] = victim
    stored["trainer"]["default_root_dir"] = victim
    stored["callbacks"]["copy"] = {**stored["callbacks"]["curves"], "dirpath": victim}
    new = tmp_path / "new"
    resumed = _resumed(new, _checkpoint(tmp_path / "sent", stored))
    callbacks = resumed["callbacks"]
    assert [callbacks[k]["dirpath"] for k in ("checkpoint", "toy", "curves", "copy")] == \
        [str(new / "checkpoints"), str(new), str(new), str(new)]
    assert (resumed["eval"]["dirpath"], resumed["logger"]["save_dir"], resumed["trainer"]["default_root_dir"]) == \
        (str(new), str(new), str(new))


@pytest.mark.parametrize("overrides, every, off", [
    (["image_every=3"], {"toy": 3, "samples": 3}, {"eval", "logger"}),  # a carried frequency follows its key
    (["callbacks.samples.every=5"], {"toy": 11, "samples": 5}, {"eval", "logger"}),
    (["eval=default"], {"toy": 11, "samples": 11}, {"logger"}),
    (["callbacks=default", "logger=tensorboard"], {"samples": 11}, {"eval"}),
    (["+callbacks.extra._target_=ganexp.callbacks.samples.SampleGrid", "+callbacks.extra.every=2"],
     {"toy": 11, "samples": 11, "extra": 2}, {"eval", "logger"}),
])
def test_what_the_command_line_sets_wins_inside_a_carried_group(tmp_path, overrides, every, off):
    run, stored, ckpt = _made(tmp_path, ["eval=none", "logger=none", "callbacks=toy", "data=toy", "model=toy_mlp",
                                         "image_every=11"])
    resumed = _resumed(run, ckpt, overrides)
    callbacks = resumed["callbacks"]
    assert {name: c["every"] for name, c in callbacks.items() if name != "checkpoint" and "every" in c} == every
    assert {group for group in ("eval", "logger") if resumed[group] == {}} == off
    assert resumed["image_every"] == (3 if "image_every=3" in overrides else 11)


@pytest.mark.slow
def test_a_run_without_eval_and_logger_resumes_without_them_and_keeps_its_toy_figures(tmp_path):
    args = ["eval=none", "logger=none", "callbacks=toy", "data=toy", "model=toy_mlp", *FAST,
            "trainer.limit_train_batches=4", "image_every=0"]
    assert run_train(*args, cwd=tmp_path).returncode == 0
    run = next(tmp_path.glob("outputs/*/*"))
    figures = sorted(p.name for p in run.glob("*.png"))
    assert {"scatter.png", "decision_surface.png", "feature_space.png"} <= set(figures), figures
    for png in run.glob("*.png"):
        png.unlink()
    ckpt = run / "checkpoints" / "last.ckpt"
    resumed = run_train(f"ckpt_path={ckpt}", "trainer.max_epochs=2", cwd=tmp_path)  # ganexp's printed command + epochs
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(p.name for p in run.glob("*.png")) == figures  # the toy figures again, at the end
    assert not list(run.rglob("events.out.tfevents*"))  # logger=none kept
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "finished" and "final" not in record  # eval=none kept
    checkpoint = torch.load(ckpt, weights_only=True)
    assert checkpoint["iteration"] == 8
    config = checkpoint["hyper_parameters"]
    assert (config["eval"], config["logger"]) == ({}, {}) and "toy" in config["callbacks"]


@pytest.mark.slow
def test_a_closed_terminal_sighup_checkpoints_the_iteration_and_exits_129(tmp_path):
    """The run's terminal goes away mid-training (its controlling pty's master closes: the kernel sends
    SIGHUP, and every later write to the terminal fails with EIO), progress bar on, as a user has it."""
    import fcntl
    import os
    import pty
    import subprocess
    import sys
    import termios
    import time

    from tests.helpers import ROOT

    try:
        master, slave = pty.openpty()
    except OSError:
        pytest.skip("no pseudo-terminals here")

    def own_terminal():  # after setsid (start_new_session): the pty becomes this session's terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    args = ["data=toy", "model=toy_mlp", "eval=none", "logger=none", "trainer.accelerator=cpu", "trainer.max_epochs=50",
            "ckpt_every=20", "image_every=0", "log_every=5"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True, preexec_fn=own_terminal)
    os.close(slave)
    os.set_blocking(master, False)
    deadline, ckpt = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None and ckpt is None:
        try:
            os.read(master, 65536)  # the terminal shows the progress bar
        except (BlockingIOError, OSError):
            pass
        ckpt = next(tmp_path.glob("outputs/*/*/checkpoints/last.ckpt"), None)
        time.sleep(0.05)
    assert ckpt is not None and proc.poll() is None, "no checkpoint was seen while the run trained"
    os.close(master)  # the terminal is gone
    assert proc.wait(timeout=120) == 128 + signal.SIGHUP
    record = json.loads((ckpt.parent.parent / "metrics.json").read_text())
    assert (record["status"], record["signal"]) == ("interrupted", "SIGHUP")
    assert record["reason"] == f"SIGHUP at iteration {record['iteration']}" and record["iteration"] >= 20
    assert torch.load(ckpt, weights_only=True)["iteration"] == record["iteration"]  # the iteration reached


def test_a_sent_checkpoint_cannot_write_elsewhere_through_older_class_names_or_logger_names(tmp_path):
    """Red team: the registry's older spellings of a callback, and a logger name/version that is a path."""
    from ganexp.errors import ConfigError

    run, stored, _ = _made(tmp_path, ["callbacks=toy", "data=toy", "model=toy_mlp"])
    victim = str(tmp_path / "victim" / "checkpoints")
    stored["callbacks"]["checkpoint"] = {"_target_": "ganexp.callbacks.PeriodicCheckpoint", "dirpath": victim,
                                         "every": 1000}
    stored["callbacks"]["odd"] = {"_target_": "ganexp.callbacks.samples.SampleGrid", "every": 5, "dirpath": victim}
    new = tmp_path / "new"
    resumed = _resumed(new, _checkpoint(tmp_path / "sent", stored))
    assert resumed["callbacks"]["checkpoint"]["dirpath"] == str(new / "checkpoints")
    assert resumed["callbacks"]["odd"]["dirpath"] == str(new)
    for key, value in (("name", str(tmp_path / "victim_tb")), ("version", "../escaped"), ("sub_dir", "..")):
        sent = {**stored, "logger": {**stored["logger"], key: value}}
        with pytest.raises(ConfigError, match=f"logger.{key}=.* is not a plain folder name"):
            _resumed(new, _checkpoint(tmp_path / f"sent_{key}", sent))
