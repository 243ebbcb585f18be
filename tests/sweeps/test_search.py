"""Searched sweeps: `sweep=search` (Hydra's Optuna sweeper, TPE) on digits, a trial region that cannot
train recorded as failed while the study goes on, and compare's report of it."""
from __future__ import annotations

import csv
import json

import pytest
import yaml
from hydra import compose, initialize_config_dir

from ganexp.sweeps import compare, search
from ganexp.errors import ConfigError
from ganexp.sweeps.launch import check_launcher
from tests.helpers import CONF, FAST, run_train

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def test_the_search_option_searches_lr_on_a_log_scale_smoothing_and_sigma_seeded():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["sweep=search"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
    assert dict(sweeper.params) == {"optimizer.lr": "tag(log, interval(1e-5, 1e-2))",
                                    "loss.label_smoothing": "interval(0, 0.3)",
                                    "noise.instance_sigma": "interval(0, 0.3)"}


@pytest.mark.slow
def test_a_searched_range_is_checked_at_both_ends_before_the_study_starts(tmp_path):
    result = run_train("-m", "sweep=search", "loss.label_smoothing=interval(0, 1.5)", "eval=none", *FAST, cwd=tmp_path,
                       timeout=120)
    assert result.returncode == 2 and "loss.label_smoothing=1.5 is out of range" in result.stderr, result.stderr
    assert not (tmp_path / "outputs").exists()


def test_search_without_the_plugin_says_what_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"sweep=search needs the hydra-optuna-sweeper plugin; .*\.\[search\]"):
        check_launcher(["-m", "sweep=search"])


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5", ""])
def test_a_max_stack_that_is_not_a_count_is_one_line(value):
    with pytest.raises(ConfigError) as err:
        check_launcher(["-m", "hydra/launcher=stacked", f"hydra.launcher.max_stack={value}"])
    assert str(err.value) == (f"hydra.launcher.max_stack={value} is not an integer >= 1; use the most members one "
                              "stack may hold, e.g. hydra.launcher.max_stack=16")
    check_launcher(["-m", "hydra/launcher=stacked", "hydra.launcher.max_stack=3"])  # a count passes


def test_a_bad_max_stack_exits_2_in_one_line_before_any_folder(tmp_path):
    result = run_train("-m", "hydra/launcher=stacked", "hydra.launcher.max_stack=abc", "seed=0,1", *FAST, cwd=tmp_path,
                       timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "hydra.launcher.max_stack=abc is not an integer >= 1" in result.stderr
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_4_trial_search_records_the_impossible_trials_as_failed_and_goes_on(tmp_path):
    sweep = tmp_path / "search"
    # lr 1e12 diverges at its first iteration; TPE's seed 0 draws it for 3 of the 4 trials
    result = run_train("-m", "sweep=search", "hydra.sweeper.n_trials=4", "optimizer.lr=choice(2e-4,1e12)",
                       f"hydra.sweep.dir={sweep}", "eval_every=0", "eval.n=250", "eval.n_final=500", *FAST,
                       cwd=tmp_path, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]  # a sweep with jobs that did not finish exits 1
    jobs = sorted(p.parent for p in sweep.glob("*/*/metrics.json"))
    records = {j: json.loads((j / "metrics.json").read_text()) for j in jobs}
    assert len(jobs) == 4
    lrs = {j: yaml.safe_load((j / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"] for j in jobs}
    diverged = [j for j in jobs if records[j]["status"] == "diverged"]
    assert diverged and all(lrs[j] == 1e12 for j in diverged)
    assert all(records[j]["status"] == "finished" for j in jobs if lrs[j] == 2e-4)
    assert result.stdout.count("Failed experiment") == len(diverged)  # Optuna's FAIL, then the next trial

    best = yaml.safe_load((sweep / search.RESULTS).read_text())
    winner = next(j for j in jobs if lrs[j] == 2e-4)
    assert best["best_params"]["optimizer.lr"] == 2e-4
    assert best["best_value"] == pytest.approx(records[winner]["best"]["fid"])
    assert sorted(search.trial_number(j) for j in jobs) == [0, 1, 2, 3]

    summary = compare.summarize(sweep)
    assert "Optuna's best trial: optimizer.lr=0.0002" in summary.markdown
    assert f"4 trials, {len(diverged)} failed" in summary.markdown
    assert f"`tensorboard --logdir {sweep}`" in summary.markdown
    assert "## Why" not in summary.markdown  # each searched value is tried once: no marginal means
    assert (sweep / search.PLOT).stat().st_size > 1000  # written by the sweep's own summary
    (sweep / search.PLOT).unlink()
    assert compare.main([str(sweep)]) == 0
    assert (sweep / search.PLOT).is_file()


def test_a_malformed_optuna_result_is_said_and_the_leaderboard_still_printed(tmp_path):
    job = tmp_path / "a=1" / "seed=0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- a=1\n")
    (job / "metrics.json").write_text(json.dumps({"status": "finished", "best": {"fid": 3.0}, "monitor": "fid"}))
    for text in ("best_params: 3\nbest_value: x\n", "[1, 2]\n", "best_params: {a: 1}\n"):
        (tmp_path / search.RESULTS).write_text(text)
        summary = compare.summarize(tmp_path)
        assert "(not read:" in summary.markdown and "| 1 |" in summary.markdown
    (tmp_path / search.RESULTS).write_text("name: optuna\nbest_params: {a: 1}\nbest_value: 3.0\n")
    assert "Optuna's best trial: a=1 → fid 3" in compare.summarize(tmp_path).markdown


@pytest.mark.slow
def test_a_search_where_no_trial_finishes_still_gets_its_summary(tmp_path):
    """Optuna raises at the end when no trial completed (every trial diverged); Hydra exits 1. The jobs
    that ran are still summarized, and one line says what happened."""
    sweep = tmp_path / "search"
    result = run_train("-m", "sweep=search", "hydra.sweeper.n_trials=2", "optimizer.lr=choice(1e12,2e12)",
                       f"hydra.sweep.dir={sweep}", "eval_every=0", "eval.n=250", "eval.n_final=500",
                       "trainer.limit_train_batches=3", *FAST, cwd=tmp_path, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert [r["status"] for r in rows] == ["diverged", "diverged"]
    assert f"ganexp: sweep {sweep}: 2 of 2 jobs did not finish (2 diverged)" in result.stderr
    assert f"ganexp: error: the sweep in {sweep} ended with the error above" in result.stderr
