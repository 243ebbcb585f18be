"""ganexp.sweeps.compare on hand-made sweep folders: ranking, direction, seeds, failures, files; the sweep callback."""
import csv
import json
import math
import statistics

import pytest
import yaml
from omegaconf import OmegaConf

from ganexp.sweeps import compare, summary as sweep
def make_job(sweep_dir, overrides, seed=0, **record):
    """A job folder as Hydra and train.py leave it: .hydra/overrides.yaml, .hydra/config.yaml, metrics.json."""
    name = ",".join(o for o in overrides if not o.startswith("seed=")) or "."
    run = sweep_dir / name / f"seed={seed}"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"seed={seed}"]))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    if record:
        (run / "metrics.json").write_text(json.dumps(record))
    return run


FIDS = {("1e-4", 0): 30.0, ("1e-4", 1): 34.0, ("2e-4", 0): 20.0, ("2e-4", 1): 26.0, ("5e-4", 0): 50.0, ("5e-4", 1): 40.0}


@pytest.fixture
def seeded_sweep(tmp_path):
    for (lr, seed), fid in FIDS.items():
        make_job(tmp_path, [f"optimizer.lr={lr}", "trainer.max_epochs=5"], seed, status="finished", iteration=140,
                 monitor="fid", final={"fid": fid + 1, "coverage": fid / 100}, best={"fid": fid, "coverage": fid / 100},
                 best_iteration=100)
    return tmp_path


def table_rows(markdown, header_start):
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_seeds_aggregate_to_mean_and_std_per_configuration_best_fid_first(seeded_sweep):
    summary = compare.summarize(seeded_sweep)
    assert summary.metric == "fid" and summary.keys == ["optimizer.lr"]
    assert "**fid** (lower is better)" in summary.markdown
    assert "fixed: trainer.max_epochs=5" in summary.markdown
    per_config = table_rows(summary.markdown, "| # | optimizer.lr | fid mean ± std")
    assert [r[1] for r in per_config] == ["2e-4", "1e-4", "5e-4"]  # means 23, 32, 45
    assert per_config[0][2] == f"23 ± {statistics.stdev([20.0, 26.0]):.4g}" == "23 ± 4.243"
    assert per_config[0][3] == "2/2"
    per_job = table_rows(summary.markdown, "| # | optimizer.lr | seed | fid")
    assert [float(r[3]) for r in per_job] == sorted(FIDS.values())  # best values, not final (+1)
    assert [r[0] for r in per_job] == ["1", "2", "3", "4", "5", "6"]


def test_higher_is_better_metrics_rank_the_other_way(seeded_sweep):
    summary = compare.summarize(seeded_sweep, metric="coverage")
    assert "**coverage** (higher is better)" in summary.markdown
    per_config = table_rows(summary.markdown, "| # | optimizer.lr | coverage mean ± std")
    assert [r[1] for r in per_config] == ["5e-4", "1e-4", "2e-4"]


def test_failed_and_diverged_jobs_are_marked_and_listed_last(tmp_path):
    make_job(tmp_path, ["loss.label_smoothing=0"], status="finished", final={"fid": 12.5}, monitor="fid")
    make_job(tmp_path, ["loss.label_smoothing=0.1"], status="finished", final={"fid": 9.5}, monitor="fid")
    make_job(tmp_path, ["loss.label_smoothing=0.2"], status="failed", reason="RuntimeError: out of memory")
    make_job(tmp_path, ["loss.label_smoothing=0.3"], status="diverged", reason="non-finite loss at iteration 7",
             best={"fid": 1.0})  # a diverged run's early best never wins
    make_job(tmp_path, ["loss.label_smoothing=0.4"])  # killed before metrics.json: no result
    summary = compare.summarize(tmp_path)
    rows = table_rows(summary.markdown, "| # | loss.label_smoothing")
    assert [(r[0], r[1]) for r in rows] == [("1", "0.1"), ("2", "0"), ("—", "0.2"), ("—", "0.3"), ("—", "0.4")]
    assert rows[2][4] == "**failed**: RuntimeError: out of memory"
    assert rows[3][4] == "**diverged**: non-finite loss at iteration 7"
    assert rows[4][4] == "**no result**"
    assert len(summary.failures) == 3
    assert summary.count_line() == "3 of 5 jobs did not finish (1 failed, 1 diverged, 1 no result)"


def test_effects_say_why_the_best_won_with_marginal_means(tmp_path):
    fids = {("1e-4", "0"): 40.0, ("1e-4", "0.1"): 36.0, ("2e-4", "0"): 20.0, ("2e-4", "0.1"): 18.0}
    for (lr, smoothing), fid in fids.items():
        make_job(tmp_path, [f"optimizer.lr={lr}", f"loss.label_smoothing={smoothing}"], status="finished",
                 monitor="fid", final={"fid": fid})
    make_job(tmp_path, ["optimizer.lr=5e-4", "loss.label_smoothing=0"], status="diverged", reason="nan")
    summary = compare.summarize(tmp_path)
    rows = table_rows(summary.markdown, "| parameter | value | mean fid")
    # lr: 2e-4 → (20 + 18) / 2 = 19, 1e-4 → 38 (spread 19), 5e-4 → nothing finished; smoothing: 0.1 → 27,
    # 0 → 30 over 2 of its 3 jobs (spread 3)
    assert [r[:4] for r in rows] == [
        ["optimizer.lr", "2e-4", "19", "2/2"], ["optimizer.lr", "1e-4", "38", "2/2"], ["optimizer.lr", "5e-4", "—", "0/1"],
        ["loss.label_smoothing", "0.1", "27", "2/2"], ["loss.label_smoothing", "0", "30", "2/3"]]
    assert [r[4] for r in rows] == ["best", "", "", "best", ""]
    assert "optimizer.lr moves fid the most: 19 between its best and worst value." in summary.markdown
    assert "Some jobs did not finish: the means above leave them out" in summary.markdown


def test_one_swept_parameter_gets_its_effect_table_too(seeded_sweep):
    rows = table_rows(compare.summarize(seeded_sweep).markdown, "| parameter | value | mean fid")
    assert [(r[1], r[2], r[3]) for r in rows] == [("2e-4", "23", "2/2"), ("1e-4", "32", "2/2"), ("5e-4", "45", "2/2")]


def test_writes_summary_md_csv_and_png(seeded_sweep):
    make_job(seeded_sweep, ["optimizer.lr=1e-3", "trainer.max_epochs=5"], status="failed", reason="boom")
    written = compare.write(compare.summarize(seeded_sweep))
    assert [p.name for p in written] == ["summary.md", "summary.csv", "summary.png"]
    with open(seeded_sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7
    assert sum(r["status"] == "failed" for r in rows) == 1
    job = next(r for r in rows if r["run"] == "optimizer.lr=2e-4,trainer.max_epochs=5/seed=1")
    assert (job["optimizer.lr"], job["seed"], float(job["fid"]), float(job["final/fid"])) == ("2e-4", "1", 26.0, 27.0)
    png = (seeded_sweep / "summary.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_runs_without_metrics_fall_back_to_the_last_logged_generator_loss(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for lr, losses in (("1e-4", [0.9, 0.7]), ("2e-4", [0.8, 0.6, 0.65])):
        run = make_job(tmp_path, [f"optimizer.lr={lr}"], status="finished", iteration=3)
        with SummaryWriter(str(run)) as writer:
            for step, loss in enumerate(losses):
                writer.add_scalar("loss/g", loss, step)
    summary = compare.summarize(tmp_path)
    assert summary.metric == "loss/g" and "a loss says little about sample quality" in summary.markdown
    assert [(j.params["optimizer.lr"], round(j.value, 4)) for j in compare.ranked(summary.jobs, lambda j: j.value, "loss/g")] \
        == [("2e-4", 0.65), ("1e-4", 0.7)]


def test_cli_prints_the_table_and_fails_in_one_line_without_jobs(seeded_sweep, tmp_path_factory, capsys):
    assert compare.main([str(seeded_sweep), "--metric", "fid"]) == 0
    assert "| 1 | 2e-4 | 23 ± 4.243 | 2/2 |" in capsys.readouterr().out
    empty = tmp_path_factory.mktemp("empty")
    assert compare.main([str(empty)]) == 2
    assert compare.main([str(empty / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no job folders" in err[0] and "is not a folder" in err[1]


def test_sweep_callback_writes_the_summary_and_sets_the_exit_status(seeded_sweep, capsys):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(seeded_sweep)}}})
    callback = sweep.SweepSummary()
    callback.on_multirun_start(config)
    callback.on_multirun_end(config)
    assert sweep.exit_status() == 0 and (seeded_sweep / "summary.md").is_file()
    assert "all 6 jobs finished" in capsys.readouterr().out
    make_job(seeded_sweep, ["optimizer.lr=1e-3"], status="diverged", reason="non-finite loss")
    callback.on_multirun_end(config)
    assert sweep.exit_status() == 1
    assert "1 of 7 jobs did not finish (1 diverged)" in capsys.readouterr().err
    callback.on_multirun_start(config)  # a new sweep in the same process starts clean
    assert sweep.exit_status() == 0


def test_direction_is_explicit_for_every_metric_ganexp_computes():
    assert [compare.direction(m) for m in ("fid", "kid", "is", "coverage", "precision", "recall")] == \
        ["lower is better"] * 2 + ["higher is better"] * 4
    assert not math.isfinite(compare.Config({}, []).mean)
