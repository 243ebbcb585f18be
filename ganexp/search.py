"""A searched sweep (`sweep=search`, Hydra's Optuna sweeper), as `ganexp.compare` reports it.

Optuna writes `optimization_results.yaml` (its best trial) into the sweep folder; each trial is a
job folder like a grid's, numbered by Hydra (`.hydra/hydra.yaml`, `hydra.job.num`). This adds to the
summary: the best trial as Optuna saw it, how many trials failed (a failed or diverged trial
returns no value and Optuna records it as FAIL), and `trials.png`, the metric over trials with the
best-so-far line. Every file is read as data (files.read_yaml) and checked before use.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ganexp.files import BadFile, read_yaml

RESULTS = "optimization_results.yaml"
PLOT = "trials.png"


def results(sweep_dir: Path) -> dict[str, Any] | None:
    """{"best_params": {...}, "best_value": float} from Optuna's file; None when there is none (a grid).
    BadFile when it is there but not what Optuna writes."""
    path = sweep_dir / RESULTS
    data = read_yaml(path)
    if data is None:
        return None
    params, value = (data.get("best_params"), data.get("best_value")) if isinstance(data, dict) else (None, None)
    if (not isinstance(params, dict) or not all(isinstance(k, str) for k in params)
            or not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise BadFile(f"{path} is not Optuna's result (best_params: a mapping, best_value: a number)")
    return {"best_params": {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool))},
            "best_value": float(value)}


def trial_number(run_dir: Path) -> int | None:
    """Hydra's job number of a job folder (the trial's order in the study), None when not readable."""
    try:
        hydra = read_yaml(run_dir / ".hydra" / "hydra.yaml", default={})
    except BadFile:
        return None
    job = hydra.get("hydra", {}).get("job", {}) if isinstance(hydra, dict) and isinstance(hydra.get("hydra"), dict) else {}
    num = job.get("num") if isinstance(job, dict) else None
    return num if isinstance(num, int) and not isinstance(num, bool) and num >= 0 else None


def section(found: dict[str, Any], jobs: list, metric: str) -> list[str]:
    """The summary's lines about the search."""
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in found["best_params"].items())
    failed = [j for j in jobs if not j.finished]
    lines = [f"Optuna's best trial: {params} → {metric} {found['best_value']:.4g} ({RESULTS}); "
             f"{len(jobs)} trials, {len(failed)} failed (recorded as FAIL, the study went on); "
             f"{PLOT}: {metric} over trials with the best so far."]
    return lines


def plot(jobs: list, numbers: dict[str, int | None], metric: str, lower_is_better: bool, path: Path) -> bool:
    """trials.png: each trial's metric in trial order (failures as red x at the bottom), best so far as a line."""
    order = sorted((n, j) for j in jobs if (n := numbers.get(j.run)) is not None)
    done = [(n, j.value) for n, j in order if j.finished and math.isfinite(j.value)]
    if not done:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*done), "o", alpha=0.7, label="trial")
    best, steps = math.inf if lower_is_better else -math.inf, []
    for n, value in done:
        best = min(best, value) if lower_is_better else max(best, value)
        steps.append((n, best))
    ax.step(*zip(*steps), where="post", color="black", lw=1, label="best so far")
    failed = [n for n, j in order if not j.finished]
    if failed:
        ax.plot(failed, [ax.get_ylim()[0]] * len(failed), "x", color="red", label="failed")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} ({'lower' if lower_is_better else 'higher'} is better)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
