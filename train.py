"""Train a GAN: `python train.py [group=option ...] [key=value ...]` (see conf/train.yaml).

The run itself is ganexp/run/lifecycle.py's `train(cfg)`; the command line around it (checks before any
folder is made, one-line errors, exit statuses: 0 finished, 2 bad input, 3 diverged, 129/130/143 stopped
by a signal, 1 other failures) is ganexp/cli.py.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from ganexp import cli
from ganexp.run.lifecycle import train  # noqa: F401 - train(cfg): one run from a composed config, in this process
from ganexp.run.resume import register_resolvers

register_resolvers()  # before @hydra.main composes conf/hydra/default.yaml


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return cli.job(cfg)


if __name__ == "__main__":
    sys.exit(cli.command_line(main, sys.argv[1:]))
