"""The modern GAN toolbox on equal budgets: `experiment=mnist_fast` alone and with EMA, spectral norm,
R1, bf16 autocast, reusing D's fake batch for G, and a combination, each trained for the same wall-clock minutes with the same seed,
scored by the same metric (FID in ganexp's MNIST classifier features, its hash printed).

    python benchmarks/toolbox.py runs/toolbox --minutes 10 --seeds 0 1 2 --only recipe no_ema   # BENCHMARKS.md
    python benchmarks/toolbox.py runs/toolbox --minutes 2 --only recipe sn r1     # a quick look

Each variant is a real `python train.py` run (its folder under OUT/<variant>/seed<s>); the table
(mean ± std over seeds of final FID, coverage, iterations reached) is printed and written to
OUT/toolbox.md. Set GANEXP_DATA_DIR to the folder holding MNIST/raw.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_EMA = ["ema.decay=0"]  # the recipe before issue 17: the single options were measured against it
VARIANTS = {
    "recipe": [],  # experiment=mnist_fast as it is: EMA 0.9995 from iteration 1000
    "no_ema": NO_EMA,
    "ema0.999": ["ema.decay=0.999"],
    "sn": [*NO_EMA, "model.discriminator.spectral_norm=true"],
    "r1": [*NO_EMA, "loss.r1_gamma=1.0", "loss.r1_every=16"],
    "bf16": [*NO_EMA, "trainer.precision=bf16-mixed"],
    "reuse": [*NO_EMA, "reuse_fake=true"],
    "recipe+bf16": ["trainer.precision=bf16-mixed"],
    "recipe+reuse": ["reuse_fake=true"],
}


def run(out: Path, name: str, seed: int, minutes: float, extra: list[str]) -> dict:
    folder = out / name / f"seed{seed}"  # no "=": Hydra would read it as an override
    if not (folder / "metrics.json").is_file() or json.loads((folder / "metrics.json").read_text()).get("status") != "finished":
        budget = time.strftime("00:%H:%M:%S", time.gmtime(minutes * 60))
        args = [sys.executable, str(ROOT / "train.py"), "experiment=mnist_fast", f"seed={seed}",
                f"trainer.max_time={budget}", "trainer.enable_progress_bar=false", "eval_every=0",
                f"hydra.run.dir={folder}", *VARIANTS[name], *extra]
        started = time.time()
        subprocess.run(args, cwd=ROOT, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"{name} seed {seed}: {time.time() - started:.0f} s", flush=True)
    record = json.loads((folder / "metrics.json").read_text())
    return {"status": record.get("status"), "fid": (record.get("final") or {}).get("fid"),
            "coverage": (record.get("final") or {}).get("coverage"), "iteration": record.get("iteration"),
            "classifier": ((record.get("protocol") or {}).get("classifier") or {}).get("sha256", "?")[:12]}


def _cell(values: list[float], fmt: str = ".1f") -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{statistics.fmean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    rows, hashes = [], set()
    runs = {(seed, name): run(args.out, name, seed, args.minutes, args.overrides)  # seed by seed: a slower hour
            for seed in args.seeds for name in args.only}                          # of the machine hits all variants
    for name in args.only:
        results = [runs[seed, name] for seed in args.seeds]
        done = [r for r in results if r["status"] == "finished" and r["fid"] is not None]
        hashes |= {r["classifier"] for r in done}
        rows.append(f"| {name} | {' '.join(VARIANTS[name]) or '(the recipe)'} | {_cell([r['fid'] for r in done])} "
                    f"| {_cell([r['coverage'] for r in done], '.0f')} | {_cell([r['iteration'] for r in done], '.0f')} "
                    f"| {len(done)}/{len(results)} |")
    table = "\n".join([f"{args.minutes:g} minutes per run, seeds {args.seeds}, classifier {', '.join(sorted(hashes))}", "",
                       "| variant | overrides | FID | coverage | iterations | finished |", "|---|---|---|---|---|---|", *rows])
    print(table)
    (args.out / "toolbox.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
