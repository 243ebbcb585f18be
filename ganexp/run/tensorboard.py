"""What TensorBoard shows to compare runs: a curated HParams entry and a custom-scalars layout.

HParams columns (≤ 30 for a default run): the option chosen for each config group by name
(`data`, `model`, `loss`, `optimizer`, `noise`, `experiment`), the hyperparameters that matter for
GANs, every key the command line overrode or a sweep swept (whatever it is), and the run's
`status`; metrics: `hparams/final_<score>` and `hparams/best_<score>`. The full resolved config
stays where it is (`.hydra/config.yaml`, the checkpoint).
"""
from __future__ import annotations

import math
from typing import Any

from pytorch_lightning.callbacks import Callback

from ganexp.io.files import select
from ganexp.config.checks import FLOAT, INT, is_kind
from ganexp.config import keys as _keys
from ganexp.io.results import read_metrics
from ganexp.run.signals import status

GROUPS = ("data", "model", "loss", "optimizer", "noise", "experiment")
# The GAN hyperparameters every run shows (a key a config does not have is left out): ganexp/config/keys.py's HPARAMS.
KEYS = _keys.keys_of(_keys.HPARAMS)
PLUMBING = _keys.keys_of(_keys.PLUMBING)

# One chart per question (TensorBoard's Custom Scalars tab); tags as the module and metrics log them.
LAYOUT = {
    "GAN": {
        "loss: D vs G": ["Multiline", ["loss/d", "loss/g"]],
        "D accuracy: real / fake / total": ["Multiline", ["d/acc_real", "d/acc_fake", "d/acc"]],
        "D(x) vs D(G(z))": ["Multiline", ["d/real_score", "d/fake_score"]],
        "gradient norm: G vs D": ["Multiline", ["grad/g_norm", "grad/d_norm"]],
        "instance noise σ": ["Multiline", ["noise/sigma"]],
    },
    "metrics": {"evaluation metrics": ["Multiline", [r"metrics/.*"]]},
}


def _scalar(value: Any) -> float | str | bool:
    """One type per column, as HParams needs: numbers as float, None as "none", lists as text."""
    if value is None:
        return "none"
    if isinstance(value, (bool, str)):
        return value
    return float(value) if isinstance(value, (int, float)) else str(value)


def columns(config: dict, choices: dict[str, str], overrides: list[str] | None, status: str) -> dict[str, Any]:
    """The HParams entry's columns for a run (see the module docstring)."""
    out: dict[str, Any] = {}
    for group in GROUPS:
        name = choices.get(group)
        if name is None and group != "experiment":  # composed in code: the part's class says what it is
            target = select(config, f"{group}._target_") or select(config, f"{group}.generator._target_")
            name = str(target).rpartition(".")[2] if target else None
        out[group] = _scalar(name)
    for key in KEYS:
        if (value := select(config, key, KeyError)) is not KeyError:
            out[key] = _scalar(value)
    for key in _keys.override_keys(overrides or []):
        skip = key in GROUPS or key.split(".")[0] in PLUMBING or key.startswith("hydra/") or key == "sweep"
        if not skip and (value := select(config, key, KeyError)) is not KeyError and not isinstance(value, dict):
            out[key] = _scalar(value)
    out["status"] = status
    return out


def metrics(record: dict) -> dict[str, float]:
    """`hparams/final_<score>`, `hparams/best_<score>` and `hparams/iteration` from a run's metrics.json
    record (the iteration is always there, so a run without scores still gets its HParams row)."""
    iteration = record.get("iteration")
    out = {"hparams/iteration": float(iteration) if is_kind(iteration, INT) else 0.0}
    for part in ("final", "best"):
        scores = record.get(part)
        for name, value in (scores.items() if isinstance(scores, dict) else []):
            if is_kind(value, FLOAT) and math.isfinite(value):
                out[f"hparams/{part}_{name}"] = float(value)
    return out


def write_hparams(logger: Any, config: dict, record: dict, overrides: list[str] | None) -> None:
    """The run's HParams entry, written once its record is final (every status, so failures show)."""
    from hydra.core.hydra_config import HydraConfig

    if logger is None or not hasattr(logger, "log_hyperparams"):
        return
    chosen = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}  # {}: composed in code
    choices = {k: "none" if v is None else str(v) for k, v in chosen.items() if k in GROUPS}
    logger.log_hyperparams(columns(config, choices, overrides, str(record.get("status"))), metrics(record))


class HParamsRow(Callback):
    """The HParams row written in `on_fit_end`, while the logger's event file is still open (after fit
    Lightning has closed it, and a late write would start a second file). `write_after` covers the
    runs that leave fit by an exception or a signal."""

    def __init__(self, overrides: list[str] | None):
        self.overrides, self.written = overrides, False

    def on_fit_start(self, trainer, pl_module) -> None:
        # known only now (DDP): rank 0 writes TensorBoard's custom-scalars layout, once per run
        writer = getattr(pl_module.run.logger, "experiment", None) if trainer.is_global_zero else None
        if hasattr(writer, "add_custom_scalars"):
            writer.add_custom_scalars(LAYOUT)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and pl_module.interrupted is None:
            record = {**read_metrics(pl_module.run.out), "status": status(pl_module), "iteration": pl_module.iteration}
            write_hparams(pl_module.run.logger, pl_module.hparams, record, self.overrides)
            self.written = True

    def write_after(self, trainer, pl_module, record: dict) -> None:
        if trainer.is_global_zero and not self.written:
            write_hparams(pl_module.run.logger, pl_module.hparams, record, self.overrides)
