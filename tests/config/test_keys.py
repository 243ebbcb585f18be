"""ganexp/config/keys.py: the one table of what kind each config key is, and the modules that read it."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from ganexp.sweeps import compare

from ganexp.run import jobs, resume, tensorboard

from ganexp.config import keys
from ganexp.errors import ConfigError
from ganexp.config.keys import DISPLAY, EXPERIMENT, HPARAMS, MACHINE_LOCAL, PLUMBING, STACKABLE, STACKABLE_KIND
from ganexp.run.resume import register_resolvers, resume_config
from tests.helpers import CONF
from tests.run.test_resume_settings import _checkpoint, _compose


def test_each_kind_has_its_members():
    assert keys.keys_of(EXPERIMENT, top=True) == ("model", "data", "loss", "optimizer", "noise", "seed", "batch_size",
                                                  "d_steps", "n_fixed", "ema", "reuse_fake", "augment")
    assert keys.keys_of(MACHINE_LOCAL) == ("data.root", "data.download", "trainer.enable_progress_bar", "paths")
    assert keys.keys_of(DISPLAY) == ("log_every", "image_every", "trainer.enable_progress_bar")
    assert keys.keys_of(PLUMBING) == ("ckpt_path", "init_from", "paths", "hydra", "sweep")
    assert STACKABLE == keys.keys_of(STACKABLE_KIND) == (
        "optimizer.lr", "optimizer.g.lr", "optimizer.d.lr", "loss.label_smoothing", "loss.gp_weight", "loss.r1_gamma",
        "noise.instance_sigma", "noise.instance_sigma_min", "noise.anneal", "noise.anneal_epochs", "noise.anneal_per",
        "seed", "data.seed")
    assert keys.keys_of(HPARAMS) == (
        "optimizer.g.lr", "optimizer.d.lr", "optimizer.betas", "d_steps", "batch_size", "loss.label_smoothing",
        "noise.instance_sigma", "noise.instance_sigma_min", "noise.anneal", "noise.anneal_epochs", "noise.prior",
        "noise.latent_dim", "loss.gp_weight", "loss.r1_gamma", "ema.decay", "seed", "trainer.max_epochs",
        "trainer.precision")


def test_the_modules_lists_are_the_tables():
    assert resume.EXPERIMENT == keys.keys_of(EXPERIMENT, top=True)
    assert resume.FREE == ("data.root", "data.download")
    assert set(resume.NOT_SETTINGS) == {"ckpt_path", "init_from", "paths", "hydra", "sweep"}
    assert jobs.DISPLAY == ("trainer.enable_progress_bar",)
    assert jobs.NOT_COMPARED == ("data.root", "data.download", "trainer.enable_progress_bar")
    assert set(jobs.IGNORED) == {"seed", "sweep", "ckpt_path", "init_from", "paths", "hydra"}
    assert tensorboard.KEYS == keys.keys_of(HPARAMS)
    assert compare.NOT_OVERRIDES == ("ckpt_path", "paths", "hydra", "sweep")  # init_from is a parameter there


def test_the_most_specific_entry_wins_and_covers_the_keys_below_it():
    assert keys.kind("model.generator.hidden") == {EXPERIMENT}
    assert keys.kind("data.root") == {MACHINE_LOCAL}
    assert keys.kind("data.seed") == {EXPERIMENT, STACKABLE_KIND}
    assert keys.kind("paths.output_dir") == {MACHINE_LOCAL, PLUMBING}
    assert keys.kind("hydra/launcher") == {PLUMBING}
    assert keys.kind("trainer.max_time") == frozenset() and keys.kind("eval.n") == frozenset()
    assert keys.kind("datas") == frozenset()  # a prefix is a dotted key, not a string prefix
    with pytest.raises(ValueError, match="not a kind"):
        keys.keys_of("experimental")


def test_every_stackable_key_is_an_experiment_key():
    assert all(keys.is_kind(k, EXPERIMENT) for k in STACKABLE)


def test_no_key_is_both_machine_local_and_experiment():
    assert not any({EXPERIMENT, MACHINE_LOCAL} <= e.kinds for e in keys.TABLE.values())
    assert all(not keys.is_kind(k, EXPERIMENT) for k in keys.keys_of(MACHINE_LOCAL))


def test_hparams_columns_are_numbered_once_each():
    columns = [e.column for e in keys.TABLE.values() if HPARAMS in e.kinds]
    assert sorted(columns) == list(range(len(columns)))
    assert all((e.column is None) == (HPARAMS not in e.kinds) for e in keys.TABLE.values())


def _stored(tmp_path, overrides=()):
    register_resolvers()
    run = tmp_path / "run"
    stored = OmegaConf.to_container(_compose(run, list(overrides)), resolve=True)
    return run, _checkpoint(run, stored)


def _resume(run, ckpt, overrides):
    command = [*overrides, f"ckpt_path={ckpt}"]
    merged, _ = resume_config(_compose(run, command), command)
    return merged


@pytest.mark.parametrize("override", ["seed=5", "batch_size=32", "d_steps=2", "optimizer.lr=1e-3", "data.seed=7",
                                      "loss.label_smoothing=0.1", "noise.latent_dim=8", "model.generator.hidden=[8]"])
def test_a_resume_refuses_a_changed_experiment_key(tmp_path, override):
    assert keys.is_kind(override.split("=")[0], EXPERIMENT)
    run, ckpt = _stored(tmp_path)
    with pytest.raises(ConfigError, match="continues its experiment"):
        _resume(run, ckpt, [override])


@pytest.mark.parametrize("made, override", [(["data=mnist"], "data.root=/elsewhere"),
                                            (["data=mnist"], "data.download=false"),
                                            ([], "trainer.enable_progress_bar=false")])
def test_a_resume_accepts_a_changed_machine_local_key(tmp_path, made, override):
    key, _, value = override.partition("=")
    assert keys.is_kind(key, MACHINE_LOCAL)
    run, ckpt = _stored(tmp_path, made)
    merged = _resume(run, ckpt, [*made, override])  # the same data option, another place for its files
    assert str(OmegaConf.select(merged, key)).lower() == value.lower()


def test_conf_has_every_experiment_key():
    config = OmegaConf.load(CONF / "train.yaml")
    groups = {"model", "data", "loss", "optimizer", "noise", "augment"}  # chosen in the defaults list
    assert all(k in config or k in groups for k in keys.keys_of(EXPERIMENT, top=True))
