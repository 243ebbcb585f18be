"""Metrics during training: every `every` iterations on `n` samples, at the end on `n_final`.

- Every logger: `metrics/<name>` on the iteration axis; its last point is the final evaluation (on `n_final`
  samples) unless an evaluation on `n` ran at that iteration, so a run that evaluates only at the end has a
  curve too (the HParams entry: ganexp/run/tensorboard.py).
- `checkpoints/best.ckpt`: the weights with the best `monitor` value seen during training.
- metrics.json: `final` and `best` (both scored on `n_final` samples, so they compare),
  `best_iteration`, `monitor`, `protocol` (with the real-vs-real floors).
Only rank 0 evaluates; evaluation runs under a forked RNG, so it never changes training.
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import torch

from ganexp.io import writes
from ganexp.callbacks.base import Periodic
from ganexp.models import eval_mode
from ganexp.io.files import generator_weights, load_weights, read_checkpoint
from ganexp.data.base import quantize
from ganexp.metrics.evaluator import Evaluator
from ganexp.metrics.scores import better
from ganexp.io.results import update_metrics

log = logging.getLogger("ganexp")
EVAL_SEED = 1234  # the same latent sample at every evaluation, so curves move only with G


class EvalCallback(Periodic):
    def __init__(self, dirpath: str, every: int = 1000, n: int = 2000, n_final: int = 10_000,
                 monitor: str = "auto", batch_size: int = 1000, features: str = "auto",
                 inception_weights: str | None = None):
        super().__init__(every)
        self.features, self.inception_weights = features, inception_weights
        self.dirpath, self.n, self.n_final = Path(dirpath), int(n), int(n_final)
        self.best_path = self.dirpath / "checkpoints" / "best.ckpt"
        self.monitor, self.batch_size = monitor, int(batch_size)
        self.best_value: float | None = None
        self.best_iteration: int | None = None
        self.evaluator: Evaluator | None = None
        self.ready: dict[tuple[int, int], dict[str, float]] = {}  # (iteration, n): scores a stack computed in one call

    def state_dict(self) -> dict:  # a resumed run keeps its best
        return {"best_value": self.best_value, "best_iteration": self.best_iteration}

    def load_state_dict(self, state: dict) -> None:
        self.best_value, self.best_iteration = state.get("best_value"), state.get("best_iteration")

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self.evaluator = Evaluator.for_datamodule(pl_module.run.data, device=pl_module.device, log=log.info,
                                                  features=self.features, weights=self.inception_weights)
        if self.monitor == "auto":
            self.monitor = self.evaluator.monitor
        protocol = self.evaluator.protocol(n_eval=self.n, n_final=self.n_final, eval_every=self.every,
                                           floor=self.evaluator.floor(self.n_final),  # the scale of final/best
                                           floor_eval=self.evaluator.floor(self.n),  # of the metrics/ curves
                                           generator=(f"ema (decay {pl_module.ema_decay}, start {pl_module.ema_start})"
                                                      if pl_module.generator_ema is not None else "raw"))
        update_metrics(self.dirpath, monitor=self.monitor, protocol=protocol)

    def periodic(self, trainer, pl_module) -> None:
        if self.evaluator is None:
            return
        scores = self.ready.pop((pl_module.iteration, self.n), None) or self.evaluate(pl_module.eval_generator,
                                                                                       pl_module, self.n)
        self._log(pl_module, scores)
        value = scores.get(self.monitor, math.nan)
        if better(self.monitor, value, self.best_value):
            self.best_value, self.best_iteration = value, pl_module.iteration
            self._save_best(pl_module)
        log.info("iteration %d: %s", pl_module.iteration, _fmt(scores))

    def final(self, trainer, pl_module) -> None:  # not called for a diverged run: nothing worth recording
        if self.evaluator is None:
            return
        final = (self.ready.pop((pl_module.iteration, self.n_final), None)
                 or self.evaluate(pl_module.eval_generator, pl_module, self.n_final))
        best, best_iteration = final, pl_module.iteration
        if self.best_iteration is not None and self.best_path.is_file() and self.best_iteration != pl_module.iteration:
            best_g = copy.deepcopy(pl_module.eval_generator)
            state = read_checkpoint(self.best_path)["state_dict"]  # validated like any file ganexp reads
            load_weights(best_g, generator_weights(state), self.best_path, "generator")
            best, best_iteration = self.evaluate(best_g, pl_module, self.n_final), self.best_iteration
            if not better(self.monitor, best.get(self.monitor, math.nan), final.get(self.monitor)):
                best, best_iteration = final, pl_module.iteration  # on n_final samples the last one wins
                self.best_value, self.best_iteration = final.get(self.monitor), pl_module.iteration
                self._save_best(pl_module)
        if self.ran_at != pl_module.iteration:  # one point per iteration: the n-sample one when it evaluated then
            self._log(pl_module, final)
        update_metrics(self.dirpath, final=final, best=best, best_iteration=best_iteration)
        log.info("final (%d samples): %s", self.n_final, _fmt(final))  # HParams: train.py, from the final record

    @staticmethod
    def _log(pl_module, scores: dict[str, float]) -> None:
        if pl_module.run.logger is not None:
            pl_module.run.logger.log_metrics({f"metrics/{k}": v for k, v in scores.items()}, step=pl_module.iteration)

    def evaluate(self, generator, pl_module, n: int) -> dict[str, float]:
        """Scores of n samples of `generator` on a fixed latent sample, KID's and IS's draws seeded by EVAL_SEED;
        training's RNG is untouched."""
        return self.evaluator.score_many([self.samples(generator, pl_module, n)], seed=EVAL_SEED)[0]

    def samples(self, generator, pl_module, n: int):
        """n samples of `generator` on the fixed latent sample, on the CPU as Evaluator.score takes them."""
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with eval_mode(generator), torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(EVAL_SEED)
            z = pl_module.prior.sample(n, generator=torch.Generator().manual_seed(EVAL_SEED))
            samples = torch.cat([generator(c.to(pl_module.device)) for c in z.split(self.batch_size)])
            if samples.dim() == 4:
                samples = quantize(samples, pl_module.run.data.value_range)
            return samples.cpu()

    def _save_best(self, pl_module) -> None:
        """Weights + config (what sample / evaluate need), written atomically by rank 0 alone."""
        weights = {k: v.clone() for k, v in pl_module.state_dict().items()}  # a stack member's are views (stack.py)
        record = {"state_dict": weights, "hyper_parameters": dict(pl_module.hparams),
                  "iteration": pl_module.iteration, self.monitor: self.best_value}
        writes.replace_with(self.best_path, lambda tmp: torch.save(record, tmp))


def _fmt(scores: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in scores.items())
