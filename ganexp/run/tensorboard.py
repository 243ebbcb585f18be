"""What every logger shows to compare runs: a curated HParams entry, and TensorBoard's custom-scalars layout.

HParams columns (≤ 30 for a default run): the option chosen for each config group by name
(`data`, `model`, `loss`, `optimizer`, `noise`, `experiment`), the hyperparameters that matter for
GANs, every key the command line overrode or a sweep swept (whatever it is), and the run's
`status`; metrics: `hparams/final_<score>`, `hparams/best_<score>` and `hparams/iteration`. The full
resolved config stays where it is (`.hydra/config.yaml`, the checkpoint).

- TensorBoard: an experiment summary of its own leads with what differs: the swept keys first and marked
  as differing (TensorBoard's HParams table shows the first five differing columns ticked), the monitored
  metric's final and best first among the metrics (the first five ticked).
- MLflow: the columns as params (status as a tag, as it changes when a run resumes), the metrics without
  TensorBoard's `hparams/` prefix (`final_fid`, `best_fid`, `iteration`) at the run's last iteration.
- CSV (and any other logger): `log_hyperparams` (csv/hparams.yaml) and the metrics as MLflow's.
"""
from __future__ import annotations

import math
from typing import Any

from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger

from ganexp.callbacks.loggers import Loggers
from ganexp.io.files import select
from ganexp.config.checks import FLOAT, INT, is_kind
from ganexp.config import keys as _keys
from ganexp.io.results import keep_mlflow_run, read_metrics
from ganexp.metrics.scores import IMAGE_METRICS, TOY_METRICS
from ganexp.run.jobs import swept
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


def lead(summary, params: dict[str, Any], values: dict[str, float], first: list[str], monitor: Any) -> None:
    """Torch's experiment summary (`summary`, in place) leading with what differs: the `first` keys before the
    other columns and marked as differing (TensorBoard ticks the first five differing ones), the monitored
    metric's final and best before the other metrics, then every metric of its kind (image or toy), so a run
    that failed before scoring describes the same table as the others (TensorBoard reads one run's summary)."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    plugin = summary.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
    infos = {info.name: info for info in data.experiment.hparam_infos}
    order = [*first, *(k for k in params if k not in first)]
    for name in order:
        infos[name].differs = name in first
    family = next((list(m) for m in (IMAGE_METRICS, TOY_METRICS) if monitor in m), [])
    top = [f"hparams/{part}_{monitor}" for part in ("final", "best")] if monitor in family else []
    names = dict.fromkeys([*top, *values, *(f"hparams/{part}_{m}" for part in ("final", "best") for m in family)])
    del data.experiment.hparam_infos[:], data.experiment.metric_infos[:]
    data.experiment.hparam_infos.extend(infos[name] for name in order)
    data.experiment.metric_infos.extend(api_pb2.MetricInfo(name=api_pb2.MetricName(tag=name)) for name in names)
    plugin.content = data.SerializeToString()


def _tensorboard(logger: TensorBoardLogger, params: dict[str, Any], values: dict[str, float], monitor: Any) -> None:
    """What Lightning's log_hyperparams writes (hparams.yaml, the metrics at step 0, torch's three HParams
    summaries), the experiment summary leading with the swept keys and the monitored metric."""
    from torch.utils.tensorboard.summary import hparams

    logger.hparams.update(params)
    logger.log_metrics(values, 0)
    summaries = hparams(params, values)
    lead(summaries[0], params, values, [k for k in swept() if k in params], monitor)
    for summary in summaries:
        logger.experiment.file_writer.add_summary(summary)


def _mlflow(logger: MLFlowLogger, params: dict[str, Any], values: dict[str, float], step: int) -> None:
    """Params once (MLflow keeps a param's first value: a resume that changes a column keeps the first
    run's, .hydra/ has the rest), `status` as a tag, the metrics at the run's last iteration."""
    client, run_id = logger.experiment, logger.run_id
    known = client.get_run(run_id).data.params
    logger.log_hyperparams({k: v for k, v in params.items() if k != "status" and k not in known})
    client.set_tag(run_id, "status", params["status"])
    logger.log_metrics(values, step)


def write_hparams(logger: Any, config: dict, record: dict, overrides: list[str] | None) -> None:
    """The run's HParams entry to each of its loggers, written once its record is final (every status, so
    failures show)."""
    from hydra.core.hydra_config import HydraConfig

    if (loggers := Loggers.of(logger)) is None:
        return
    chosen = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}  # {}: composed in code
    choices = {k: "none" if v is None else str(v) for k, v in chosen.items() if k in GROUPS}
    params, values = columns(config, choices, overrides, str(record.get("status"))), metrics(record)
    plain = {k.removeprefix("hparams/"): v for k, v in values.items()}
    step = int(values["hparams/iteration"])
    for lg in loggers.all:
        if isinstance(lg, TensorBoardLogger):
            _tensorboard(lg, params, values, record.get("monitor"))
        elif isinstance(lg, MLFlowLogger):
            _mlflow(lg, params, plain, step)
        else:
            lg.log_hyperparams(params)
            lg.log_metrics(plain, step)
            lg.save()


class HParamsRow(Callback):
    """The HParams row written in `on_fit_end`, while the logger's event file is still open (after fit
    Lightning has closed it, and a late write would start a second file). `write_after` covers the
    runs that leave fit by an exception or a signal."""

    def __init__(self, overrides: list[str] | None):
        self.overrides, self.written = overrides, False

    def on_fit_start(self, trainer, pl_module) -> None:
        # known only now (DDP): rank 0 writes TensorBoard's custom-scalars layout, once per run
        # and keeps the MLflow run's id in metrics.json, so that a resume appends to that run
        if trainer.is_global_zero and pl_module.run.logger is not None:
            for logger in pl_module.run.logger.of_kind(TensorBoardLogger):
                logger.experiment.add_custom_scalars(LAYOUT)
            for logger in pl_module.run.logger.of_kind(MLFlowLogger):
                keep_mlflow_run(pl_module.run.out, logger.experiment.tracking_uri, logger.run_id)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and pl_module.interrupted is None:
            record = {**read_metrics(pl_module.run.out), "status": status(pl_module), "iteration": pl_module.iteration}
            write_hparams(pl_module.run.logger, pl_module.hparams, record, self.overrides)
            self.written = True

    def write_after(self, trainer, pl_module, record: dict) -> None:
        if trainer.is_global_zero and not self.written:
            write_hparams(pl_module.run.logger, pl_module.hparams, record, self.overrides)
