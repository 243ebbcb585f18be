"""Host reads of tensor values per iteration of `python train.py`: each is a host-device sync on a GPU.

    python benchmarks/host_reads.py [--data digits|mnist] [--batch 64] [--iters 100] [KEY=VALUE ...]

Runs GANModule through the Trainer that build_trainer makes (progress bar, logger, callbacks as
configured) and counts, by call site, every `.item()`, `.tolist()`, `.cpu()`, `.numpy()` and
bool/float/int conversion of a tensor during the iterations after the first 10. The target is
1/log_every per iteration (GANModule's one read when it logs). Left out: torch.optim reading its
`step` counters, which torch keeps on the CPU (no sync) unless `capturable=True`. Works on a CPU:
the calls are the same on a GPU, where each one waits for the device.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from bench_overhead import compose_config, load_data, quiet  # noqa: E402  (puts the repository on sys.path)
from ganexp.run.build import build_module, build_trainer  # noqa: E402

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
WARMUP = 10
HELPERS = ("/torch/", "apply_func.py")  # a read is charged to the first caller outside these


class ReadCounter(pl.Callback):
    """Counts tensor reads by call site from the end of iteration WARMUP to the end of the last one
    (it is the first callback, so each window edge cuts the other callbacks' hooks at the same place)."""

    def __init__(self):
        self.sites: collections.Counter[str] = collections.Counter()
        self.counting = False
        self.originals = {name: getattr(torch.Tensor, name) for name in READS}

    def _patch(self) -> None:
        for name, original in self.originals.items():
            def read(tensor, *args, _name=name, _original=original, **kwargs):
                if self.counting:
                    self._count(_name)
                return _original(tensor, *args, **kwargs)
            setattr(torch.Tensor, name, read)

    def _count(self, name: str) -> None:
        frames = traceback.extract_stack(limit=10)[:-2]
        if any("torch/optim/" in f.filename for f in frames[-2:]):
            return  # the optimizer's CPU step counters
        site = next((f for f in reversed(frames) if not any(lib in f.filename for lib in HELPERS)), frames[-1])
        self.sites[f"{name} at {site.filename.split('site-packages/')[-1]}:{site.lineno}"] += 1

    def restore(self) -> None:
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)

    def on_train_start(self, trainer, pl_module) -> None:
        self._patch()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.counting = WARMUP - 1 <= batch_idx < trainer.num_training_batches - 1

    def on_train_end(self, trainer, pl_module) -> None:
        self.restore()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["mnist", "digits"], default="digits")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=100, help="counted iterations (after 10 uncounted)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. log_every=10")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ganexp-reads-") as out:
        cfg = compose_config(args.data, args.batch, "cpu", WARMUP + args.iters, Path(out), args.overrides)
        datamodule = load_data(cfg)
        if datamodule is None:
            parser.error(f"no {args.data} data; try --data digits")
        pl.seed_everything(cfg.seed, verbose=False)
        module = build_module(cfg)
        trainer = build_trainer(cfg)
        counter = ReadCounter()
        trainer.callbacks.insert(0, counter)  # first: its batch-end marks the window before the others run
        try:
            with quiet():
                trainer.fit(module, datamodule=datamodule)
        finally:
            counter.restore()
    per_iteration = sum(counter.sites.values()) / args.iters
    print(f"config: data={args.data} batch_size={args.batch} log_every={cfg.log_every} {' '.join(args.overrides)}".rstrip())
    print(f"host reads per iteration: {per_iteration:.3f} (target {1 / cfg.log_every:.3f} = 1/log_every; "
          f"{args.iters} iterations counted)")
    for site, n in counter.sites.most_common():
        print(f"  {n / args.iters:.3f}/iteration  {site}")
    return per_iteration


if __name__ == "__main__":
    main()
