"""Which EMA decay suits a budget: one training run keeps several extra EMA copies of the generator
beside the module's own (`ema.decay`), and scores each at the end with the run's own evaluator (same
fixed latent sample, same n_final, same classifier) into OUT/ema_probe.json.

    GANEXP_PARTS=callback=ema_probe.MultiEMA PYTHONPATH=benchmarks python train.py experiment=mnist_fast \
        ema.decay=0.999 ema.start=1000 +callbacks.multi_ema._target_=ema_probe.MultiEMA \
        '+callbacks.multi_ema.decays=[0.9995,0.9998]' hydra.run.dir=runs/ema_probe/seed0

The copies start as the module's EMA does (a copy of G up to `ema.start`) and cost one lerp each per
iteration, so the module's own EMA score in metrics.json is the 0-extra baseline at nearly the same
iteration count.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytorch_lightning as pl
import torch


class MultiEMA(pl.Callback):
    def __init__(self, decays: list[float]):
        self.decays = [float(d) for d in decays]
        self.copies: list[torch.nn.Module] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.copies = [copy.deepcopy(pl_module.generator).requires_grad_(False) for _ in self.decays]

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        raw = list(pl_module.generator.parameters())
        for decay, ema in zip(self.decays, self.copies):
            if pl_module.iteration <= pl_module.ema_start:
                torch._foreach_copy_(list(ema.parameters()), raw)
            else:
                torch._foreach_lerp_(list(ema.parameters()), raw, 1.0 - decay)

    def on_fit_end(self, trainer, pl_module) -> None:
        from ganexp.metrics.callback import EvalCallback

        scorer = next(c for c in trainer.callbacks if isinstance(c, EvalCallback))
        out = {"iteration": pl_module.iteration,
               "raw": scorer.evaluate(pl_module.generator, pl_module, scorer.n_final)}
        for decay, ema in zip(self.decays, self.copies):
            out[str(decay)] = scorer.evaluate(ema, pl_module, scorer.n_final)
        Path(scorer.dirpath, "ema_probe.json").write_text(json.dumps(out, indent=1))
