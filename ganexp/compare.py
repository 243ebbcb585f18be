"""`python -m ganexp.compare SWEEP_DIR [--metric fid]`: the answer at the end of a sweep.

Reads every job folder under SWEEP_DIR (a folder holding `.hydra/overrides.yaml`), its
metrics.json (status, reason, `best` / `final` metric dicts, `monitor`) and prints a
markdown leaderboard, best first, one row per job or, when seeds repeat, one row per
configuration with mean ± std over its finished seeds. Jobs that failed, diverged or
never finished come last, with their reason. Writes summary.md, summary.csv (one row
per job) and summary.png (the metric against each swept parameter) into SWEEP_DIR; a searched
sweep (Optuna) adds its best trial and trials.png (ganexp/search.py).

Ranking value of a job: `best[metric]`, else `final[metric]` (what train.py returns to
sweepers). Runs with no metrics at all (eval=none) fall back to the last logged
`loss/g` from their TensorBoard files: a loss says little about sample quality, and
the summary says so.

--metric takes a name of ganexp's metric registry (ganexp.metrics.scores) or `loss/<tag>`
(the last logged TensorBoard scalar, e.g. loss/g); anything else is an error (exit 2).
A known metric that no job reports is an error too (exit 2, naming the metrics the jobs
do report), not a table of dashes: the ranking would rank nothing. (When no job finished,
the table of failures is printed as usual, since the dashes then come from the failures.)
"""
from __future__ import annotations

import argparse
import csv
import difflib
import logging
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ganexp import search
from ganexp.errors import ConfigError
from ganexp.files import BadFile, read_yaml
from ganexp.metrics.scores import HIGHER_IS_BETTER, IMAGE_METRICS, TOY_METRICS  # the metric registry
from ganexp.results import read_metrics

LOSS_FALLBACK = "loss/g"
NOT_OVERRIDES = ("hydra.", "paths.", "ckpt_path", "sweep")  # bookkeeping, not a parameter of the run
FILES = ("summary.md", "summary.csv", "summary.png")


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

    @property
    def finished(self) -> bool:
        return self.status == "finished"


def higher_is_better(metric: str) -> bool:
    return metric in HIGHER_IS_BETTER


def direction(metric: str) -> str:
    return "higher is better" if higher_is_better(metric) else "lower is better"


def _numbers(record) -> dict[str, float]:
    if not isinstance(record, dict):
        return {}
    numbers = {}
    for k, v in record.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                numbers[str(k)] = float(v)
            except OverflowError:  # a 400-digit integer in someone's metrics.json
                numbers[str(k)] = math.nan
    return numbers


def _overrides(run_dir: Path) -> tuple[dict[str, str], int | None]:
    """The job's command-line overrides and seed, read as plain data (BadFile when malformed)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    lines = read_yaml(path, default=[]) or []
    if not isinstance(lines, list) or not all(isinstance(line, (str, int, float)) for line in lines):
        raise BadFile(f"{path} is not a list of overrides")
    params = {}
    for line in lines:
        key, _, value = str(line).lstrip("+~").partition("=")
        if not key.startswith(NOT_OVERRIDES) and key not in ("seed",):
            params[key] = value
    config_path = run_dir / ".hydra" / "config.yaml"
    config = read_yaml(config_path, default={}) or {}
    if not isinstance(config, dict):
        raise BadFile(f"{config_path} is not a mapping")
    seed = config.get("seed")
    return params, seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def read_job(run_dir: Path, sweep_dir: Path) -> Job:
    """One job folder; a malformed file makes the job `unreadable` (with the reason), never the sweep."""
    run = run_dir.relative_to(sweep_dir).as_posix() or "."
    try:
        params, seed = _overrides(run_dir)
        record = read_metrics(run_dir)
    except BadFile as err:
        return Job(run=run, params={}, seed=None, status="unreadable", reason=str(err))
    iteration = record.get("iteration")
    return Job(run=run, params=params, seed=seed, status=str(record.get("status", "no result")),
               reason=str(record.get("reason") or ""),
               iteration=iteration if isinstance(iteration, int) and not isinstance(iteration, bool) else None,
               best=_numbers(record.get("best")), final=_numbers(record.get("final")),
               monitor=record.get("monitor") if isinstance(record.get("monitor"), str) else None)


def collect(sweep_dir: str | Path) -> list[Job]:
    """Every job folder under `sweep_dir`, sorted by folder name."""
    sweep_dir = Path(sweep_dir)
    return [read_job(overrides.parent.parent, sweep_dir) for overrides in sorted(sweep_dir.rglob(".hydra/overrides.yaml"))]


def last_logged(run_dir: Path, tag: str) -> float:
    """The last value of a TensorBoard scalar in `run_dir` (NaN when there is none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # not a line per event file
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 1}).Reload()
    if tag not in events.Tags().get("scalars", []):
        return math.nan
    return float(events.Scalars(tag)[-1].value)


def known_metrics() -> list[str]:
    """The names --metric accepts (the registry, in report order), `loss/<tag>` aside."""
    return list({**IMAGE_METRICS, **TOY_METRICS})


def check_metric(metric: str) -> None:
    """ConfigError unless `metric` is a registry name or `loss/<tag>` (a TensorBoard scalar)."""
    if metric in known_metrics() or (metric.startswith("loss/") and len(metric) > len("loss/")):
        return
    close = difflib.get_close_matches(metric, known_metrics(), n=1)
    raise ConfigError(f"--metric {metric!r} is not a metric ganexp reports"
                      + (f" (did you mean {close[0]}?)" if close else "")
                      + f"; use one of {', '.join(known_metrics())}, or loss/<tag> for the last logged "
                      f"TensorBoard scalar (e.g. {LOSS_FALLBACK})")


def check_reported(summary: Summary) -> None:
    """ConfigError when jobs finished but none reports the ranking metric: the table would rank nothing."""
    if not any(j.finished for j in summary.jobs) or any(math.isfinite(j.value) for j in summary.jobs):
        return
    names = {m for j in summary.jobs for m in {**j.final, **j.best}}
    reported = [m for m in known_metrics() if m in names] + sorted(names - set(known_metrics()))
    if summary.metric.startswith("loss/"):
        why = f"no finished job in {summary.sweep_dir} logged {summary.metric} to TensorBoard"
    else:
        why = f"no job in {summary.sweep_dir} reports {summary.metric}"
    if reported:
        fix = f"the jobs report {', '.join(reported)}"
    elif summary.metric.startswith("loss/"):
        fix = f"look up the logged tags with tensorboard --logdir {summary.sweep_dir}"
    else:
        fix = f"the jobs report no metrics (eval=none?): try --metric {LOSS_FALLBACK}"
    raise ConfigError(f"--metric {summary.metric}: {why}; {fix}")


def choose_metric(jobs: list[Job], metric: str | None) -> str:
    """--metric, else the metric most runs monitor, else the one most runs report, else the G loss."""
    if metric:
        return metric
    monitors = [j.monitor for j in jobs if j.monitor]
    if monitors:
        return max(sorted(set(monitors)), key=monitors.count)
    reported = [m for j in jobs for m in {**j.final, **j.best}]
    return max(sorted(set(reported)), key=reported.count) if reported else LOSS_FALLBACK


def score(jobs: list[Job], metric: str, sweep_dir: Path) -> None:
    for job in jobs:
        value = job.best.get(metric, job.final.get(metric))
        if value is None and metric.startswith("loss/") and job.finished:  # from its TensorBoard files
            value = last_logged(sweep_dir / job.run, metric)
        job.value = math.nan if value is None else float(value)


def swept(jobs: list[Job]) -> list[str]:
    """The overrides whose value differs between jobs, in command-line order."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.params))
    return [k for k in keys if len({j.params.get(k) for j in jobs}) > 1]


def ranked(rows: list, value, metric: str) -> list:
    """Rows with a finite value first, best first; the rest after, in their order."""
    good = [r for r in rows if math.isfinite(value(r))]
    good.sort(key=value, reverse=higher_is_better(metric))
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


def _status(job: Job) -> str:
    if job.finished:
        return "finished"
    reason = job.reason if len(job.reason) <= 80 else job.reason[:77] + "..."
    return f"**{job.status}**" + (f": {reason}" if reason else "")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def job_table(jobs: list[Job], keys: list[str], metric: str) -> list[str]:
    show_seed = len({j.seed for j in jobs}) > 1
    header = ["#", *keys, *(["seed"] if show_seed else []), *([] if keys else ["run"]), metric, "iteration", "status"]
    rows = []
    for i, job in enumerate(ranked(jobs, lambda j: j.value if j.finished else math.nan, metric), 1):
        rank = str(i) if job.finished and math.isfinite(job.value) else "—"
        rows.append([rank, *(job.params.get(k, "") for k in keys), *([job.seed] if show_seed else []),
                     *([] if keys else [job.run]), _fmt(job.value), job.iteration if job.iteration is not None else "—",
                     _status(job)])
    return markdown_table(header, rows)


def config_table(configs: list[Config], keys: list[str], metric: str) -> list[str]:
    header = ["#", *keys, f"{metric} mean ± std", "seeds finished", "not finished"]
    rows = []
    for i, c in enumerate(ranked(configs, lambda c: c.mean, metric), 1):
        value = f"{_fmt(c.mean)} ± {_fmt(c.std)}" if len(c.values) > 1 else _fmt(c.mean)
        failed = ", ".join(f"seed {j.seed}: {j.status}" for j in c.jobs if not j.finished) or ""
        rows.append([str(i) if math.isfinite(c.mean) else "—", *c.params.values(), value,
                     f"{len(c.values)}/{len(c.jobs)}", failed])
    return markdown_table(header, rows)


def effects_table(jobs: list[Job], keys: list[str], metric: str) -> list[str]:
    """Why the best won: for each swept parameter, the mean metric of the finished jobs at each of its
    values (marginal means; a failed job leaves its cell out, so an unbalanced grid is flagged), the
    parameter whose values differ most first. Values with no finished job are listed last with "—"."""
    rows, spreads = {}, {}
    for key in keys:
        values = list(dict.fromkeys(job.params.get(key, "") for job in jobs))
        scores = {v: [j.value for j in jobs if j.params.get(key, "") == v and j.finished and math.isfinite(j.value)]
                  for v in values}
        means = {v: statistics.fmean(xs) if xs else math.nan for v, xs in scores.items()}
        if sum(math.isfinite(m) for m in means.values()) < 2:
            continue
        order = ranked(values, means.get, metric)
        rows[key] = [[key, v, _fmt(means[v]), f"{len(scores[v])}/{sum(j.params.get(key, '') == v for j in jobs)}",
                      "best" if i == 0 else ""] for i, v in enumerate(order)]
        finite = [m for m in means.values() if math.isfinite(m)]
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
    search: dict | None = None  # Optuna's best trial, for a searched sweep (ganexp/search.py)

    @property
    def failures(self) -> list[Job]:
        return [j for j in self.jobs if not j.finished]

    def count_line(self) -> str:
        if not self.failures:
            return f"all {len(self.jobs)} jobs finished"
        kinds = {s: sum(j.status == s for j in self.failures) for s in dict.fromkeys(j.status for j in self.failures)}
        return (f"{len(self.failures)} of {len(self.jobs)} jobs did not finish ("
                + ", ".join(f"{n} {s}" for s, n in kinds.items()) + ")")


def summarize(sweep_dir: str | Path, metric: str | None = None) -> Summary:
    sweep_dir = Path(sweep_dir)
    jobs = collect(sweep_dir)
    metric = choose_metric(jobs, metric)
    score(jobs, metric, sweep_dir)
    keys = swept(jobs)
    fixed = {k: v for k, v in jobs[0].params.items() if k not in keys} if jobs else {}
    lines = [f"# Sweep {sweep_dir}", "",
             f"{len(jobs)} jobs; ranked by **{metric}** ({direction(metric)})"
             + (", best value during training where recorded, else final" if not metric.startswith("loss/") else ""),
             ]
    if metric.startswith("loss/"):
        lines.append(f"(ranked by the last logged {metric}: a loss says little about sample quality; "
                     "runs with eval on record fid and friends in metrics.json)")
    if fixed:
        lines.append("fixed: " + " ".join(f"{k}={v}" for k, v in fixed.items()))
    found, searched = None, []
    try:
        found = search.results(sweep_dir)
    except BadFile as err:
        searched = [f"(not read: {err})"]
    if found:
        searched = search.section(found, jobs, metric)
    lines += ["", f"TensorBoard: `tensorboard --logdir {sweep_dir}`; the HParams tab has a row per job, with the "
                  f"swept parameters as the columns {', '.join(keys) or '(none swept)'} and the metrics as "
                  "hparams/final_<metric> and hparams/best_<metric>.", *([""] + searched if searched else [])]
    configs = by_config(jobs, keys)
    if len(configs) < len(jobs):  # seeds repeat: one row per configuration
        lines += ["", "## Per configuration (mean ± std over seeds)", "", *config_table(configs, keys, metric),
                  "", "## Per job"]
    lines += ["", *job_table(jobs, keys, metric)]
    effects = effects_table(jobs, keys, metric) if not found else []  # a search tries each value once: trials.png
    if effects:
        lines += ["", "## Why: the effect of each swept parameter (mean over the jobs with that value)", "", *effects]
    summary = Summary(sweep_dir, metric, jobs, keys, "", found)
    summary.markdown = "\n".join(lines + ["", summary.count_line(), ""])
    return summary


def write_csv(summary: Summary, path: Path) -> None:
    metrics = sorted({m for j in summary.jobs for m in {**j.final, **j.best}})
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["run", *summary.keys, "seed", "status", "reason", "iteration", summary.metric,
                      *(f"final/{m}" for m in metrics), *(f"best/{m}" for m in metrics)])
        for job in summary.jobs:
            out.writerow([job.run, *(job.params.get(k, "") for k in summary.keys), job.seed, job.status, job.reason,
                          job.iteration, job.value, *(job.final.get(m, "") for m in metrics),
                          *(job.best.get(m, "") for m in metrics)])


def _as_numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def plot(summary: Summary, path: Path) -> bool:
    """The metric against each swept parameter: one dot per finished job, the mean per value as a line."""
    done = [j for j in summary.jobs if j.finished and math.isfinite(j.value)]
    if not done:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = summary.keys or ["run"]
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
        failed = [x_of[j.params.get(key, j.run)] for j in summary.failures]
        if failed:  # a failure at the bottom of the axis, so it is not mistaken for a value
            ax.plot(failed, [ax.get_ylim()[0]] * len(failed), "x", color="red", label="not finished")
        if numeric and min(numeric) > 0 and max(numeric) >= 4 * min(numeric):
            ax.set_xscale("log")  # learning rates and other scales
            ax.minorticks_off()
        ax.set_xticks(list(x_of.values()), levels, rotation=30, ha="right")  # the values as typed
        ax.set_xlabel(key)
        ax.set_ylabel(f"{summary.metric} ({direction(summary.metric)})")
        ax.legend(fontsize="small")
    fig.suptitle(f"{summary.metric} of {summary.sweep_dir.name}: {summary.count_line()}", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(summary: Summary) -> list[Path]:
    """summary.md, summary.csv and summary.png in the sweep folder; returns the paths written."""
    md, table, png = (summary.sweep_dir / name for name in FILES)
    md.write_text(summary.markdown)
    write_csv(summary, table)
    written = [md, table] + ([png] if plot(summary, png) else [])
    trials = summary.sweep_dir / search.PLOT
    if summary.search is not None:
        numbers = {j.run: search.trial_number(summary.sweep_dir / j.run) for j in summary.jobs}
        if search.plot(summary.jobs, numbers, summary.metric, not higher_is_better(summary.metric), trials):
            written.append(trials)
    return written


def write_or_say(summary: Summary) -> str:
    """`write`, for the CLI after the table is printed: the one line to print instead of a traceback
    when the sweep folder cannot take the files (read-only, full disk), else ""."""
    try:
        write(summary)
    except OSError as err:
        why = err.strerror or type(err).__name__
        return (f"ganexp.compare: note: could not write {', '.join(FILES)} into {summary.sweep_dir} ({why}); "
                "the table above is the whole summary")
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ganexp.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder, e.g. outputs/multirun/<date>/<time>")
    parser.add_argument("--metric", help=f"rank by this metric: {', '.join(known_metrics())} or loss/<tag> "
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
    except ConfigError as err:
        print(f"ganexp.compare: error: {err}", file=sys.stderr)
        return 2
    print(summary.markdown, flush=True)  # first: the table is the answer, whether or not the files can be written
    note = write_or_say(summary)
    if note:
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
