"""Stacked sweeps against one job after another: the design card's 12-job grid (sweep=lr_smoothing_noise),
whole-sweep wall time with `hydra/launcher=stacked` and with the default launcher (sequential: Hydra's basic
launcher, each job composed once), in one run of this script, on toy data (model=toy_mlp) and on digits (model=mlp_small); then the per-iteration time of a stack
of M against M separate runs, in this process (the training step's median).

    python benchmarks/stacked.py runs/stacked                    # both datasets, the default budgets
    python benchmarks/stacked.py runs/stacked --members 12 64    # per-iteration ratios for these stack sizes

Each sweep is a real `python train.py -m ...` into OUT/<data>-<launcher>; the table is printed and written
to OUT/stacked.md. On a machine with a GPU add `--gpu` (trainer=gpu for every run).
"""
from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = {  # name: (overrides, budget)
    "toy": ["data=toy", "model=toy_mlp", "trainer.max_epochs=20"],         # 156 iterations per epoch: 3,120
    "digits": ["data=digits", "model=mlp_small", "trainer.max_epochs=60"],  # 28 iterations per epoch: 1,680
}
LAUNCHERS = {"default": [], "stacked": ["hydra/launcher=stacked"]}


def sweep(out: Path, data: str, launcher: str, gpu: bool, epochs: int | None = None, extra: tuple = ()) -> dict:
    folder = out / f"{data}-{launcher}"
    budget = SWEEPS[data] if epochs is None else [*SWEEPS[data][:-1], f"trainer.max_epochs={epochs}"]
    shutil.rmtree(folder, ignore_errors=True)
    args = [sys.executable, str(ROOT / "train.py"), "-m", "sweep=lr_smoothing_noise", *budget,
            *LAUNCHERS[launcher], "trainer.enable_progress_bar=false", f"hydra.sweep.dir={folder}",
            *(["trainer=gpu"] if gpu else []), *extra]
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, cwd=out)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    rows = list(csv.DictReader(open(folder / "summary.csv")))
    runs = len(list(folder.glob("*/seed=*/events.out.tfevents.*")))
    return {"seconds": seconds, "rows": len(rows), "columns": list(rows[0]) if rows else [], "event_files": runs,
            "finished": sum(r.get("status") == "finished" for r in rows)}


def per_iteration(out: Path, members: int, data: str, gpu: bool) -> tuple[float, float]:
    """Seconds of one training step, members from the sweep's grid: the median of `members` separate runs'
    GANModule.training_step times `members` (one iteration of every run), and the median of the stack's
    StackedGAN.training_step (one iteration of all of them); 160 iterations each, the first 20 left out
    (warm-up). The median of many steps, not a difference of two budgets, so a slower minute of the machine
    moves it little."""
    import statistics

    sys.path.insert(0, str(ROOT))
    from tests.helpers import make_cfg  # the real config, composed in code
    from ganexp.gan.module import GANModule
    from ganexp.gan.stack import StackedGAN
    from ganexp.sweeps.stacked import train_stack
    from train import train

    import torch

    # the sweep's grid (lr x smoothing x σ, conf/sweep/lr_smoothing_noise.yaml), cycled over the members
    grid = [(lr, smoothing, sigma) for sigma in (0, 0.1) for smoothing in (0, 0.1) for lr in (1e-4, 2e-4, 5e-4)]
    jobs = [grid[k % len(grid)] for k in range(members)]
    epochs, batches, warm = 8, 20, 20
    steps = epochs * batches  # per run
    common = [*SWEEPS[data][:2], "eval=none", "image_every=0", "ckpt_every=0", f"trainer.limit_train_batches={batches}",
              f"trainer.max_epochs={epochs}", *(["trainer=gpu"] if gpu else [])]
    cfgs = [make_cfg(out / "steps" / f"{k}", *common, f"optimizer.lr={lr}", f"loss.label_smoothing={smoothing}",
                     f"noise.instance_sigma={sigma}", f"seed={k}") for k, (lr, smoothing, sigma) in enumerate(jobs)]

    def median_step(cls, run) -> float:
        times: list[float] = []
        step = cls.training_step

        def timed(self, *args, **kwargs):
            if gpu:
                torch.cuda.synchronize()
            started = time.perf_counter()
            result = step(self, *args, **kwargs)
            if gpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
            return result

        cls.training_step = timed
        try:
            shutil.rmtree(out / "steps", ignore_errors=True)
            run()
        finally:
            cls.training_step = step
        runs = 1 if cls is StackedGAN else members  # each run's first `warm` steps left out
        assert len(times) == runs * steps, (len(times), runs * steps)
        return statistics.median([t for k in range(runs) for t in times[steps * k + warm: steps * (k + 1)]])

    separate = median_step(GANModule, lambda: [train(cfg) for cfg in cfgs]) * members
    stacked = median_step(StackedGAN, lambda: train_stack(cfgs, [[] for _ in cfgs]))
    return separate, stacked


def layer_times(members: int, sizes: tuple[int, int], batch: int = 64, repeat: int = 200) -> tuple[float, float]:
    """Forward + backward of one Linear layer for `members` members: torch.func.vmap over F.linear with the
    members' weights stacked, against StackedLinear's one baddbmm (what ganexp/gan/stack.py uses); µs each."""
    import torch
    import torch.nn.functional as F
    from torch.func import vmap

    n_in, n_out = sizes
    w = torch.randn(members, n_out, n_in, requires_grad=True)
    b = torch.randn(members, n_out, requires_grad=True)
    x = torch.randn(members, batch, n_in)
    by_vmap = vmap(F.linear)

    def one(f) -> float:
        for _ in range(10):
            f().sum().backward()
        started = time.perf_counter()
        for _ in range(repeat):
            f().sum().backward()
        return (time.perf_counter() - started) / repeat * 1e6

    return (one(lambda: by_vmap(x, w, b)),
            one(lambda: torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    parser.add_argument("--members", nargs="+", type=int, default=[12])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--epochs", type=int, help="trainer.max_epochs of every sweep (default: toy 20, digits 60; "
                        "the trainer's own default is 100)")
    parser.add_argument("--no-steps", action="store_true", help="whole sweeps only")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every sweep, e.g. log_every=10")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["| data | budget | default launcher (s) | stacked (s) | speed-up | job folders / event files / summary rows |",
             "|---|---|---|---|---|---|"]
    for data in args.data:
        basic = sweep(args.out, data, "default", args.gpu, args.epochs, tuple(args.extra))
        stacked = sweep(args.out, data, "stacked", args.gpu, args.epochs, tuple(args.extra))
        assert basic["columns"] == stacked["columns"], (basic["columns"], stacked["columns"])
        budget = " ".join([SWEEPS[data][-1] if args.epochs is None else f"trainer.max_epochs={args.epochs}", *args.extra])
        lines.append(f"| {data} | {budget} | {basic['seconds']:.1f} | {stacked['seconds']:.1f} | "
                     f"{basic['seconds'] / stacked['seconds']:.2f}x | {basic['rows']}/{basic['event_files']}/"
                     f"{basic['finished']} finished vs {stacked['rows']}/{stacked['event_files']}/{stacked['finished']} |")
        print(lines[-1], flush=True)
    lines += ["", "| data | members | separate runs' training_step × members (ms, median) | stack's (ms, median) | ratio |",
              "|---|---|---|---|---|"]
    for data in [] if args.no_steps else args.data:
        for m in args.members:
            separate, stacked = per_iteration(args.out, m, data, args.gpu)
            lines.append(f"| {data} | {m} | {separate * 1e3:.1f} | {stacked * 1e3:.1f} | {separate / stacked:.2f}x |")
            print(lines[-1], flush=True)
    lines += ["", "| layer (in → out), 12 members, batch 64 | vmap(F.linear) µs | StackedLinear (baddbmm) µs |",
              "|---|---|---|"]
    for sizes in () if args.no_steps else ((16, 16), (100, 256), (256, 512), (512, 784)):
        by_vmap, by_bmm = layer_times(12, sizes)
        lines.append(f"| {sizes[0]} → {sizes[1]} | {by_vmap:.0f} | {by_bmm:.0f} |")
        print(lines[-1], flush=True)
    (args.out / "stacked.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
