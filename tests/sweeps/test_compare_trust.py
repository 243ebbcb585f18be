"""compare and the end-of-sweep summary on sweep folders someone else made (issue 27, item 1): repeated trial
numbers, impossible values, oversized records, links in the way of the summary files or inside job folders."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from ganexp.sweeps import compare, search, summary as sweep
from tests.helpers import ROOT
from tests.sweeps.test_compare import make_job, table_rows

PNG = b"\x89PNG\r\n\x1a\n"


def trial(sweep_dir, lr, num, fid=None, **record):
    """A trial folder as the Optuna sweeper leaves it: a job with Hydra's job number in .hydra/hydra.yaml."""
    if fid is not None:
        record = {"status": "finished", "iteration": 100, "monitor": "fid", "best": {"fid": fid}, **record}
    run = make_job(sweep_dir, [f"optimizer.lr={lr}"], **record)
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    return run


def optuna_result(sweep_dir, lr, value):
    (sweep_dir / search.RESULTS).write_text(yaml.safe_dump({"name": "optuna", "best_params": {"optimizer.lr": lr},
                                                            "best_value": value}))


@pytest.fixture
def two_studies(tmp_path):
    """A search re-run with another sampler seed into the same folder: trial numbers 0 and 1 twice; Optuna's
    file is the second study's, whose best (fid 25) is not the folder's best (fid 20, the first study's)."""
    folder = tmp_path / "search"
    trial(folder, "0.0001", 0, 30.0)
    trial(folder, "0.0002", 1, 20.0)
    trial(folder, "0.0003", 0, 25.0)
    trial(folder, "0.0004", 1, 40.0)
    optuna_result(folder, 0.0003, 25.0)
    return folder


def run_compare(*args, code=None):
    """`python -m ganexp.compare ARGS` as a user runs it (or `code` with the ARGS as sys.argv[1:])."""
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "ganexp.sweeps.compare", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


# 1. repeated trial numbers: a total order, the best trial is the table's first row, trials.png redrawn


def test_a_second_study_in_the_same_folder_is_summarized_with_the_tables_best_and_a_fresh_trials_png(two_studies):
    (two_studies / search.PLOT).write_bytes(b"stale")
    summary = compare.summarize(two_studies)
    rows = table_rows(summary.markdown, "| # | optimizer.lr")
    assert [(r[0], r[1], r[2]) for r in rows] == [("1", "0.0002", "20"), ("2", "0.0003", "25"),
                                                  ("3", "0.0001", "30"), ("4", "0.0004", "40")]
    line = next(line for line in summary.markdown.splitlines() if "best trial" in line.lower())
    assert line.startswith("Best trial: row 1 below, optimizer.lr=0.0002 → fid 20 (optimizer.lr=0.0002/seed=0); "
                           "Optuna's best trial optimizer.lr=0.0003 → fid 25 (optimization_results.yaml) is the "
                           "last study's only: trial numbers repeat"), line
    written = compare.write(summary)
    assert [p.name for p in written] == ["summary.md", "summary.csv", "summary.png", "trials.png"]
    assert (two_studies / search.PLOT).read_bytes()[:8] == PNG


def test_trials_are_ordered_by_number_then_folder_never_by_job():
    jobs = [compare.Job(run=f"r{i}", params={}, seed=0, status="finished", value=v, number=n)
            for i, (v, n) in enumerate(((3.0, 0), (1.0, 0), (2.0, 1), (5.0, 0), (4.0, None)))]
    assert search.order(list(reversed(jobs))) == [(0, jobs[0]), (0, jobs[1]), (0, jobs[3]), (1, jobs[2])]
    assert search.repeated(jobs) and not search.repeated(jobs[2:])


def test_the_sweep_callback_redraws_trials_png_and_removes_it_when_nothing_can_be_drawn(two_studies, capsys):
    (two_studies / search.PLOT).write_bytes(b"stale")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(two_studies)}}})
    callback = sweep.SweepSummary()
    callback.on_multirun_start(config)
    callback.on_multirun_end(config)  # raised '<' not supported between 'Job' and 'Job', trials.png left stale
    out = capsys.readouterr().out
    assert "summary in summary.md, summary.csv, summary.png, trials.png" in out
    assert (two_studies / search.PLOT).read_bytes()[:8] == PNG and sweep.exit_status() == 0
    for record in two_studies.rglob("metrics.json"):  # every trial failed now: no metric to draw
        record.write_text(json.dumps({"status": "failed", "reason": "boom"}))
    callback.on_multirun_end(config)
    assert "but no trial in this folder finished; 4 trials, 4 failed (recorded as FAIL, the study went on); " \
           "no trials.png." in capsys.readouterr().out
    assert not (two_studies / search.PLOT).exists() and not (two_studies / "summary.png").exists()
    assert sweep.exit_status() == 1


@pytest.mark.slow
def test_the_compare_cli_on_repeated_job_numbers_exits_0_without_a_traceback(two_studies):
    result = run_compare(str(two_studies))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "| 1 | 0.0002 | 20 | 100 | finished |" in result.stdout
    assert (two_studies / search.PLOT).read_bytes()[:8] == PNG


# 2. impossible values make a job unreadable, with the reason; they are never ranked


IMPOSSIBLE = {  # record fields -> the reason
    "negative fid": ({"best": {"fid": -1.0}}, "metrics.json: best.fid is -1.0, not a possible fid (a number >= 0)"),
    "negative kid": ({"final": {"fid": 5.0, "kid": -0.5}},
                     "metrics.json: final.kid is -0.5, not a possible kid (a number >= 0)"),
    "nan fid": ({"best": {"fid": math.nan}}, "metrics.json: best.fid is nan, not a possible fid (a number >= 0)"),
    "infinite fid": ({"best": {"fid": -math.inf}},
                     "metrics.json: best.fid is -inf, not a possible fid (a number >= 0)"),
    "fid as text": ({"best": {"fid": "1"}}, "metrics.json: best.fid is '1', not a possible fid (a number >= 0)"),
    "precision over 1": ({"best": {"fid": 5.0, "precision": 1.5}},
                         "metrics.json: best.precision is 1.5, not a possible precision (a number in [0, 1])"),
    "negative iteration": ({"best": {"fid": 5.0}, "iteration": -3},
                           "metrics.json: iteration is -3, not a count of iterations (an integer >= 0)"),
    "fractional iteration": ({"best": {"fid": 5.0}, "iteration": 2.5},
                             "metrics.json: iteration is 2.5, not a count of iterations (an integer >= 0)"),
    "unknown status": ({"best": {"fid": 5.0}, "status": "done"},
                       "metrics.json: status is 'done', not one ganexp writes (finished, failed, "
                       "diverged, interrupted, running)"),
    "unknown monitor": ({"best": {"fid": 5.0}, "monitor": "evil"},
                        "metrics.json: monitor is 'evil', not a metric ganexp reports"),
    "monitor a list": ({"best": {"fid": 5.0}, "monitor": ["fid"]},
                       "metrics.json: monitor is ['fid'], not a metric ganexp reports"),
    "a 400-digit fid": ({"best": {"fid": -10**400}},
                        f"metrics.json: best.fid is {repr(-10**400)[:37]}..., not a possible fid (a number >= 0)"),
    "best a list": ({"best": [1.0]}, "metrics.json: best is not a mapping of metric names to numbers"),
}


@pytest.mark.parametrize("fields, reason", IMPOSSIBLE.values(), ids=IMPOSSIBLE.keys())
def test_an_impossible_value_makes_the_job_unreadable_and_the_possible_one_wins(tmp_path, fields, reason):
    make_job(tmp_path, ["optimizer.lr=1e-4"], status="finished", iteration=10, monitor="fid", best={"fid": 20.0})
    make_job(tmp_path, ["optimizer.lr=2e-4"], **{"status": "finished", "iteration": 10, "monitor": "fid", **fields})
    summary = compare.summarize(tmp_path)
    assert [(j.params["optimizer.lr"], j.status, j.reason) for j in summary.jobs] == \
        [("1e-4", "finished", ""), ("2e-4", "unreadable", reason)]
    rows = table_rows(summary.markdown, "| # | optimizer.lr")
    assert [r[:3] for r in rows] == [["1", "1e-4", "20"], ["—", "2e-4", "—"]]
    assert rows[1][4] == f"**unreadable**: {reason}"
    assert summary.count_line() == "1 of 2 jobs did not finish (1 unreadable)"


def test_the_registry_says_what_each_metric_can_be():
    from ganexp.metrics.scores import METRICS

    assert METRICS["swd"].possible == (0, math.inf) and METRICS["hq"].possible == (0, 1)
    assert not compare.possible("fid", -1e-9) and compare.possible("precision", 1.0)
    assert not compare.possible("recall", 1.5) and not compare.possible("kid", math.nan)


def test_a_negative_swd_on_toy_data_is_not_the_best(tmp_path):
    make_job(tmp_path, ["noise.instance_sigma=0"], status="finished", monitor="swd", best={"swd": 0.3})
    make_job(tmp_path, ["noise.instance_sigma=0.1"], status="finished", monitor="swd", best={"swd": -0.2})
    summary = compare.summarize(tmp_path)
    assert [(j.params["noise.instance_sigma"], j.status) for j in summary.jobs] == [("0", "finished"),
                                                                                      ("0.1", "unreadable")]
    assert table_rows(summary.markdown, "| # | noise.instance_sigma")[0][:3] == ["1", "0", "0.3"]


def test_a_reason_with_newlines_and_pipes_stays_one_table_row(tmp_path):
    make_job(tmp_path, ["optimizer.lr=1e-4"], status="finished", monitor="fid", best={"fid": 20.0})
    make_job(tmp_path, ["optimizer.lr=2e-4"], status="failed", reason="line one\n| 1 | 2e-4 | 0.001 | 1 | finished |")
    markdown = compare.summarize(tmp_path).markdown
    assert len(table_rows(markdown, "| # | optimizer.lr")) == 2
    row = "| — | 2e-4 | — | — | **failed**: line one\\n\\| 1 \\| 2e-4 \\| 0.001 \\| 1 \\| finished \\| |"
    assert row in markdown


# 3. bounded reads and writes


BIG = """import resource, sys, time
from ganexp.sweeps import compare
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
assert compare.main([sys.argv[1]]) == 0
small, start = peak(), time.perf_counter()
code = compare.main([sys.argv[2]])
print(f"MEASURED {small} {peak()} {time.perf_counter() - start:.2f}", file=sys.stderr)
sys.exit(code)
"""


def big_metrics(path, megabytes=50):
    """`megabytes` MB of distinct keys in `best` (fast to make: one 1 MB block, renamed per copy)."""
    block = "".join(f'"kXX{i:06d}": 0, ' for i in range(70_000))  # ~1.1 MB
    with open(path, "w") as f:
        f.write('{"status": "finished", "monitor": "fid", "best": {')
        for copy in range(math.ceil(megabytes * 1e6 / len(block))):
            f.write(block.replace("XX", f"{copy:03d}"))
        f.write('"fid": 1.0}}')


@pytest.mark.slow
def test_a_50_mb_metrics_json_is_one_unreadable_line_in_bounded_memory_and_time(tmp_path):
    small = tmp_path / "small"
    make_job(small, ["optimizer.lr=1e-4"], status="finished", monitor="fid", best={"fid": 20.0})
    folder = tmp_path / "big"
    make_job(folder, ["optimizer.lr=1e-4"], status="finished", monitor="fid", best={"fid": 20.0})
    big_metrics(make_job(folder, ["optimizer.lr=2e-4"], status="finished") / "metrics.json")
    assert (folder / "optimizer.lr=2e-4" / "seed=0" / "metrics.json").stat().st_size > 50e6
    result = run_compare(str(small), str(folder), code=BIG)
    assert result.returncode == 0, result.stderr[-2000:]
    small_mb, big_mb, seconds = result.stderr.split("MEASURED ")[1].split()
    print(f"peak RSS {small_mb} MB on a small sweep, {big_mb} MB with the 50 MB metrics.json; {seconds} s")
    assert int(big_mb) - int(small_mb) < 50 and float(seconds) < 5
    rows = {r["optimizer.lr"]: r for r in csv.DictReader((folder / "summary.csv").read_text().splitlines())}
    assert rows["2e-4"]["status"] == "unreadable"
    assert rows["2e-4"]["reason"] == (f"metrics.json is over {compare.MAX_RECORD_BYTES:,} bytes, too large for a "
                                      "ganexp record; is it one? remove or replace it")
    assert (folder / "summary.csv").stat().st_size < 2000


@pytest.mark.slow
def test_unknown_keys_are_dropped_and_columns_rows_and_cells_are_bounded(tmp_path):
    unknown = {f"metric{i}": 1.0 for i in range(20_000)}  # ~0.5 MB: under the size bound
    make_job(tmp_path, ["optimizer.lr=1e-4"], status="finished", monitor="fid", best={"fid": 20.0, **unknown},
             final={"fid": 21.0, **unknown}, extra={"x": list(range(1000))})
    for i in range(compare.MAX_KEYS + 10):  # each job sweeps keys of its own: more than MAX_KEYS differ
        make_job(tmp_path, [f"key{i}={'v' * 240}"], status="finished", monitor="fid", best={"fid": 30.0 + i})
    too_many = make_job(tmp_path, ["optimizer.lr=3e-4"], status="finished", best={"fid": 1.0})
    (too_many / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"k{i}=1" for i in range(5000)]))
    summary = compare.summarize(tmp_path)
    compare.write(summary)
    rows = list(csv.reader((tmp_path / "summary.csv").read_text().splitlines()))
    header = rows[0]
    assert header == ["run", *summary.keys, "seed", "status", "reason", "iteration", "fid", "final/fid", "best/fid"]
    assert len(summary.keys) == compare.MAX_KEYS and len(rows) == 1 + compare.MAX_KEYS + 12
    assert max(len(cell) for row in rows for cell in row) <= compare.MAX_TEXT
    bad = next(j for j in summary.jobs if j.run.startswith("optimizer.lr=3e-4"))
    assert (bad.status, bad.reason) == ("unreadable", f".hydra/overrides.yaml holds 5000 overrides, more than a "
                                                      f"ganexp job has ({compare.MAX_OVERRIDES})")
    assert "(11 more swept parameters not shown)" in summary.markdown
    assert (tmp_path / "summary.csv").stat().st_size < 100_000 and (tmp_path / "summary.md").stat().st_size < 100_000


# 4. links: the summary files replace a link, never write through it; links inside job folders are reported


def plant_links(folder, outside):
    """Each summary file a link out of the folder: to a file, to a folder, dangling."""
    targets = {"summary.md": outside / "victim.md", "summary.csv": outside / "folder",
               "summary.png": outside / "gone.png", "trials.png": outside / "victim.png"}
    for name, target in targets.items():
        (folder / name).unlink(missing_ok=True)
        (folder / name).symlink_to(target)


@pytest.mark.slow
def test_summary_files_that_are_links_are_replaced_and_their_targets_left_byte_identical(two_studies, tmp_path, capsys):
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    for name in ("victim.md", "victim.png", "folder/keep"):
        (outside / name).write_bytes(b"precious " + name.encode())
    before = {p: p.read_bytes() if p.is_file() else None for p in outside.rglob("*")}
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(two_studies)}}})
    runs = {"sweep callback": lambda: sweep.SweepSummary().on_multirun_end(config),
            "compare in-process": lambda: compare.main([str(two_studies)]) == 0 or pytest.fail("exit code"),
            "python -m ganexp.compare": lambda: run_compare(str(two_studies))}
    for how, run in runs.items():
        plant_links(two_studies, outside)
        result = run()
        if how == "python -m ganexp.compare":
            assert result.returncode == 0 and result.stderr == "", result.stderr
            assert (two_studies / "summary.md").read_text().rstrip("\n") == result.stdout.rstrip("\n")
        for name in ("summary.md", "summary.csv", "summary.png", "trials.png"):
            assert not (two_studies / name).is_symlink() and (two_studies / name).is_file(), (how, name)
        assert {p: p.read_bytes() if p.is_file() else None for p in outside.rglob("*")} == before, how
    assert "suspicious link: summary.md -> " in capsys.readouterr().out  # what the callback printed


def test_links_inside_job_folders_that_point_outside_are_reported_one_line_each(tmp_path):
    folder, outside = tmp_path / "sweep", tmp_path / "outside"
    (outside / "ckpts").mkdir(parents=True)
    (outside / "metrics.json").write_text(json.dumps({"status": "finished", "monitor": "fid", "best": {"fid": 7.0}}))
    good = make_job(folder, ["optimizer.lr=1e-4"], status="finished", monitor="fid", best={"fid": 20.0})
    linked = make_job(folder, ["optimizer.lr=2e-4"])
    (linked / "metrics.json").symlink_to(outside / "metrics.json")  # read through: it may continue
    (linked / "checkpoints").symlink_to(outside / "ckpts")
    (good / "gone").symlink_to(outside / "nothing")  # dangling, outside
    (good / "inside").symlink_to(linked / ".hydra")  # inside the sweep folder: not suspicious
    summary = compare.summarize(folder)
    lines = [line for line in summary.markdown.splitlines() if line.startswith("- suspicious link")]
    assert lines == [
        f"- suspicious link: optimizer.lr=1e-4/seed=0/gone -> {outside / 'nothing'} (points outside the sweep folder)",
        f"- suspicious link: optimizer.lr=2e-4/seed=0/checkpoints -> {outside / 'ckpts'} (points outside the sweep "
        "folder)",
        f"- suspicious link: optimizer.lr=2e-4/seed=0/metrics.json -> {outside / 'metrics.json'} (points outside "
        "the sweep folder)"]
    assert table_rows(summary.markdown, "| # | optimizer.lr")[0][:3] == ["1", "2e-4", "7"]


def test_suspicious_links_are_bounded_in_count(tmp_path):
    job = make_job(tmp_path, ["optimizer.lr=1e-4"], status="finished", monitor="fid", best={"fid": 20.0})
    for i in range(compare.MAX_LINKS + 5):
        (job / f"link{i:02d}").symlink_to(f"/nonexistent/{i}")
    markdown = compare.summarize(tmp_path).markdown
    assert markdown.count("- suspicious link: ") == compare.MAX_LINKS
    assert "- and 5 more suspicious links" in markdown
