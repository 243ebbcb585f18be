"""A job is what its overrides say, not its folder's name.

- `job_dir` (the resolver behind conf/hydra/default.yaml's `hydra.sweep.subdir`) names a sweep
  job's folder after every override it has except the seed (its own subfolder): two jobs that
  differ in anything land in different folders. The swept keys come first (`swept`: what tells the
  jobs apart leads TensorBoard's run labels and MLflow's run names), then the others, each part
  sorted by key. Values with a `/` (paths) or longer than 32 characters are shortened to their last
  part plus a short hash of the whole value.
- `check_same_job`: a finished run folder is skipped only when the new command asks for the
  same settings as the ones stored in its `.hydra/overrides.yaml`; other settings are refused
  in one line that lists the keys, before anything is written.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from ganexp.errors import ConfigError, shown
from ganexp.config.keys import DISPLAY as _DISPLAY, MACHINE_LOCAL, PLUMBING, is_kind, keys_of
from ganexp.run.lock import check_free
from ganexp.io.results import read_metrics

# Not settings of the experiment: where it is written, a resume's source, the grid's name (its
# values are overrides of their own), launcher and output plumbing.
# (ganexp/config/keys.py's PLUMBING keys; the seed is a subfolder of its own.)
IGNORED = ("seed", *keys_of(PLUMBING))
# How this machine's console looks (trainer.enable_progress_bar): neither in the name nor compared.
DISPLAY = tuple(k for k in keys_of(_DISPLAY) if is_kind(k, MACHINE_LOCAL))
# Machine-local settings (data.root, data.download and DISPLAY's): where the files are on this machine.
NOT_COMPARED = tuple(k for k in keys_of(MACHINE_LOCAL) if not is_kind(k, PLUMBING))
MAX_VALUE, MAX_NAME = 32, 200
SWEPT = "GANEXP_SWEPT"  # the keys the sweep's command line sweeps, comma-separated (set by ganexp/cli.py for its jobs)


def _parsed(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([str(o) for o in overrides])


def _counts(key: str) -> bool:
    return not (key.split(".")[0] in IGNORED or key.startswith(("hydra.", "hydra/")) or key == "hydra")


def _short(value: str) -> str:
    if "/" not in value and len(value) <= MAX_VALUE:
        return value
    digest = hashlib.sha1(value.encode()).hexdigest()[:6]
    tail = re.sub(r"[^\w.+-]", "_", value.rstrip("/").rsplit("/", 1)[-1])[:24] or "_"
    return f"{tail}~{digest}"


def swept() -> list[str]:
    """The keys this sweep sweeps (a value list, a range or a searched interval on its command line or in its
    `sweep=` grid), as ganexp/cli.py found them; [] outside a sweep."""
    return [key for key in os.environ.get(SWEPT, "").split(",") if key]


def sweep_keys(overrides: list[str]) -> list[str]:
    """The keys of a multirun command line's overrides that take more than one value, sorted."""
    return sorted({o.key_or_group for o in _parsed(overrides)
                   if o.is_sweep_override() and (o.is_interval_sweep() or len(set(map(str, o.sweep_string_iterator()))) > 1)})


def job_dir(task: Any, seed: Any) -> str:
    """`<swept override>,…,<other override>,…/seed=<seed>` for a sweep job (see the module docstring)."""
    lead = set(swept())
    parts = sorted((o.key_or_group not in lead, f"{key}={_short(value)}")  # as typed: 1e-4 stays 1e-4
                   for o in _parsed(list(task or [])) if _counts(o.key_or_group) and o.key_or_group not in DISPLAY
                   for key, _, value in [o.input_line.partition("=")])
    name = ",".join(part for _, part in parts)
    if len(name.encode()) > MAX_NAME:  # a folder name may hold 255 bytes (not characters: ü takes 2)
        head = name.encode()[:MAX_NAME - 9].decode(errors="ignore")
        name = f"{head}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return f"{name}/seed={seed}" if name else f"seed={seed}"


def settings(overrides: list[str]) -> dict[str, Any]:
    """key -> value (as Hydra parses it: 1e-4 and 0.0001 are the same) of the overrides that define a job."""
    return {o.key_or_group: "(deleted)" if o.is_delete() else o.value() for o in _parsed(overrides)
            if o.key_or_group == "seed" or (_counts(o.key_or_group) and o.key_or_group not in NOT_COMPARED)}


def check_same_job(folder: str | Path, overrides: list[str] | None) -> None:
    """ConfigError when `folder`'s finished run was made with other overrides than `overrides`."""
    from ganexp.io.files import read_yaml

    stored_path = Path(folder) / ".hydra" / "overrides.yaml"
    if overrides is None or not stored_path.is_file():
        return  # composed in code, or a run that kept no record of its command line: nothing to compare
    stored = read_yaml(stored_path)
    if not isinstance(stored, list) or not all(isinstance(o, str) for o in stored):
        raise ConfigError(f"{stored_path} is not a list of overrides; this folder's run cannot be compared "
                          "with the new one: give the new run another folder")
    try:
        old = settings(stored)
    except Exception:  # noqa: BLE001 - a file from elsewhere: whatever it holds is one line
        raise ConfigError(f"{stored_path} holds overrides Hydra cannot parse; give the new run another folder") from None
    new = settings(overrides)
    if changed := sorted(k for k in old.keys() | new.keys() if old.get(k, "(default)") != new.get(k, "(default)")):
        listed = "; ".join(f"{k}: {shown(old.get(k, '(default)'))} → {shown(new.get(k, '(default)'))}"
                          for k in changed[:6])
        more = f"; and {len(changed) - 6} more" if len(changed) > 6 else ""
        last = Path(folder) / "checkpoints" / "last.ckpt"
        raise ConfigError(f"{folder} holds a finished run with other settings ({listed}{more}); give the new run "
                          f"another folder (from that run's weights: init_from={last}), or continue that one "
                          f"with python train.py ckpt_path={last}")


def check_folder(folder: Path, overrides: list[str] | None) -> None:
    """A run or sweep job about to go into `folder`: not while another process writes there, and
    into a finished run only with the same settings (`overrides`; None: a resume, no comparison)."""
    record = read_metrics(folder)  # an unreadable record: one line now, before Hydra writes anything there
    check_free(folder)
    if record.get("status") == "finished" and overrides is not None:
        check_same_job(folder, overrides)
