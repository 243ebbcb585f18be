"""Run labels and the HParams table lead with what differs: a sweep job's folder (TensorBoard's run label, MLflow's
run name) starts with its swept values, and TensorBoard's experiment summary puts the swept keys and the monitored
metric first (the browser's view of it: tests/run/test_tensorboard_browser.py)."""
import itertools

import pytest
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard.summary import hparams

from ganexp.cli import _swept
from ganexp.run.jobs import SWEPT, job_dir, sweep_keys
from ganexp.run.tensorboard import lead
from ganexp.sweeps.summary import with_grid
from tests.helpers import CONF

COMMON = ["trainer.max_epochs=3", "eval.n=300", "eval.n_final=300", "batch_size=32"]
GRID = {"optimizer.lr": ["1e-4", "1e-40"], "loss.label_smoothing": ["0", "0.1"], "noise.instance_sigma": ["0.1", "0.15"]}


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_job_folder_starts_with_its_swept_values_in_key_order_then_the_rest(monkeypatch, n):
    keys = list(GRID)[:n]
    monkeypatch.setenv(SWEPT, ",".join(keys))
    names = set()
    for values in itertools.product(*(GRID[k] for k in keys)):
        task = [*COMMON, *(f"{k}={v}" for k, v in zip(keys, values))]
        name = job_dir(task, 0)
        lead_parts = sorted(f"{k}={v}" for k, v in zip(keys, values))  # 1e-4 vs 1e-40, 0 vs 0.1: whole parts
        assert name == ",".join(lead_parts + sorted(COMMON)) + "/seed=0"
        names.add(name)
    assert len(names) == 2 ** n  # every job its own folder


def test_outside_a_sweep_the_folder_is_every_override_sorted(monkeypatch):
    monkeypatch.delenv(SWEPT, raising=False)
    assert job_dir(["optimizer.lr=1e-4", *COMMON], 2) == ",".join(sorted(["optimizer.lr=1e-4", *COMMON])) + "/seed=2"


def test_the_swept_keys_are_those_with_more_than_one_value():
    assert sweep_keys(["a=1,2", "b=3", "c=1,1", "d=range(0,2)", "e=tag(log,interval(1e-4,1e-2))", "f=[1,2]",
                       "loss=minimax,hinge"]) == ["a", "d", "e", "loss"]


def test_a_ready_made_grid_s_keys_are_swept():
    assert _swept(with_grid(["-m", "sweep=lr_smoothing_noise", "seed=0,1"], CONF)) == \
        ["loss.label_smoothing", "noise.instance_sigma", "optimizer.lr", "seed"]
    assert _swept(with_grid(["optimizer.lr=1e-4"], CONF)) == []


def _experiment(params, values, first, monitor):
    summaries = hparams(params, values)
    lead(summaries[0], params, values, first, monitor)
    return plugin_data_pb2.HParamsPluginData.FromString(summaries[0].value[0].metadata.plugin_data.content).experiment


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_the_experiment_summary_leads_with_the_swept_keys_and_the_monitored_metric(n):
    params = {"data": "digits", "batch_size": 64.0, "loss.label_smoothing": 0.1, "noise.instance_sigma": 0.0,
              "optimizer.lr": 1e-4, "status": "finished"}
    first = ["optimizer.lr", "loss.label_smoothing", "noise.instance_sigma"][:n]
    values = {"hparams/iteration": 4.0, "hparams/final_kid": 1.0, "hparams/final_fid": 2.0, "hparams/best_fid": 3.0}
    found = _experiment(params, values, first, "fid")
    assert [(i.name, i.differs) for i in found.hparam_infos] == \
        [(k, True) for k in first] + [(k, False) for k in params if k not in first]
    names = [m.name.tag for m in found.metric_infos]
    assert names[:4] == ["hparams/final_fid", "hparams/best_fid", "hparams/iteration", "hparams/final_kid"]
    assert len(names) == len(set(names)) == 2 + 2 * 9 - 1  # every image metric, final and best, once


def test_a_run_without_scores_describes_the_same_metrics():
    scored = _experiment({"status": "finished"}, {"hparams/iteration": 4.0, "hparams/final_swd": 0.5}, [], "swd")
    failed = _experiment({"status": "failed"}, {"hparams/iteration": 0.0}, [], "swd")
    assert {m.name.tag for m in scored.metric_infos} == {m.name.tag for m in failed.metric_infos} == \
        {"hparams/iteration", *(f"hparams/{p}_{m}" for p in ("final", "best") for m in ("swd", "modes", "hq", "residual"))}
    assert [m.name.tag for m in failed.metric_infos][:2] == ["hparams/final_swd", "hparams/best_swd"]
