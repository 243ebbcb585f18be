"""torch.compile of G and D on CPU against eager: the `experiment=mnist_fast` GAN step as a plain loop
(fp32, the recipe's networks, loss, optimizers and batch), compile time included and excluded.

    python benchmarks/compile_probe.py [--iters 300] [--rounds 2] [KEY=VALUE ...]

The batch is a fixed random tensor of MNIST's shape (speed only: no dataset needed). Prints eager and
compiled it/s (medians over rounds, after warm-up), the compile time (the first compiled iterations
minus eager's time for as many), and how many iterations a 10-minute budget reaches each way.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from ganexp.run.build import build_module  # noqa: E402
from ganexp.run.resume import register_resolvers  # noqa: E402

WARMUP = 5  # compiled: the first calls compile (forward, then backward graphs)


def step(g, d, opt_g, opt_d, loss, prior, real, draws):
    fake = g(prior.sample(len(real), "cpu", draws))
    d_loss = loss.d(d(real), d(fake.detach()))
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    d.requires_grad_(False)
    g_loss = loss.g(d(g(prior.sample(len(real), "cpu", draws))))
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    d.requires_grad_(True)


def run(cfg, compiled: bool, iters: int) -> tuple[float, float]:
    """(seconds of the first WARMUP iterations, it/s of the next `iters`)."""
    module = build_module(cfg)
    g, d = module.generator, module.discriminator
    opt_g, opt_d = module.optimizer_g(g.parameters()), module.optimizer_d(d.parameters())
    if compiled:
        g, d = torch.compile(g), torch.compile(d)
    real = torch.rand(int(cfg.batch_size), *cfg.data.shape) * 2 - 1
    draws = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for _ in range(WARMUP):
        step(g, d, opt_g, opt_d, module.loss, module.prior, real, draws)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(iters):
        step(g, d, opt_g, opt_d, module.loss, module.prior, real, draws)
    return first, iters / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    register_resolvers()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=mnist_fast", "paths.output_dir=/nonexistent", *args.overrides])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {cfg.batch_size}, "
          f"G {list(cfg.model.generator.hidden)}, D {list(cfg.model.discriminator.hidden)}")
    results = {False: [], True: []}
    for _ in range(args.rounds):  # alternating, so machine load hits both alike
        for compiled in (False, True):
            torch._dynamo.reset()
            results[compiled].append(run(cfg, compiled, args.iters))
    eager = statistics.median(r[1] for r in results[False])
    fast = statistics.median(r[1] for r in results[True])
    compile_s = statistics.median(r[0] for r in results[True]) - WARMUP / eager
    print(f"eager: {eager:.1f} it/s; compiled: {fast:.1f} it/s ({fast / eager:.3f}x); compile time ~{compile_s:.1f} s "
          f"(first round {results[True][0][0]:.1f} s for {WARMUP} iterations)")
    print(f"10 minutes: eager {600 * eager:,.0f} iterations, compiled {max(0.0, 600 - compile_s) * fast:,.0f}")


if __name__ == "__main__":
    main()
