"""Bad input → one line naming the key, the value and what is allowed: the whole catalogue, in-process,
against the same check train.py runs before Hydra makes a folder (milliseconds each)."""
from __future__ import annotations

import pytest

from ganexp.errors import ConfigError
from ganexp.sweeps.summary import with_grid
from ganexp.run.validate import check_command_line
from tests.helpers import CONF

BAD_INPUTS = [
    (["loss=nonsaturatingg"], ["loss=nonsaturatingg", "choose one of", "nonsaturating, wgan_gp"]),
    (["model=mlpp"], ["model=mlpp is not an option of model", "dcgan, mlp, mlp_small, toy_mlp"]),
    (["optimizer.lrr=0.1"], ["optimizer.lrr is not a config key", "lr, betas"]),
    (["optimizer.lr=abc"], ["optimizer.lr=abc is not a number"]),
    (["optimizer.lr=0"], ["optimizer.lr=0 is out of range", "> 0"]),
    (["optimizer.lr=-1e-3"], ["optimizer.lr=-0.001 is out of range"]),
    (["optimizer.d.lr=0"], ["optimizer.d.lr=0 is out of range"]),
    (["optimizer.lr=inf"], ["optimizer.lr=inf is not finite"]),
    (["optimizer.g.lr=nan"], ["optimizer.g.lr=nan is not finite"]),
    (["loss.label_smoothing=1.0"], ["loss.label_smoothing=1.0 is out of range", "[0, 1)"]),
    (["loss.label_smoothing=-0.1"], ["loss.label_smoothing=-0.1 is out of range"]),
    (["loss.label_smoothing=nan"], ["loss.label_smoothing=nan is not finite"]),
    (["loss=wgan_gp", "loss.gp_weight=inf"], ["loss.gp_weight=inf is not finite"]),
    (["loss.gp_weight=-1"], ["loss.gp_weight=-1 is out of range", ">= 0"]),
    (["noise.instance_sigma=-0.5"], ["noise.instance_sigma=-0.5 is out of range", ">= 0"]),
    (["noise.instance_sigma=inf"], ["noise.instance_sigma=inf is not finite"]),
    (["noise.instance_sigma_min=-1"], ["noise.instance_sigma_min=-1 is out of range"]),
    (["noise.anneal=cosine"], ["noise.anneal=cosine is not allowed", "none, linear"]),
    (["noise.anneal_epochs=0"], ["noise.anneal_epochs=0 is out of range"]),
    (["noise.anneal_per=batch"], ["noise.anneal_per=batch is not allowed", "epoch, iteration"]),
    (["d_steps=0"], ["d_steps=0 is out of range", ">= 1"]),
    (["d_steps=1.5"], ["d_steps=1.5 is not an integer"]),
    (["noise.latent_dim=0"], ["noise.latent_dim=0 is out of range"]),
    (["noise.latent_dim=2.5"], ["noise.latent_dim=2.5 is not an integer"]),
    (["batch_size=0"], ["batch_size=0 is out of range"]),
    (["batch_size=big"], ["batch_size=big is not an integer"]),
    (["seed=-1"], ["seed=-1 is out of range", "2^32"]),
    (["seed=5000000000"], ["seed=5000000000 is out of range"]),
    (["noise.prior=gaussian"], ["noise.prior=gaussian is not allowed", "normal, uniform"]),
    (["model.generator.init=he"], ["model.generator.init=he is not allowed", "default, xavier, kaiming"]),
    (["model.discriminator.init=he"], ["model.discriminator.init=he is not allowed"]),
    (["model.generator.activation=gelu"], ["model.generator.activation=gelu is not allowed", "leaky_relu"]),
    (["loss=hinge", "loss.label_smoothing=0.1"], ["has no meaning for loss=hinge"]),
    (["loss=wgan_gp", "loss.label_smoothing=0.1"], ["has no meaning for loss=wgan_gp"]),
    (["model=dcgan", "data=toy"], ["model=dcgan needs images"]),
    (["data=toy", "model=toy_mlp", "data.dist=spiral"], ["data.dist=spiral is not allowed", "quadratic, ring, grid"]),
    (["data=image_folder"], ["data=image_folder needs data.path"]),
    (["eval.monitor=fdi"], ["eval.monitor=fdi is not a metric of this data", "fid"]),
    (["data=toy", "model=toy_mlp", "eval.monitor=fid"], ["eval.monitor=fid is not a metric", "swd"]),
    (["eval.features=banana"], ["eval.features=banana is not one of", "auto, classifier, inception"]),
    (["data=toy", "model=toy_mlp", "eval.features=inception"], ["eval.features=inception is for images"]),
    (["eval.n=5"], ["eval.n=5 is out of range", ">= 100"]),
    (["data=toy", "model=toy_mlp", "eval.n=200"], ["eval.n=200 is out of range", ">= 250"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0 is out of range"]),
    (["log_every=0"], ["log_every=0 is out of range"]),
    (["-m", "trainer.strategy=ddp_find_unused_parameters_true"], ["-m (multirun) with DDP"]),
    (["-m", "optimizer.lr=1e-4,-1"], ["optimizer.lr=-1 is out of range"]),
    (["-m", "sweep=lr_smoothing_noise", "loss=hinge"], ["has no meaning for loss=hinge"]),
    (["optimizer.lr=[1"], ["cannot parse the overrides"]),
    (["optimizer.betas=[0.5,2.0]"], ["optimizer.betas[1]=2.0 is out of range", "[0, 1)"]),
    (["optimizer.betas=[-0.1,0.9]"], ["optimizer.betas[0]=-0.1 is out of range"]),
    (["optimizer.betas=[0.5,1.0]"], ["optimizer.betas[1]=1.0 is out of range"]),
    (["optimizer.betas=[0.5,inf]"], ["optimizer.betas[1]=inf is not finite"]),
    (["optimizer.betas=[0.5,nan]"], ["optimizer.betas[1]=nan is not finite"]),
    (["optimizer.betas=0.5"], ["optimizer.betas=0.5 is not a pair"]),
    (["optimizer.betas=[0.5,0.9,0.99]"], ["is not a pair"]),
    (["optimizer=rmsprop", "optimizer.lr=inf"], ["optimizer.lr=inf is not finite"]),
    (["noise.latent_dim=100000000"], ["noise.latent_dim=100000000", "GiB", "more than this machine's"]),
    (["n_fixed=1000000000"], ["n_fixed=1000000000", "GiB", "use smaller sizes"]),
    (["model.generator.hidden=[100000,100000,100000]"], ["model.generator", "GiB"]),
    (["model.discriminator.hidden=[200000,200000]"], ["model.discriminator", "GiB"]),
    (["batch_size=2000000000"], ["batch_size=2000000000", "GiB"]),
    (["data=mnist", "model=dcgan", "model.generator.width=100000"], ["model.generator", "GiB"]),
    # the trainer's arguments are Lightning's rules: checked by building it (no logger, no folder) up front
    (["trainer.max_time=garbage"], ["trainer.max_time=garbage is not a time budget", "DD:HH:MM:SS"]),
    (["trainer.devices=0"], ["cannot build trainer", "devices=0"]),
    (["trainer.limit_train_batches=-1"], ["trainer.limit_train_batches=-1 is out of range", "an integer >= 1"]),
    (["trainer.limit_train_batches=0"], ["trainer.limit_train_batches=0 is out of range", "fraction in (0, 1]"]),
    (["trainer.limit_train_batches=0.0"], ["trainer.limit_train_batches=0.0 is out of range"]),
    (["trainer.limit_train_batches=1.5"], ["trainer.limit_train_batches=1.5 is out of range"]),
    (["trainer.limit_train_batches=nan"], ["trainer.limit_train_batches=nan is not finite"]),
    (["trainer.limit_train_batches=0.0001"],  # digits: 1437 images, 22 batches of 64
     ["trainer.limit_train_batches=0.0001 is 0 of this data's 22 batches per epoch", ">= 0.0455",
      "trainer.limit_train_batches=1"]),
    (["data=toy", "model=toy_mlp", "data.n=1000", "batch_size=100", "trainer.limit_train_batches=0.05"],
     ["limit_train_batches=0.05 is 0 of this data's 10 batches per epoch", ">= 0.1"]),
    (["-m", "trainer.limit_train_batches=1.0,0.01"], ["limit_train_batches=0.01 is 0 of this data's 22 batches"]),
    (["trainer.precision=foo"], ["cannot build trainer", "Precision 'foo' is invalid"]),
    (["trainer.accelerator=tpu"], ["cannot build trainer"]),
    (["ema.decay=1.0"], ["ema.decay=1.0 is out of range", "[0, 1)"]),
    (["ema.decay=nan"], ["ema.decay=nan is not finite"]),
    (["ema.start=-1"], ["ema.start=-1 is out of range"]),
    (["loss.r1_gamma=-1"], ["loss.r1_gamma=-1 is out of range"]),
    (["loss.r1_gamma=inf"], ["loss.r1_gamma=inf is not finite"]),
    (["loss.r1_every=0"], ["loss.r1_every=0 is out of range"]),
    (["model.discriminator.spectral_norm=maybe"], ["model.discriminator.spectral_norm=maybe is not true or false"]),
    (["reuse_fake=1"], ["reuse_fake=1 is not true or false", "reuse_fake=true"]),
    (["reuse_fake=yes"], ["reuse_fake=yes is not true or false"]),
    # folders Hydra would fail to make (OSError: File name too long), refused before it makes any
    ([f"hydra.run.dir=outputs/{'x' * 300}"], ["hydra.run.dir=", "a folder name of 300 bytes", "(NAME_MAX)",
                                             "use a shorter hydra.run.dir"]),
    ([f"hydra.run.dir='outputs/{'é' * 150}'"], ["a folder name of 300 bytes"]),  # bytes, not characters
    ([f"hydra.run.dir={'/'.join(['y' * 200] * 25)}"], ["hydra.run.dir=", "bytes long", "(PATH_MAX)"]),
    (["-m", f"hydra.sweep.dir=sweeps/{'z' * 256}", "seed=0,1"], ["hydra.sweep.dir=", "a folder name of 256 bytes"]),
    # (a sweep job's own folder name is cut to fit NAME_MAX in bytes: tests/run/test_run_folders.py)
    (["trainer.max_time=5"], ["trainer.max_time=5 is not a time budget", "DD:HH:MM:SS"]),
    (["trainer.max_time=00:00:00:00"], ["trainer.max_time=00:00:00:00 is no time to train"]),
    (["trainer.max_time={seconds:-5}"], ["is no time to train"]),
    (["trainer.max_time=1:2"], ["trainer.max_time=1:2 is not a time budget"]),
    (["logger.name=/tmp/elsewhere"], ["logger.name=/tmp/elsewhere is not a plain folder name"]),
    (["logger.version=.."], ["logger.version=.. is not a plain folder name"]),
    (["logger=many", "logger.csv.name=../up"], ["logger.csv.name=../up is not a plain folder name"]),
]
if not __import__("torch").cuda.is_available():  # a machine without a GPU: what trainer=gpu says there
    BAD_INPUTS += [(["trainer=gpu"], ["trainer.accelerator=gpu", "no CUDA GPU", "trainer=cpu"]),
                   (["trainer.accelerator=cuda"], ["trainer.accelerator=cuda", "no CUDA GPU"])]


@pytest.mark.parametrize("args, words", BAD_INPUTS, ids=[" ".join(a)[:80] for a, _ in BAD_INPUTS])
def test_every_bad_input_is_one_line_naming_the_key_the_value_and_what_is_allowed(args, words):
    with pytest.raises(ConfigError) as err:
        check_command_line(with_grid(args, CONF), CONF)
    message = str(err.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("args", [[], ["loss=hinge"], ["data=toy", "model=toy_mlp"], ["optimizer=sgd", "seed=4294967295"],
                                  ["ema.decay=0.999", "model.discriminator.spectral_norm=true", "loss.r1_gamma=10",
                                   "trainer.precision=bf16-mixed"], ["model=dcgan", "model.discriminator.spectral_norm=true"],
                                  ["-m", "sweep=lr_smoothing_noise"], ["model=dcgan", "noise.anneal_per=iteration"]])
def test_good_input_passes(args):
    check_command_line(with_grid(args, CONF), CONF)


@pytest.mark.parametrize("env, devices, refused", [
    ({"LOCAL_RANK": "0"}, "2", True), ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, "[0,1]", True),
    ({"LOCAL_RANK": "0"}, "1", False),  # one process: Lightning runs it as rank 0 of 1
    ({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}, "2", False),  # a rank Lightning (or torchrun) launched
    ({}, "2", False)])
def test_a_ddp_run_over_several_processes_with_a_stray_local_rank_is_refused(monkeypatch, env, devices, refused):
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={devices}"]
    if not refused:
        check_command_line(with_grid(args, CONF), CONF)
        return
    with pytest.raises(ConfigError) as err:
        check_command_line(with_grid(args, CONF), CONF)
    message = str(err.value)
    assert "\n" not in message and f"LOCAL_RANK={env['LOCAL_RANK']}" in message and "without WORLD_SIZE" in message
    assert "unset LOCAL_RANK" in message and "wait for the other 1 forever" in message, message
