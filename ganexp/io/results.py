"""metrics.json: one record per run, always written whole (ganexp/io/writes.py: temp file, fsync, rename).

Fields every writer may merge in: `status` (running | finished | failed | diverged | interrupted;
ganexp/run/signals.py's `status` derives a run's final one),
`reason`, `iteration`, `final` / `best` metric dicts, `protocol`, `mlflow_runs` (tracking URI -> the
MLflow run this run logs to, so a resume appends to it). Readers (compare,
sweeps, resume) trust only what this module wrote.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ganexp.io import writes
from ganexp.io.files import MAX_RECORD_BYTES, BadFile, read_json

METRICS_FILE = "metrics.json"


def read_metrics(run_dir: str | Path, max_bytes: int = MAX_RECORD_BYTES) -> dict:
    """The run's record ({} when there is none); BadFile (one line) when it is not a JSON object."""
    path = Path(run_dir) / METRICS_FILE
    record = read_json(path, default={}, max_bytes=max_bytes)
    if not isinstance(record, dict):
        raise BadFile(f"{path} is not a ganexp record (a JSON {type(record).__name__}, not an object)")
    return record


def update_metrics(run_dir: str | Path, **fields: Any) -> dict:
    """Merge `fields` into <run_dir>/metrics.json (top-level keys replaced) and return the record."""
    record = {**read_metrics(run_dir), **fields}
    writes.replace_json(Path(run_dir) / METRICS_FILE, record)
    return record


def mlflow_run(run_dir: str | Path, tracking_uri: str) -> str | None:
    """The id of the MLflow run this run folder logs to at `tracking_uri` (32 hex digits), else None."""
    runs = read_metrics(run_dir).get("mlflow_runs")
    run_id = runs.get(tracking_uri) if isinstance(runs, dict) else None
    return run_id if isinstance(run_id, str) and re.fullmatch(r"[0-9a-f]{32}", run_id) else None


def keep_mlflow_run(run_dir: str | Path, tracking_uri: str, run_id: str) -> None:
    runs = read_metrics(run_dir).get("mlflow_runs")
    update_metrics(run_dir, mlflow_runs={**(runs if isinstance(runs, dict) else {}), tracking_uri: run_id})


def monitored(record: dict) -> float | None:
    """The metric a sweeper optimizes: the best value of `monitor` (else its final value)."""
    monitor = record.get("monitor")
    best, final = record.get("best"), record.get("final")  # read from a file: any shape
    value = next((d[monitor] for d in (best, final) if isinstance(d, dict) and monitor in d), None)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return math.nan


def sweeper_value(record: dict) -> float | None:
    """What a job returns to Hydra's sweeper: the monitored value when finite, else none (Optuna: FAIL)."""
    value = monitored(record)
    return value if value is None or math.isfinite(value) else None
