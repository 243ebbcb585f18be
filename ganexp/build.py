"""Composed config → instantiated parts. The only place that knows the config layout."""
from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ganexp.module import GANModule
from ganexp.noise import InstanceNoise, LatentPrior


def plain(cfg: DictConfig | dict) -> dict[str, Any]:
    """The resolved config as plain Python containers (safe for torch.load(weights_only=True))."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def build_prior(noise: Any) -> LatentPrior:
    return LatentPrior(noise["prior"], noise["latent_dim"])


def build_generator(config: dict):
    return instantiate(config["model"]["generator"])


def build_module(cfg: DictConfig) -> GANModule:
    noise = cfg.noise
    return GANModule(
        generator=instantiate(cfg.model.generator),
        discriminator=instantiate(cfg.model.discriminator),
        loss=instantiate(cfg.loss),
        prior=build_prior(noise),
        instance_noise=InstanceNoise(noise.instance_sigma, noise.instance_sigma_min, noise.anneal, noise.anneal_epochs),
        optimizer_g=instantiate(cfg.optimizer.g),
        optimizer_d=instantiate(cfg.optimizer.d),
        d_steps=cfg.d_steps,
        log_every=cfg.log_every,
        n_fixed=cfg.n_fixed,
        seed=cfg.seed,
        config=plain(cfg),
    )


def build_trainer(cfg: DictConfig):
    from ganexp.callbacks import PeriodicCheckpoint

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if cfg.get("eval"):  # eval=none switches metrics off
        callbacks.append(instantiate(cfg.eval))
    # The checkpoint last, so last.ckpt holds what every other callback did in the same iteration.
    callbacks.sort(key=lambda c: isinstance(c, PeriodicCheckpoint))
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    return instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
