"""Start-up time of `python train.py`: process start → the first training iteration begins.

    python benchmarks/startup.py [--runs 3] [KEY=VALUE ...]     # e.g. data=mnist

Each run launches train.py as a user would (in a scratch folder, so outputs/ lands there), with one
extra callback, `FirstBatch`, that prints a wall-clock stamp when the first batch starts and stops
the run after a few batches. Start-up = that stamp - the time just before the process was spawned
(interpreter, imports, Hydra composition and checks, data loading, Trainer setup). Median of `--runs`.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl

ROOT = Path(__file__).resolve().parents[1]
STAMP = "ganexp-first-batch:"


class FirstBatch(pl.Callback):
    """Prints `ganexp-first-batch: <time.time()>` as the first iteration starts."""

    def __init__(self):
        self.done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.done:
            print(f"{STAMP} {time.time():.6f}", flush=True)
            self.done = True


def one_run(overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory(prefix="ganexp-startup-") as scratch:
        cmd = [sys.executable, str(ROOT / "train.py"), *overrides,
               "+callbacks.first_batch._target_=benchmarks.startup.FirstBatch",  # train.py's folder is on sys.path
               "trainer.max_epochs=1", "trainer.limit_train_batches=3"]
        t0 = time.time()
        env = {**os.environ, "GANEXP_PARTS": "callback=benchmarks.startup.FirstBatch"}  # a part of our own: declared
        done = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True, env=env)
    stamp = re.search(rf"{STAMP} ([0-9.]+)", done.stdout)  # anywhere: tqdm's bar shares stdout, with \r
    if done.returncode != 0 or not stamp:
        raise SystemExit(f"train.py failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return float(stamp.group(1)) - t0


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. data=mnist")
    args = parser.parse_args(argv)
    times = [one_run(args.overrides) for _ in range(args.runs)]
    label = " ".join(args.overrides) or "(defaults)"
    print(f"start-up of python train.py {label}: median {statistics.median(times):.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in times)}; load {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    return statistics.median(times)


if __name__ == "__main__":
    main()
