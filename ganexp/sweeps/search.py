"""A searched sweep (`sweep=search`, Hydra's Optuna sweeper), as `ganexp.sweeps.compare` reports it.

Optuna writes `optimization_results.yaml` (its best trial) into the sweep folder; each trial is a job folder
numbered by Hydra (`hydra.job.num`). This adds to the summary the best trial (with Optuna's own beside it when
they differ: two studies in one folder), how many trials failed, and trials.png. Every file is read as data.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from ganexp.io import writes
from ganexp.config.checks import FLOAT, INT, is_kind
from ganexp.io.files import BadFile, read_yaml, select

RESULTS = "optimization_results.yaml"
PLOT = "trials.png"
MAX_YAML_BYTES = 256 << 10  # a job's .hydra/*.yaml is ~10 KB, Optuna's result a few hundred bytes
MAX_PARAMS = 100            # searched parameters in Optuna's result
MAX_NUMBER = 10**9          # a job number beyond is not Hydra's (and would not fit a plot's axis)


def _plain(value: Any) -> bool:
    """A name or value fit for the summary's one line: printable and short."""
    return not isinstance(value, str) or (value.isprintable() and len(value) <= 200)


def results(sweep_dir: Path) -> dict[str, Any] | None:
    """{"best_params": {...}, "best_value": float} from Optuna's file; None when there is none (a grid).
    BadFile when it is there but not what Optuna writes."""
    path = sweep_dir / RESULTS
    data = read_yaml(path, max_bytes=MAX_YAML_BYTES)
    if data is None:
        return None
    params, value = (data.get("best_params"), data.get("best_value")) if isinstance(data, dict) else (None, None)
    if (not isinstance(params, dict) or len(params) > MAX_PARAMS
            or not all(isinstance(k, str) and _plain(k) and _plain(v) for k, v in params.items())
            or not is_kind(value, FLOAT) or not math.isfinite(value)):
        raise BadFile(f"{path} is not Optuna's result (best_params: a mapping, best_value: a number)")
    return {"best_params": {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool))},
            "best_value": float(value)}


def trial_number(run_dir: Path | None) -> int | None:
    """Hydra's job number of a job folder (the trial's order in the study), None when not readable."""
    try:
        hydra = read_yaml(run_dir / ".hydra" / "hydra.yaml", default={}, max_bytes=MAX_YAML_BYTES) if run_dir else {}
    except BadFile:
        return None
    num = select(hydra, "hydra.job.num")
    return num if is_kind(num, INT) and 0 <= num < MAX_NUMBER else None


def order(jobs: list) -> list[tuple[int, Any]]:
    """(number, job) of the jobs with a number, by number, then folder: a total order, since numbers repeat
    when a second study (another sampler seed) ran into the same folder."""
    return sorted(((j.number, j) for j in jobs if j.number is not None), key=lambda nj: (nj[0], nj[1].run))


def repeated(jobs: list) -> bool:
    """Whether trial numbers repeat: the folder holds more than one study."""
    numbers = [j.number for j in jobs if j.number is not None]
    return len(numbers) != len(set(numbers))


def _same(a: Any, b: str | None) -> bool:
    """An Optuna value and an override as typed (0.0002 and "2e-4" are the same)."""
    try:
        return b is not None and math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(a).lower() == str(b).lower()  # true / True


def _shown(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def section(found: dict[str, Any], jobs: list, metric: str, best) -> list[str]:
    """The summary's lines about the search. `best` is the table's first row (None when no trial finished):
    the best trial named is always that one; Optuna's own is said beside it when it differs (a folder of
    two studies holds the last one's file only)."""
    optuna = f"{_shown(found['best_params'])} → {metric} {found['best_value']:.4g} ({RESULTS})"
    tail = f"{len(jobs)} trials, {sum(not j.finished for j in jobs)} failed (recorded as FAIL, the study went on)"
    if best is None:
        return [f"Optuna's best trial: {optuna}, but no trial in this folder finished; {tail}; no {PLOT}."]
    tail += f"; {PLOT}: {metric} over trials with the best so far."
    if (all(_same(v, best.params.get(k)) for k, v in found["best_params"].items())
            and math.isclose(found["best_value"], best.value, rel_tol=1e-6)):
        return [f"Optuna's best trial: {optuna}, row 1 below; {tail}"]
    params = {k: best.params[k] for k in found["best_params"] if k in best.params} or best.params
    why = ("the last study's only: trial numbers repeat, so this folder holds more than one study (a search re-run "
           "into the same hydra.sweep.dir)" if repeated(jobs) else "not this folder's best (a file from elsewhere?)")
    return [f"Best trial: row 1 below, {_shown(params)} → {metric} {best.value:.4g} ({best.run}); "
            f"Optuna's best trial {optuna} is {why}; {tail}"]


def plot(jobs: list, metric: str, lower_is_better: bool, path: Path) -> bool:
    """trials.png: each trial's metric in trial order (failures as red x at the bottom), best so far as a line."""
    trials = order(jobs)
    done = [(n, j.value) for n, j in trials if j.finished and math.isfinite(j.value)]
    if not done:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*done), "o", alpha=0.7, label="trial")
    best = itertools.accumulate((value for _, value in done), min if lower_is_better else max)
    ax.step([n for n, _ in done], list(best), where="post", color="black", lw=1, label="best so far")
    if failed := [n for n, j in trials if not j.finished]:
        ax.plot(failed, [ax.get_ylim()[0]] * len(failed), "x", color="red", label="failed")
    ax.set_xlabel("trial" + (" (numbers repeat: more than one study)" if repeated(jobs) else ""))
    ax.set_ylabel(f"{metric} ({'lower' if lower_is_better else 'higher'} is better)")
    ax.legend(fontsize="small")
    save(plt, fig, path)
    return True


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(plt, fig, path: Path) -> None:
    """`fig` laid out and written to `path` through ganexp/io/writes.py, then closed."""
    fig.tight_layout()
    try:
        writes.replace_with(path, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)
