"""Train a GAN: `python train.py [group=option ...] [key=value ...]` (see conf/train.yaml)."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf


def run_dir(ckpt_path: str | None, default: str) -> str:
    """Resuming from <run>/checkpoints/last.ckpt continues in <run>; otherwise a new folder."""
    return str(Path(ckpt_path).resolve().parent.parent) if ckpt_path else default


OmegaConf.register_new_resolver("ganexp_run_dir", run_dir, replace=True)


def train(cfg: DictConfig, return_module: bool = False):
    """Build the parts from the composed config and fit. Tests call this in process."""
    import pytorch_lightning as pl

    from ganexp.build import build_module, build_trainer

    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # data is already a device tensor
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    return module if return_module else None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from ganexp.errors import ConfigError

    try:
        return train(cfg)
    except ConfigError as err:  # bad input: one line, no traceback (HYDRA_FULL_ERROR=1 for developers)
        print(f"ganexp: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
