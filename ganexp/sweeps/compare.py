"""`python -m ganexp.compare SWEEP_DIR [--metric fid]`: the answer at the end of a sweep.

Reads every job folder under SWEEP_DIR (a folder holding `.hydra/overrides.yaml`), its
metrics.json (status, reason, `best` / `final` metric dicts, `monitor`) and prints a
markdown leaderboard, best first, one row per job or, when seeds repeat, one row per
configuration with mean ± std over its finished seeds. Jobs that failed, diverged or
never finished come last, with their reason. Writes summary.md, summary.csv (one row
per job) and summary.png (the metric against each swept parameter) into SWEEP_DIR; a searched
sweep (Optuna) adds its best trial and trials.png (ganexp/sweeps/search.py).

Ranking value of a job: `best[metric]`, else `final[metric]`; runs with no metrics (eval=none) fall back
to the last logged `loss/g` from their TensorBoard files, and the summary says how little a loss tells.
--metric takes a registry name (ganexp.metrics.scores) or `loss/<tag>`; anything else, or a metric that no
finished job reports, is an error (exit 2), not a table of dashes.

A sweep folder may come from someone else, so it is read as data: records are bounded and checked, and a
job whose record is malformed or impossible is `unreadable`, with the reason, never ranked. Tables are
bounded; files are written through ganexp/io/writes.py; links below SWEEP_DIR that point outside it are
listed as suspicious.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import difflib
import io
import logging
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ganexp.sweeps import search

from ganexp.io import writes
from ganexp.errors import ConfigError, shown
from ganexp.io.files import BadFile, read_yaml
from ganexp.config.checks import FLOAT, INT, is_kind
from ganexp.config.keys import PLUMBING, covers, keys_of
from ganexp.metrics.scores import HIGHER_IS_BETTER, METRICS  # the metric registry
from ganexp.io.results import METRICS_FILE, read_metrics

LOSS_FALLBACK = "loss/g"
# Bookkeeping, not a parameter of the run: ganexp/config/keys.py's PLUMBING keys but init_from (the weights a job
# starts from, a parameter a sweep may vary).
NOT_OVERRIDES = tuple(k for k in keys_of(PLUMBING) if k != "init_from")
FILES = ("summary.md", "summary.csv", "summary.png")
STATUSES = ("finished", "failed", "diverged", "interrupted", "running")  # what train.py and stack.py write

# Job folders are data someone else may have made: every bound below is far above what ganexp writes.
MAX_RECORD_BYTES = 1 << 20  # a metrics.json is a few KB (each resume appends one line of overrides)
MAX_JOBS = 5000             # job folders compared (a 5-parameter grid of 4 values, 3 seeds: 3072)
MAX_OVERRIDES = 100         # command-line overrides of one job
MAX_KEYS = 16               # swept parameters shown (columns of the tables and summary.csv)
MAX_PLOTTED = 6             # of them drawn in summary.png (one panel each)
MAX_TEXT = 200              # characters of a value, reason or folder name kept
MAX_LINKS = 20              # suspicious links listed
MAX_EVENTS_BYTES = 256 << 20  # an event file read for a loss/<tag> ranking (a long run's scalars: megabytes)
TRACKING = re.compile(r"(sqlite:///|https?://)[\w./:@%+=-]{1,300}")  # a tracking URI a summary prints as a command
KNOWN = list(METRICS)  # the names --metric accepts, in report order, `loss/<tag>` aside


@dataclass
class Job:
    run: str                     # folder, relative to the sweep folder
    params: dict[str, str]       # the job's command-line overrides (seed and bookkeeping excluded)
    seed: int | None
    status: str                  # finished | failed | diverged | running | no result | unreadable
    reason: str = ""
    iteration: int | None = None
    best: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    monitor: str | None = None
    value: float = math.nan      # the ranking value of the chosen metric
    number: int | None = None    # Hydra's job number: a searched sweep's trial (ganexp/sweeps/search.py)
    folder: Path | None = field(default=None, repr=False)  # where it was read (`run` is cut for the tables)
    mlflow: list[str] = field(default_factory=list)  # the MLflow tracking URIs it logged to (logger=mlflow)

    @property
    def finished(self) -> bool:
        return self.status == "finished"


def direction(metric: str) -> str:
    return "higher is better" if metric in HIGHER_IS_BETTER else "lower is better"


def text(value: object, width: int = MAX_TEXT) -> str:
    """A string from someone's file as one line of a table: control characters escaped, at most `width` long."""
    return shown(value, width)


def possible(metric: str, value) -> bool:
    """Whether `value` can be a measurement of `metric` (finite, inside the registry's possible range)."""
    low, high = METRICS[metric].possible
    try:
        return is_kind(value, FLOAT) and math.isfinite(value) and low <= value <= high
    except OverflowError:  # a 400-digit integer
        return False


def _metrics(record: dict, part: str) -> dict[str, float]:
    """record[part] ("best" / "final"): the registry's metrics only, each a possible value (BadFile if not)."""
    values = record.get(part)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise BadFile(f"{METRICS_FILE}: {part} is not a mapping of metric names to numbers")
    for metric in METRICS:
        if metric in values and not possible(metric, values[metric]):
            low, high = METRICS[metric].possible
            wanted = f"a number >= {low:g}" if high == math.inf else f"a number in [{low:g}, {high:g}]"
            raise _bad(f"{part}.{metric}", values[metric], f"not a possible {metric} ({wanted})")
    return {m: float(values[m]) for m in METRICS if m in values}


def _bad(field: str, value, what: str) -> BadFile:
    return BadFile(f"{METRICS_FILE}: {field} is {shown(repr(value), 40)}, {what}")


def _record(run_dir: Path) -> dict:
    """The fields of metrics.json that compare uses, checked ({"status": "no result"} without one)."""
    record = read_metrics(run_dir, MAX_RECORD_BYTES)
    status = record.get("status", "no result")
    if status not in STATUSES and status != "no result":
        raise _bad("status", status, f"not one ganexp writes ({', '.join(STATUSES)})")
    iteration = record.get("iteration")
    if iteration is not None and not (is_kind(iteration, INT) and iteration >= 0):
        raise _bad("iteration", iteration, "not a count of iterations (an integer >= 0)")
    monitor = record.get("monitor")
    if monitor is not None and not (isinstance(monitor, str) and monitor in METRICS):
        raise _bad("monitor", monitor, "not a metric ganexp reports")
    reason = record.get("reason")
    runs = record.get("mlflow_runs")
    return {"status": status, "reason": text(reason) if reason else "", "iteration": iteration, "monitor": monitor,
            "best": _metrics(record, "best"), "final": _metrics(record, "final"),
            "mlflow": [u for u in (runs if isinstance(runs, dict) else {}) if isinstance(u, str) and TRACKING.fullmatch(u)]}


def _overrides(run_dir: Path) -> tuple[dict[str, str], int | None]:
    """The job's command-line overrides and seed, read as plain data (BadFile when malformed)."""
    lines = read_yaml(run_dir / ".hydra" / "overrides.yaml", default=[], max_bytes=search.MAX_YAML_BYTES) or []
    if not isinstance(lines, list) or not all(is_kind(line, FLOAT) or isinstance(line, str) for line in lines):
        raise BadFile(".hydra/overrides.yaml is not a list of overrides")
    if len(lines) > MAX_OVERRIDES:
        raise BadFile(f".hydra/overrides.yaml holds {len(lines)} overrides, more than a ganexp job has "
                      f"({MAX_OVERRIDES})")
    pairs = (str(line).lstrip("+~").partition("=") for line in lines)
    params = {text(key): text(value) for key, _, value in pairs
              if key != "seed" and not any(covers(k, key) for k in NOT_OVERRIDES)}
    config = read_yaml(run_dir / ".hydra" / "config.yaml", default={}, max_bytes=search.MAX_YAML_BYTES) or {}
    if not isinstance(config, dict):
        raise BadFile(".hydra/config.yaml is not a mapping")
    seed = config.get("seed")
    return params, seed if is_kind(seed, INT) and 0 <= seed < 2**32 else None


def read_job(run_dir: Path, sweep_dir: Path) -> Job:
    """One job folder; a malformed or impossible file makes the job `unreadable` (with the reason), never the sweep."""
    run = text(run_dir.relative_to(sweep_dir).as_posix() or ".")
    params, seed = {}, None
    try:
        params, seed = _overrides(run_dir)
        record = _record(run_dir)
    except BadFile as err:  # the row names the job (its overrides when they could be read), the reason the file
        return Job(run=run, params=params, seed=seed, status="unreadable", folder=run_dir,
                   reason=text(str(err).replace(f"{run_dir}{os.sep}", "")))
    return Job(run=run, params=params, seed=seed, folder=run_dir, **record)


def scan(sweep_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The job folders (holding .hydra/overrides.yaml) under `sweep_dir`, sorted, and every link below it whose
    target lies outside it ((link, target), relative and as written). Links are not descended into, and
    the walk stops in one line past writes.MAX_ENTRIES entries: a folder is data."""
    root, real = str(sweep_dir), os.path.realpath(sweep_dir)
    jobs, links, folders, seen = [], [], [root], 0
    while folders:
        folder = folders.pop()
        if os.path.isfile(os.path.join(folder, ".hydra", "overrides.yaml")):
            jobs.append(Path(folder))
        with contextlib.suppress(OSError), os.scandir(folder) as entries:  # an unreadable folder holds no job
            for entry in entries:
                seen += 1
                if seen > writes.MAX_ENTRIES:
                    raise ConfigError(f"{shown(sweep_dir, 120)} holds more than {writes.MAX_ENTRIES:,} files and "
                                      "folders; give a sweep folder (outputs/multirun/<date>/<time>)")
                if entry.is_symlink():
                    with contextlib.suppress(OSError):
                        if not writes.inside(os.path.realpath(entry.path), real):
                            links.append((os.path.relpath(entry.path, root), os.readlink(entry.path)))
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
    return sorted(jobs), sorted(links)


def last_logged(run_dir: Path, tag: str) -> float:
    """The last value of a TensorBoard scalar in `run_dir` (NaN when there is none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # not a line per event file
    last = math.nan
    for path in sorted(p for p in run_dir.glob("events.out.tfevents.*") if writes.is_regular(p)):  # no link, no folder
        if path.stat().st_size > MAX_EVENTS_BYTES:
            continue  # not the few megabytes a run's scalars take: not read
        try:
            events = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 1}).Reload()
        except Exception:  # noqa: BLE001 - a damaged event file holds no number to rank by
            continue
        if tag in events.Tags().get("scalars", []) and events.Scalars(tag):
            last = float(events.Scalars(tag)[-1].value)
    return last


def check_metric(metric: str) -> None:
    """ConfigError unless `metric` is a registry name or `loss/<tag>` (a TensorBoard scalar)."""
    if metric in KNOWN or (metric.startswith("loss/") and len(metric) > len("loss/")):
        return
    close = difflib.get_close_matches(metric, KNOWN, n=1)
    raise ConfigError(f"--metric {metric!r} is not a metric ganexp reports"
                      + (f" (did you mean {close[0]}?)" if close else "")
                      + f"; use one of {', '.join(KNOWN)}, or loss/<tag> for the last logged "
                      f"TensorBoard scalar (e.g. {LOSS_FALLBACK})")


def check_reported(summary: Summary) -> None:
    """ConfigError when jobs finished but none reports the ranking metric: the table would rank nothing."""
    if not any(j.finished for j in summary.jobs) or any(math.isfinite(j.value) for j in summary.jobs):
        return
    reported = [m for m in KNOWN if any(m in j.final or m in j.best for j in summary.jobs)]  # _metrics keeps KNOWN
    loss = summary.metric.startswith("loss/")
    why = (f"no finished job in {summary.sweep_dir} logged {summary.metric} to TensorBoard" if loss
           else f"no job in {summary.sweep_dir} reports {summary.metric}")
    if reported:
        fix = f"the jobs report {', '.join(reported)}"
    elif loss:
        fix = f"look up the logged tags with tensorboard --logdir {summary.sweep_dir}"
    else:
        fix = f"the jobs report no metrics (eval=none?): try --metric {LOSS_FALLBACK}"
    raise ConfigError(f"--metric {summary.metric}: {why}; {fix}")


def choose_metric(jobs: list[Job], metric: str | None) -> str:
    """--metric, else the metric most runs monitor, else the one most runs report, else the G loss."""
    if metric:
        return metric
    if monitors := [j.monitor for j in jobs if j.monitor]:
        return max(sorted(set(monitors)), key=monitors.count)
    reported = [m for j in jobs for m in {**j.final, **j.best}]
    return max(sorted(set(reported)), key=reported.count) if reported else LOSS_FALLBACK


def score(jobs: list[Job], metric: str) -> None:
    for job in jobs:
        value = job.best.get(metric, job.final.get(metric))
        if value is None and metric.startswith("loss/") and job.finished:  # from its TensorBoard files
            value = last_logged(job.folder, metric)
        job.value = math.nan if value is None else float(value)


def swept(jobs: list[Job]) -> list[str]:
    """The overrides whose value differs between the jobs whose overrides could be read, in command-line order."""
    jobs = [j for j in jobs if j.params or j.status != "unreadable"]  # unknown overrides are not different ones
    keys = list(dict.fromkeys(k for j in jobs for k in j.params))
    return [k for k in keys if len({j.params.get(k) for j in jobs}) > 1]


def ranked(rows: list, value, metric: str) -> list:
    """Rows with a finite value first, best first; the rest after, in their order."""
    good = [r for r in rows if math.isfinite(value(r))]
    good.sort(key=value, reverse=metric in HIGHER_IS_BETTER)
    return good + [r for r in rows if not math.isfinite(value(r))]


@dataclass
class Config:
    params: dict[str, str]
    jobs: list[Job]

    @property
    def values(self) -> list[float]:
        return [j.value for j in self.jobs if j.finished and math.isfinite(j.value)]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan


def by_config(jobs: list[Job], keys: list[str]) -> list[Config]:
    groups: dict[tuple, Config] = {}
    for job in jobs:
        params = {k: job.params.get(k, "") for k in keys}
        groups.setdefault(tuple(params.values()), Config(params, [])).jobs.append(job)
    return list(groups.values())


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "—"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells) -> str:
        return "| " + " | ".join(str(value).replace("|", "\\|") for value in cells) + " |"

    return [line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)]


def by_rank(jobs: list[Job], metric: str) -> list[Job]:
    """The job table's order: finished jobs with a value, best first (ties in folder order), then the rest."""
    return ranked(jobs, lambda j: j.value if j.finished else math.nan, metric)


def job_table(jobs: list[Job], keys: list[str], metric: str) -> list[str]:
    show_seed = len({j.seed for j in jobs}) > 1
    header = ["#", *keys, *(["seed"] if show_seed else []), *([] if keys else ["run"]), metric, "iteration", "status"]
    rows = []
    for i, job in enumerate(by_rank(jobs, metric), 1):
        rank = str(i) if job.finished and math.isfinite(job.value) else "—"
        reason = shown(job.reason, 120)
        status = "finished" if job.finished else f"**{job.status}**" + (f": {reason}" if reason else "")
        rows.append([rank, *(job.params.get(k, "") for k in keys), *([job.seed] if show_seed else []),
                     *([] if keys else [job.run]), _fmt(job.value), job.iteration if job.iteration is not None else "—",
                     status])
    return markdown_table(header, rows)


def config_table(configs: list[Config], keys: list[str], metric: str) -> list[str]:
    header = ["#", *keys, f"{metric} mean ± std", "seeds finished", "not finished"]
    rows = []
    for i, c in enumerate(ranked(configs, lambda c: c.mean, metric), 1):
        value = f"{_fmt(c.mean)} ± {_fmt(c.std)}" if len(c.values) > 1 else _fmt(c.mean)
        failed = ", ".join(f"seed {j.seed}: {j.status}" for j in c.jobs if not j.finished)
        rows.append([str(i) if math.isfinite(c.mean) else "—", *c.params.values(), value,
                     f"{len(c.values)}/{len(c.jobs)}", failed])
    return markdown_table(header, rows)


def effects_table(jobs: list[Job], keys: list[str], metric: str) -> list[str]:
    """Why the best won: for each swept parameter, the mean metric of the finished jobs at each of its
    values (marginal means; a failed job leaves its cell out, so an unbalanced grid is flagged), the
    parameter whose values differ most first. Values with no finished job are listed last with "—"."""
    rows, spreads = {}, {}
    for key in keys:
        counts = collections.Counter(j.params.get(key, "") for j in jobs)
        scores: dict[str, list[float]] = {v: [] for v in counts}
        for j in jobs:  # one pass: thousands of jobs with a value each stay linear
            scores[j.params.get(key, "")] += [j.value] if j.finished and math.isfinite(j.value) else []
        means = {v: statistics.fmean(xs) if xs else math.nan for v, xs in scores.items()}
        finite = [m for m in means.values() if math.isfinite(m)]
        if len(finite) < 2:
            continue
        order = ranked(list(scores), means.get, metric)
        rows[key] = [[key, v, _fmt(means[v]), f"{len(scores[v])}/{counts[v]}", "best" if i == 0 else ""]
                     for i, v in enumerate(order)]
        spreads[key] = max(finite) - min(finite)
    if not rows:
        return []
    keys_by_effect = sorted(rows, key=lambda k: -spreads[k])
    lines = markdown_table(["parameter", "value", f"mean {metric}", "jobs finished", ""],
                   [r for k in keys_by_effect for r in rows[k]])
    top = keys_by_effect[0]
    lines += ["", f"{top} moves {metric} the most: {_fmt(spreads[top])} between its best and worst value."]
    if any(not j.finished for j in jobs):
        lines.append("Some jobs did not finish: the means above leave them out, so they compare unequal sets of jobs.")
    return lines


@dataclass
class Summary:
    sweep_dir: Path
    metric: str
    jobs: list[Job]
    keys: list[str]            # swept parameters
    markdown: str
    search: dict | None = None  # Optuna's best trial, for a searched sweep (ganexp/sweeps/search.py)

    @property
    def failures(self) -> list[Job]:
        return [j for j in self.jobs if not j.finished]

    def count_line(self) -> str:
        if not self.failures:
            return f"all {len(self.jobs)} jobs finished"
        kinds = collections.Counter(j.status for j in self.failures)
        return (f"{len(self.failures)} of {len(self.jobs)} jobs did not finish ("
                + ", ".join(f"{n} {s}" for s, n in kinds.items()) + ")")


def mlflow_lines(jobs: list[Job]) -> list[str]:
    """Where the sweep's MLflow runs are (logger=mlflow): the command that shows a local store, or the server."""
    lines = []
    for uri in dict.fromkeys(u for j in jobs for u in j.mlflow):
        where = f"`mlflow ui --backend-store-uri {uri}`" if uri.startswith("sqlite:") else uri
        lines += ["", f"MLflow: {where}; the sweep is one experiment, with a run per job named by its folder."]
    return lines


def summarize(sweep_dir: str | Path, metric: str | None = None) -> Summary:
    sweep_dir = Path(sweep_dir)
    folders, links = scan(sweep_dir)
    jobs = [read_job(folder, sweep_dir) for folder in folders[:MAX_JOBS]]
    metric = choose_metric(jobs, metric)
    score(jobs, metric)
    every_key = swept(jobs)
    keys = every_key[:MAX_KEYS]
    readable = next((j for j in jobs if j.params or j.status != "unreadable"), None)
    fixed = {k: v for k, v in readable.params.items() if k not in every_key} if readable else {}
    lines = [f"# Sweep {sweep_dir}", "",
             f"{len(jobs)} jobs; ranked by **{metric}** ({direction(metric)})"
             + (", best value during training where recorded, else final" if not metric.startswith("loss/") else ""),
             ]
    if len(folders) > MAX_JOBS:
        lines.append(f"(the first {MAX_JOBS} of {len(folders)} job folders by name; the others are not read)")
    if metric.startswith("loss/"):
        lines.append(f"(ranked by the last logged {metric}: a loss says little about sample quality; "
                     "runs with eval on record fid and friends in metrics.json)")
    if fixed:
        lines.append("fixed: " + " ".join(f"{k}={v}" for k, v in fixed.items()))
    if len(every_key) > len(keys):
        lines.append(f"({len(every_key) - len(keys)} more swept parameters not shown)")
    found, searched = None, []
    try:
        found = search.results(sweep_dir)
    except BadFile as err:
        searched = [f"(not read: {text(err, 300)})"]
    if found:
        for job in jobs:
            job.number = search.trial_number(job.folder)
        best = next((j for j in by_rank(jobs, metric) if j.finished and math.isfinite(j.value)), None)  # row 1
        searched = search.section(found, jobs, metric, best)
    lines += ["", f"TensorBoard: `tensorboard --logdir {sweep_dir}`; the HParams tab has a row per job, with the "
                  f"swept parameters as the columns {', '.join(keys) or '(none swept)'} and the metrics as "
                  "hparams/final_<metric> and hparams/best_<metric>.", *mlflow_lines(jobs),
              *([""] + searched if searched else [])]
    configs = by_config(jobs, keys)
    if len(configs) < len(jobs):  # seeds repeat: one row per configuration
        lines += ["", "## Per configuration (mean ± std over seeds)", "", *config_table(configs, keys, metric),
                  "", "## Per job"]
    lines += ["", *job_table(jobs, keys, metric)]
    if not found and (effects := effects_table(jobs, keys, metric)):  # a search tries each value once: trials.png
        lines += ["", "## Why: the effect of each swept parameter (mean over the jobs with that value)", "", *effects]
    if links:  # a folder from someone else: its links may lead anywhere (compare only reads through them)
        lines += ["", "## Links that point outside the sweep folder", "",
                  *(f"- suspicious link: {text(link, 120)} -> {text(target, 120)} (points outside the sweep folder)"
                    for link, target in links[:MAX_LINKS])]
        if len(links) > MAX_LINKS:
            lines.append(f"- and {len(links) - MAX_LINKS} more suspicious links")
    summary = Summary(sweep_dir, metric, jobs, keys, "", found)
    summary.markdown = "\n".join(lines + ["", summary.count_line(), ""])
    return summary


def write_csv(summary: Summary, path: Path) -> Path:
    """One row per job; the columns are bounded: the shown swept parameters and the registry's metrics."""
    metrics = [m for m in METRICS if any(m in j.final or m in j.best for j in summary.jobs)]
    rows = io.StringIO()
    out = csv.writer(rows)
    out.writerow(["run", *summary.keys, "seed", "status", "reason", "iteration", summary.metric,
                  *(f"final/{m}" for m in metrics), *(f"best/{m}" for m in metrics)])
    for job in summary.jobs:
        out.writerow([job.run, *(job.params.get(k, "") for k in summary.keys), job.seed, job.status, job.reason,
                      job.iteration, job.value, *(job.final.get(m, "") for m in metrics),
                      *(job.best.get(m, "") for m in metrics)])
    return writes.replace_text(path, rows.getvalue())


def _as_numbers(values: list[str]) -> list[float] | None:
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return None
    return numbers if all(map(math.isfinite, numbers)) else None  # "nan" would make the level order partial


def plot(summary: Summary, path: Path) -> bool:
    """The metric against each swept parameter: one dot per finished job, the mean per value as a line."""
    done = [j for j in summary.jobs if j.finished and math.isfinite(j.value)]
    if not done:
        return False
    plt = search.pyplot()
    keys = summary.keys[:MAX_PLOTTED] or ["run"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        levels = sorted({j.params.get(key, j.run) for j in summary.jobs}, key=lambda v: (_as_numbers([v]) or [0], v))
        numeric = _as_numbers(levels) if key != "run" else None
        x_of = dict(zip(levels, numeric if numeric else range(len(levels))))
        xs = [x_of[j.params.get(key, j.run)] for j in done]
        ax.plot(xs, [j.value for j in done], "o", alpha=0.6)
        means = [(x_of[v], statistics.fmean(vals)) for v in levels
                 if (vals := [j.value for j in done if j.params.get(key, j.run) == v])]
        ax.plot(*zip(*means), "-", color="black", lw=1, label="mean")
        if failed := [x_of[j.params.get(key, j.run)] for j in summary.failures]:  # at the bottom: not a value
            ax.plot(failed, [ax.get_ylim()[0]] * len(failed), "x", color="red", label="not finished")
        if numeric and min(numeric) > 0 and max(numeric) >= 4 * min(numeric):
            ax.set_xscale("log")  # learning rates and other scales
            ax.minorticks_off()
        ax.set_xticks(list(x_of.values()), [shown(v, 24) for v in levels], rotation=30, ha="right")  # as typed
        ax.set_xlabel(shown(key, 60))
        ax.set_ylabel(f"{summary.metric} ({direction(summary.metric)})")
        ax.legend(fontsize="small")
    fig.suptitle(f"{summary.metric} of {summary.sweep_dir.name}: {summary.count_line()}", fontsize="medium")
    search.save(plt, fig, path)
    return True


def _drawn(path: Path, drew: bool) -> list[Path]:
    """[path] when its figure was drawn; else [] and the old file (or link) of that name removed: a figure
    left from an earlier summary would show jobs this one does not."""
    if drew:
        return [path]
    writes.check_path(path, final=False)
    with contextlib.suppress(FileNotFoundError):
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)  # a link itself, never its target
    return []


def write(summary: Summary) -> list[Path]:
    """summary.md, summary.csv, summary.png and, for a search, trials.png in the sweep folder (through
    ganexp/io/writes.py: a link in the way is replaced, never written through); returns the paths written."""
    folder = writes.confine(summary.sweep_dir)
    md, table, png = (folder / name for name in FILES)
    written = [writes.replace_text(md, summary.markdown), write_csv(summary, table), *_drawn(png, plot(summary, png))]
    trials = folder / search.PLOT
    lower = summary.metric not in HIGHER_IS_BETTER
    return written + _drawn(trials, summary.search is not None
                            and search.plot(summary.jobs, summary.metric, lower, trials))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ganexp.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder, e.g. outputs/multirun/<date>/<time>")
    parser.add_argument("--metric", help=f"rank by this metric: {', '.join(KNOWN)} or loss/<tag> "
                                          "(default: the runs' monitored metric)")
    args = parser.parse_args(argv)
    try:
        if args.metric is not None:
            check_metric(args.metric)
        if not args.sweep_dir.is_dir():
            raise ConfigError(f"{args.sweep_dir} is not a folder; give a multirun folder")
        summary = summarize(args.sweep_dir, args.metric)
        if not summary.jobs:
            raise ConfigError(f"no job folders (with .hydra/overrides.yaml) under {args.sweep_dir}")
        if args.metric is not None:
            check_reported(summary)
        print(summary.markdown, flush=True)  # first: the table is the answer, whether or not the files can be written
        try:
            write(summary)
        except OSError as err:
            print(f"ganexp.compare: note: could not write {', '.join(FILES)} into {summary.sweep_dir} "
                  f"({err.strerror or type(err).__name__}); the table above is the whole summary", file=sys.stderr)
    except ConfigError as err:
        print(f"ganexp.compare: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
