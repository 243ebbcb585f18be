"""Framework tax: (a) GANModule through Lightning's Trainer vs (b) the same step as a plain PyTorch loop.

    python benchmarks/bench_overhead.py [--data mnist|digits] [--batch 100] [--iters 300] [--rounds 5]
                                        [--device cpu|cuda] [--warmup 20] [KEY=VALUE ...]

Both sides are built from the same composed config (conf/train.yaml + model=mlp data=… batch_size=…
+ any Hydra overrides given last), start from the same weights and train on the same device-resident
tensor. (a) is exactly what `python train.py` runs: build_module + build_trainer, with the configured
logger, callbacks and progress bar. (b) is the step written by hand, as a careful researcher would:
no_grad for G during the D update, D frozen during the G update, and no logging at all. Rounds
alternate (a, b, b, a, …) in one process, so machine load hits both sides alike; the medians and
their ratio are what to read. Timing windows exclude the first `--warmup` iterations of each round.

Data time: (a) the time Lightning spends in `next(dataloader)` (timed by a profiler that times only
that action); (b) the indexing of the device tensor. Both as a share of the timed window.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from ganexp.config.registry import build  # noqa: E402
from pytorch_lightning.profilers import PassThroughProfiler  # noqa: E402

import train  # noqa: E402,F401  (registers the ganexp_run_dir resolver)
from ganexp.run.build import build_module, build_prior, build_trainer  # noqa: E402
from ganexp.errors import ConfigError  # noqa: E402
from ganexp.gan.losses import gradient_penalty  # noqa: E402
from ganexp.gan.module import GANModule  # noqa: E402
from ganexp.gan.noise import InstanceNoise, add_noise  # noqa: E402


def compose_config(data: str, batch: int, device: str, iterations: int, out: Path, overrides: list[str]):
    accelerator = "gpu" if device == "cuda" else "cpu"
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[
            "model=mlp", f"data={data}", f"batch_size={batch}", f"trainer.accelerator={accelerator}",
            "trainer.max_epochs=1", f"trainer.limit_train_batches={iterations}",
            # (b) does no periodic work, so (a) does it only at the end of a round, outside the window;
            # the logger (every log_every), progress bar and every callback's per-batch hooks stay.
            "ckpt_every=0", "image_every=0", "eval=none",
            f"paths.output_dir={out}", *overrides])


def load_data(cfg):
    """The datamodule with its tensor loaded, or None when the files are missing (MNIST offline)."""
    datamodule = build(cfg.data, "data", key="data")
    try:
        datamodule.setup("fit")
    except ConfigError as err:
        print(f"note: {err}")
        return None
    return datamodule


warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)  # no "GPU available: …" banner every round


@contextlib.contextmanager
def quiet():
    """The progress bar still draws (its cost counts), into /dev/null."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FetchTimer(PassThroughProfiler):
    """A profiler that times one action, `next(dataloader)`, and ignores the rest (near-zero overhead)."""

    ACTION = "[_TrainingEpochLoop].train_dataloader_next"

    def __init__(self):
        super().__init__()
        self.total, self._t0 = 0.0, 0.0

    def start(self, action_name: str) -> None:
        if action_name == self.ACTION:
            self._t0 = time.perf_counter()

    def stop(self, action_name: str) -> None:
        if action_name == self.ACTION:
            self.total += time.perf_counter() - self._t0


class IterationClock(pl.Callback):
    """Marks the end of the last warm-up iteration and of the last iteration (batch ends, so the
    window holds whole iterations: fetch, hooks, step); the fetch time inside that window."""

    def __init__(self, warmup: int, fetch: FetchTimer, device: torch.device):
        self.warmup, self.fetch, self.device = warmup, fetch, device
        self.t0 = self.t1 = self.fetch0 = 0.0
        self.iterations = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1:
            sync(self.device)
            self.t0, self.fetch0 = time.perf_counter(), self.fetch.total
        elif batch_idx >= self.warmup:
            self.iterations += 1
            if batch_idx == trainer.num_training_batches - 1:  # CUDA: wait for the last kernels
                sync(self.device)
            self.t1 = time.perf_counter()

    def result(self) -> tuple[float, float]:
        """(iterations per second, fetch share of the window)."""
        window = self.t1 - self.t0
        return self.iterations / window, (self.fetch.total - self.fetch0) / window


def lightning_round(cfg, module, datamodule, warmup: int, device: torch.device) -> tuple[float, float]:
    """(a): a fresh Trainer from build_trainer (as train.py makes it), plus the clock, for one round."""
    trainer = build_trainer(cfg)
    trainer.profiler = fetch = FetchTimer()  # replaces the default PassThroughProfiler (which does nothing)
    clock = IterationClock(warmup, fetch, device)
    trainer.callbacks.append(clock)
    with quiet():
        trainer.fit(module, datamodule=datamodule)
    return clock.result()


class PlainLoop:
    """(b): the same G, D, loss, prior, optimizers and data tensor, stepped by hand."""

    def __init__(self, cfg, module, data, device: torch.device):
        self.generator = build(cfg.model.generator, "generator", key="model.generator").to(device)
        self.discriminator = build(cfg.model.discriminator, "discriminator", key="model.discriminator").to(device)
        self.generator.load_state_dict(module.generator.state_dict())  # same start as (a)
        self.discriminator.load_state_dict(module.discriminator.state_dict())
        self.opt_g = build(cfg.optimizer.g, "optimizer", key="optimizer.g")(self.generator.parameters())
        self.opt_d = build(cfg.optimizer.d, "optimizer", key="optimizer.d")(self.discriminator.parameters())
        self.loss, self.prior = build(cfg.loss, "loss", key="loss"), build_prior(cfg.noise)
        noise = cfg.noise
        self.instance_noise = InstanceNoise(noise.instance_sigma, noise.instance_sigma_min, noise.anneal,
                                            noise.anneal_epochs)
        self.d_steps, self.batch_size = int(cfg.d_steps), int(cfg.batch_size)
        self.data, self.device = data.to(device), device
        self.epoch = 0

    def batches(self):
        """Shuffled index batches of the device tensor, epoch after epoch (as EpochBatchSampler)."""
        while True:
            order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.epoch))
            for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
                yield order[start:start + self.batch_size]
            self.epoch += 1

    def step(self, real: torch.Tensor) -> None:
        G, D, loss, n = self.generator, self.discriminator, self.loss, len(real)
        sigma = self.instance_noise.sigma(self.epoch)
        for _ in range(self.d_steps):
            with torch.no_grad():
                fake = G(self.prior.sample(n, self.device))
            real_logits, fake_logits = D(add_noise(real, sigma)), D(add_noise(fake, sigma))
            d_loss = loss.d(real_logits, fake_logits)
            if loss.gp_weight:
                alpha = torch.rand((len(real),) + (1,) * (real.dim() - 1), device=real.device)
                d_loss = d_loss + loss.gp_weight * gradient_penalty(D, real[None], fake[None], alpha[None])[0]
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        D.requires_grad_(False)  # the G update needs no gradients for D's weights
        g_loss = loss.g(D(add_noise(G(self.prior.sample(n, self.device)), sigma)))
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        D.requires_grad_(True)

    def round(self, warmup: int, iters: int) -> tuple[float, float]:
        batches, fetch = self.batches(), 0.0
        for i in range(warmup + iters):
            if i == warmup:
                sync(self.device)
                t0 = time.perf_counter()
            f0 = time.perf_counter()
            real = self.data[next(batches).to(self.device, non_blocking=True)]
            if i >= warmup:
                fetch += time.perf_counter() - f0
            self.step(real)
        sync(self.device)
        window = time.perf_counter() - t0
        return iters / window, fetch / window


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"
    except OSError:
        return "unknown"


def build_side(cfg, datamodule, like: GANModule | None, device: torch.device):
    """A GANModule from `cfg`, with the weights of `like` (every side starts from the same weights)."""
    module = build_module(cfg)
    if like is not None:
        module.load_state_dict(like.state_dict())
    return lambda warmup, iters: lightning_round(cfg, module, datamodule, warmup, device)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["mnist", "digits"], default="mnist")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--iters", type=int, default=300, help="timed iterations per round and side")
    parser.add_argument("--warmup", type=int, default=20, help="untimed iterations at the start of each round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--compare", action="append", default=[], metavar="OVERRIDES",
                        help="one more (a) side with these extra overrides, e.g. --compare optimizer.fused=true "
                             "(repeatable; several overrides in one side: quote them, space-separated)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every side, e.g. optimizer.lr=1e-3")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    data, n_batches = args.data, args.warmup + args.iters

    with tempfile.TemporaryDirectory(prefix="ganexp-bench-") as out:
        def compose_side(extra: list[str]):
            return compose_config(data, args.batch, args.device, n_batches, Path(out), [*args.overrides, *extra])

        cfg = compose_side([])
        datamodule = load_data(cfg)
        if datamodule is None and data != "digits":
            data = "digits"
            print("note: falling back to --data digits")
            cfg = compose_side([])
            datamodule = load_data(cfg)
        if len(datamodule.train_data) < n_batches * args.batch:
            parser.error(f"--warmup + --iters = {n_batches} batches is more than one epoch of "
                         f"{data} ({len(datamodule.train_data) // args.batch}); lower them")
        pl.seed_everything(cfg.seed, verbose=False)
        module = build_module(cfg)
        sides = {"(a) lightning": lambda warmup, iters: lightning_round(cfg, module, datamodule, warmup, device),
                 "(b) plain": PlainLoop(cfg, module, datamodule.train_data, device).round}
        for extra in args.compare:
            sides[f"(a) [{extra}]"] = build_side(compose_side(extra.split()), datamodule, module, device)

        print(f"device: {machine(device)}")
        print(f"versions: torch {torch.__version__}, lightning {pl.__version__}, python {platform.python_version()}")
        print(f"config: model=mlp data={data} batch_size={args.batch} {' '.join(args.overrides)}".rstrip())
        print(f"rounds: {args.rounds} x {args.iters} timed iterations per side (+{args.warmup} warm-up)")
        print(f"load before: {load_average()}")
        speeds = {label: [] for label in sides}
        shares = {label: [] for label in sides}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]  # a b | b a | …: drift hits every side
            for label in order:
                speed, share = sides[label](args.warmup, args.iters)
                speeds[label].append(speed), shares[label].append(share)
            row = "   ".join(f"{label} {speeds[label][-1]:.2f} it/s" for label in sides)
            print(f"round {r + 1}: {row}   ratio {speeds['(a) lightning'][-1] / speeds['(b) plain'][-1]:.3f}",
                  flush=True)

    median = {label: statistics.median(v) for label, v in speeds.items()}
    med_a, med_b = median["(a) lightning"], median["(b) plain"]
    ratio = med_a / med_b
    print(f"load after: {load_average()}")
    for label, value in median.items():
        vs_b = "" if label in ("(a) lightning", "(b) plain") else f"; vs (b) {value / med_b:.3f}, vs (a) {value / med_a:.3f}"
        print(f"median {label}: {value:.2f} it/s ({1000 / value:.2f} ms/it){vs_b}")
    per_round = [a / b for a, b in zip(speeds["(a) lightning"], speeds["(b) plain"])]
    print(f"ratio (a)/(b): {ratio:.3f}  (per-round ratios: {', '.join(f'{x:.3f}' for x in per_round)}; "
          f"their median {statistics.median(per_round):.3f})")
    print(f"data share (a): {100 * statistics.median(shares['(a) lightning']):.2f} % of an iteration in next(dataloader)")
    print(f"data share (b): {100 * statistics.median(shares['(b) plain']):.2f} % of an iteration indexing the tensor")
    return ratio


if __name__ == "__main__":
    main()
