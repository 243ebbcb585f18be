"""The five seed recipes, each claim checked with numbers: docs/RESULTS.md is this script's output.

    python benchmarks/recipes.py OUT [--run] [--only NAME ...]

`--run` trains every run below into OUT/<name> (one after another; about 30 minutes on 2 CPU cores,
MNIST from $GANEXP_DATA_DIR) and records each wall time in OUT/<name>/wall_seconds. Without it, the
runs already in OUT are read. Then it prints a markdown table per claim: D accuracy with instance noise
vs without, D's real score with label smoothing 0.1 vs 0, the generator's early gradient norm under
the minimax vs the non-saturating loss, the toy samples' distance to the true quadratic, and the
metrics of every run (with the real-vs-real floor). The budgets are short of the tutorials' own (100 to
2,000 epochs): the table says what each run had.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ganexp.sweeps.compare import markdown_table  # noqa: E402
from ganexp.metrics.scores import IMAGE_METRICS  # noqa: E402

QUIET = ["trainer.enable_progress_bar=false"]
RUNS = {  # name: overrides; pairs differ in exactly the one setting their claim is about
    "noise_on": ["experiment=instance_noise", "trainer.max_epochs=3"],
    "noise_off": ["experiment=instance_noise", "trainer.max_epochs=3", "noise.instance_sigma=0"],
    "vanilla": ["experiment=vanilla_gan", "trainer.max_time=00:00:10:00", "trainer.max_epochs=-1"],
    "toy": ["experiment=toy_quadratic", "trainer.max_epochs=260"],
    "smooth_01": ["experiment=label_smoothing", "trainer.max_epochs=10"],
    "smooth_0": ["experiment=label_smoothing", "trainer.max_epochs=10", "loss.label_smoothing=0"],
    "orig_ns": ["experiment=original_gan", "trainer.max_epochs=5"],
    "orig_mm": ["experiment=original_gan", "trainer.max_epochs=5", "loss=minimax"],
    "mnist_fast": ["experiment=mnist_fast"],
}


def run(out: Path, names: list[str]) -> None:
    for name in names:
        folder = out / name
        if (folder / "metrics.json").is_file():  # train.py would skip or resume it: its wall time would be wrong
            print(f"recipes: {folder} holds a run already; kept (delete it to train again)", file=sys.stderr)
            continue
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(ROOT / "train.py"), *RUNS[name], *QUIET,
                               f"hydra.run.dir={folder}"], cwd=ROOT)
        if done.returncode != 0:
            sys.exit(f"recipes: {name} exited {done.returncode}; see {folder}/train.log")
        (folder / "wall_seconds").write_text(f"{time.perf_counter() - start:.1f}\n")


def curves(folder: Path) -> list[dict[str, float]]:
    with open(folder / "curves.csv") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def mean_of(rows: list[dict], tag: str) -> float:
    values = [r[tag] for r in rows if tag in r and math.isfinite(r[tag])]
    return statistics.fmean(values) if values else math.nan


def last_epoch(rows: list[dict]) -> list[dict]:
    """The rows logged during the last (whole or partial) epoch."""
    end = rows[-1]["epoch"]
    return [r for r in rows if r["epoch"] > math.ceil(end) - 1] or rows[-1:]


def fmt(value, digits: int = 4) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.{digits}g}"
    return "—"


def table(header: list[str], rows: list[list]) -> str:
    return "\n".join(markdown_table(header, [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]))


def record(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    wall = folder / "wall_seconds"
    metrics["wall"] = float(wall.read_text()) if wall.is_file() else math.nan
    return metrics


def report(out: Path) -> str:
    have = {name for name in RUNS if (out / name / "metrics.json").is_file()}
    parts = []
    if {"noise_on", "noise_off"} <= have:
        rows = []
        for name in ("noise_on", "noise_off"):
            all_rows = curves(out / name)
            last = last_epoch(all_rows)
            sigmas = [r["noise/sigma"] for r in all_rows]
            label = f"σ {fmt(sigmas[0], 2)} → {fmt(sigmas[-1], 2)}" if max(sigmas) > 0 else "σ = 0"
            rows.append([label, mean_of(last, "noise/sigma"), mean_of(last, "d/acc_real"),
                         mean_of(last, "d/acc_fake"), mean_of(last, "d/acc"), record(out / name)["final"]["fid"]])
        parts.append("### instance_noise: instance noise keeps D's accuracy from running away\n\n"
                     "Means over the last epoch's logged iterations (every 50th). As in the tutorial, D's accuracy is "
                     "measured on the inputs it trains on, noise included.\n\n"
                     + table(["instance noise (epoch 0 → last)", "σ, last epoch", "D acc real", "D acc fake", "D acc",
                              "final fid"], rows))
    if {"smooth_01", "smooth_0"} <= have:
        rows = []
        for name, label in (("smooth_01", "0.1"), ("smooth_0", "0")):
            last = last_epoch(curves(out / name))
            final = record(out / name)["final"]
            rows.append([label, mean_of(last, "d/real_score"), mean_of(last, "d/fake_score"), mean_of(last, "d/acc"),
                         final["fid"], final["precision"], final["recall"]])
        parts.append("### label_smoothing: one-sided label smoothing\n\nMeans over the last epoch's logged iterations.\n\n"
                     + table(["smoothing", "D(x) real", "D(G(z))", "D acc", "final fid", "precision", "recall"], rows))
    if {"orig_ns", "orig_mm"} <= have:
        rows = []
        for name, label in (("orig_ns", "non-saturating: max log D(G(z))"), ("orig_mm", "minimax: min log(1 − D(G(z)))")):
            rows_ = curves(out / name)
            early = [r for r in rows_ if r["iteration"] < 100]
            rows.append([label, mean_of(early, "grad/g_norm"), mean_of(early, "d/fake_score"),
                         mean_of(last_epoch(rows_), "grad/g_norm"), record(out / name)["final"]["fid"]])
        parts.append("### original_gan: the minimax generator loss saturates early\n\n"
                     "‖∇G‖ is the generator's gradient norm, logged every 10 iterations.\n\n"
                     + table(["G loss", "‖∇G‖, iterations 0-99", "D(G(z)), iterations 0-99", "‖∇G‖, last epoch",
                              "final fid"], rows))
    if "toy" in have:
        rec = record(out / "toy")
        rows = [["generated", rec["final"].get("residual"), rec["final"].get("swd"), rec["iteration"]],
                ["real vs real (floor)", rec["protocol"]["floor"].get("residual"), rec["protocol"]["floor"].get("swd"), ""]]
        parts.append("### toy_quadratic: a GAN learns the quadratic y = 10 + x²\n\n"
                     "`residual`: median |y − (10 + x²)| of 10,000 generated points, in data units (y spans "
                     "10 to 2,510); `swd`: sliced Wasserstein distance to fresh true samples, standardized.\n\n"
                     + table(["points", "residual", "swd", "iterations"], rows))
    image_runs = [n for n in RUNS if n in have and n != "toy"]
    if image_runs:
        rows, floor = [], None
        for name in image_runs:
            rec = record(out / name)
            floor = floor or (rec["protocol"]["dataset"], rec["protocol"]["floor"])
            rows.append([name, fmt(rec["wall"], 3), str(rec["iteration"]), *(rec["final"].get(m) for m in IMAGE_METRICS)])
        rows.append([f"real vs real ({floor[0]} train vs test)", "", "", *(floor[1].get(m) for m in IMAGE_METRICS)])
        parts.append("### Every image run: final metrics on 10,000 samples\n\n"
                     + table(["run", "wall s", "iterations", *IMAGE_METRICS], rows))
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder with one run folder per recipe (written with --run)")
    parser.add_argument("--run", action="store_true", help="train the runs first")
    parser.add_argument("--only", nargs="*", choices=list(RUNS), help="train only these")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # train.py runs from the repository root
    if args.run:
        run(args.out, args.only or list(RUNS))
    if not args.out.is_dir():
        parser.error(f"{args.out} does not exist; train the runs into it with --run")
    print(report(args.out), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
