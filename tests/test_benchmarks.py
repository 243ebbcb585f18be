"""The benchmarks run from a fresh clone and print what BENCHMARKS.md quotes. No timed assertions:
speed depends on the machine and its load; these tests check the fields and their consistency."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def run_script(*args: str, timeout: int = 600) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def field(pattern: str, text: str) -> float:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    return float(match.group(1))


@pytest.mark.slow
def test_bench_overhead_prints_medians_ratio_and_data_share():
    out = run_script("benchmarks/bench_overhead.py", "--data", "digits", "--batch", "32", "--iters", "6",
                     "--warmup", "2", "--rounds", "2", "model.generator.hidden=[16]",
                     "model.discriminator.hidden=[16]", "optimizer.fused=true")
    assert re.search(r"^device: cpu: .+, \d+ cores, \d+ torch threads$", out, re.MULTILINE), out
    assert re.search(r"^versions: torch \S+, lightning \S+, python \S+$", out, re.MULTILINE), out
    assert "config: model=mlp data=digits batch_size=32 model.generator.hidden=[16]" in out
    assert len(re.findall(r"^round \d: \(a\) lightning .* \(b\) plain .* ratio ", out, re.MULTILINE)) == 2
    med_a = field(rf"^median \(a\) lightning: {NUMBER} it/s", out)
    med_b = field(rf"^median \(b\) plain: {NUMBER} it/s", out)
    ratio = field(rf"^ratio \(a\)/\(b\): {NUMBER}", out)
    assert med_a > 0 and med_b > 0
    assert ratio == pytest.approx(med_a / med_b, rel=0.01, abs=0.002)  # printed with 3 decimals
    share_a = field(rf"^data share \(a\): {NUMBER} %", out)
    share_b = field(rf"^data share \(b\): {NUMBER} %", out)
    assert 0 <= share_a < 100 and 0 <= share_b < 100
    assert re.search(r"^load before: .+ \(1/5/15 min\)$", out, re.MULTILINE)


@pytest.mark.slow
def test_bench_overhead_refuses_more_iterations_than_one_epoch():
    done = subprocess.run([sys.executable, "benchmarks/bench_overhead.py", "--data", "digits", "--batch", "100",
                           "--iters", "100"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "more than one epoch of digits (14)" in done.stderr


@pytest.mark.slow
def test_startup_prints_the_median_of_its_runs():
    out = run_script("benchmarks/startup.py", "--runs", "1", "trainer.accelerator=cpu", "eval=none")
    seconds = field(rf"start-up of python train.py trainer.accelerator=cpu eval=none: median {NUMBER} s", out)
    runs = re.search(r"\(runs: ([0-9.]+);", out)
    assert runs and float(runs.group(1)) == pytest.approx(seconds, abs=0.01)
    assert 0 < seconds < 600


@pytest.mark.slow
def test_host_reads_counts_reads_per_iteration_by_call_site():
    out = run_script("benchmarks/host_reads.py", "--iters", "20", "log_every=10")
    per_iteration = field(rf"^host reads per iteration: {NUMBER} \(target 0.100 = 1/log_every; 20 iterations", out)
    sites = [float(n) for n in re.findall(rf"^  {NUMBER}/iteration  \S+ at \S+:\d+$", out, re.MULTILINE)]
    assert sites and sum(sites) == pytest.approx(per_iteration, abs=0.002)
    # GANModule's own read: one .tolist() every log_every iterations, 2 of the 20 counted
    assert re.search(r"^  0\.100/iteration  tolist at .*ganexp/gan/module\.py:\d+$", out, re.MULTILINE), out


def _fake_run(folder, rows, final, floor=None, wall=None):
    """A run folder as train.py leaves it, reduced to what recipes.py reads."""
    folder.mkdir(parents=True)
    with open(folder / "curves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    protocol = {"dataset": "mnist", "floor": floor or {"fid": 1.5}}
    (folder / "metrics.json").write_text(json.dumps({"final": final, "iteration": int(rows[-1]["iteration"]) + 1,
                                                     "protocol": protocol}))
    if wall is not None:
        (folder / "wall_seconds").write_text(f"{wall}\n")


def test_recipes_report_checks_each_claim_with_the_numbers_of_its_runs(tmp_path):
    import benchmarks.recipes as recipes

    # two epochs of 100 iterations; the last epoch's rows are the ones averaged
    def rows(acc_first, acc_last, sigmas):
        return [{"iteration": i, "epoch": (i + 1) / 100, "d/acc": acc_first if i < 100 else acc_last,
                 "d/acc_real": 1.0, "d/acc_fake": 0.5, "noise/sigma": sigma} for i, sigma in zip(range(0, 200, 50), sigmas)]

    _fake_run(tmp_path / "noise_on", rows(0.9, 0.6, [0.75, 0.75, 0.7, 0.6]), {"fid": 30.0}, wall=12.5)
    _fake_run(tmp_path / "noise_off", rows(0.9, 0.95, [0, 0, 0, 0]), {"fid": 40.0})
    early = [{"iteration": i, "epoch": (i + 1) / 100, "grad/g_norm": g, "d/fake_score": 0.1}
             for i, g in ((0, 2.0), (50, 4.0), (150, 1.0))]
    _fake_run(tmp_path / "orig_ns", early, {"fid": 20.0})
    _fake_run(tmp_path / "orig_mm", [dict(r, **{"grad/g_norm": r["grad/g_norm"] / 100}) for r in early], {"fid": 90.0})
    text = recipes.report(tmp_path)
    noise = [line for line in text.splitlines() if line.startswith("| σ")]
    # last epoch = iterations 100 and 150: d/acc 0.6 (noise on) and 0.95 (off); σ from the first and last rows
    assert noise == ["| σ 0.75 → 0.6 | 0.65 | 1 | 0.5 | 0.6 | 30 |", "| σ = 0 | 0 | 1 | 0.5 | 0.95 | 40 |"]
    ns = next(line for line in text.splitlines() if line.startswith("| non-saturating"))
    mm = next(line for line in text.splitlines() if line.startswith("| minimax"))
    assert ns.split(" | ")[1:4] == ["3", "0.1", "1"]  # mean of 2 and 4 over iterations 0-99; last epoch: 1
    assert mm.split(" | ")[1:4] == ["0.03", "0.1", "0.01"]
    runs = [line for line in text.splitlines() if line.startswith("| noise_on")]
    assert runs == ["| noise_on | 12.5 | 151 | 30 | — | — | — | — | — | — | — | — |"]  # one column per image metric
    assert "| real vs real (mnist train vs test) |  |  | 1.5 |" in text
    assert "label smoothing" not in text  # no runs for it: no table


@pytest.mark.slow
def test_ema_probe_scores_each_decay_and_its_copy_of_the_runs_own_decay_scores_as_the_run(tmp_path):
    """benchmarks/ema_probe.py (how mnist_fast's EMA decay was chosen): extra EMA copies scored at the end
    with the run's own evaluator; the copy with the module's own decay and start is the module's EMA, so it
    scores exactly what metrics.json's final records."""
    from tests.helpers import run_train

    out = tmp_path / "run"
    done = run_train("data=toy", "model=toy_mlp", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                     "trainer.max_epochs=2", "eval.n_final=500", "eval_every=0", "ema.decay=0.9", "ema.start=50",
                     "+callbacks.multi_ema._target_=ema_probe.MultiEMA", "+callbacks.multi_ema.decays=[0.5,0.9]",
                     f"hydra.run.dir={out}", cwd=tmp_path,
                     env={"GANEXP_PARTS": "callback=ema_probe.MultiEMA", "PYTHONPATH": str(ROOT / "benchmarks")})
    assert done.returncode == 0, done.stderr[-2000:]
    probe = json.loads((out / "ema_probe.json").read_text())
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert probe["iteration"] == 2 * 156 and set(probe) == {"iteration", "raw", "0.5", "0.9"}
    assert probe["0.9"] == final  # the same average, the same fixed latent sample, the same scores
    assert probe["0.5"]["swd"] != final["swd"] and probe["raw"]["swd"] != final["swd"]


@pytest.mark.slow
def test_stacked_step_medians_time_every_members_steps(tmp_path):
    """benchmarks/stacked.py's per-step figures: 2 members, separate runs against one stack, on toy data."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from stacked import layer_times, per_iteration

    separate, stacked = per_iteration(tmp_path, 2, "toy", False)
    assert 0 < stacked < 1 and 0 < separate < 1  # seconds (no comparison: speed is the benchmark's to measure)
    by_vmap, by_bmm = layer_times(2, (4, 4), repeat=5)
    assert by_vmap > 0 and by_bmm > 0
    import torch

    for k in range(2):  # the stack's members ran last: 160 iterations each, as the medians assume
        ckpt = torch.load(tmp_path / "steps" / str(k) / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["iteration"] == 160
