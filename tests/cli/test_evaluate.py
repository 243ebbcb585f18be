"""Metrics end to end: a short run's metrics.json, best.ckpt, TensorBoard curves and HParams; the evaluate CLI."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from ganexp.metrics.classifier import load_classifier
from ganexp.io.results import read_metrics
from ganexp.io.writes import replace_json
from ganexp.io.files import read_checkpoint
from ganexp.metrics.scores import IMAGE_METRICS
from tests.helpers import make_cfg, run_python
from ganexp.io.results import monitored
from train import train

pytestmark = pytest.mark.slow
EVAL = ["trainer.max_epochs=2", "trainer.limit_train_batches=15", "log_every=10", "eval_every=10", "eval.n=300", "eval.n_final=600"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    returned = monitored(train(make_cfg(out, *EVAL))[0])
    return out, returned


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return run_python("-m", "ganexp.evaluate", *args, cwd=Path.cwd())


def test_metrics_json_records_final_best_and_protocol(run):
    out, returned = run
    record = read_metrics(out)
    assert record["status"] == "finished" and record["iteration"] == 30 and record["monitor"] == "fid"
    assert set(record["final"]) == set(record["best"]) == set(IMAGE_METRICS)
    assert record["best_iteration"] in (10, 20, 30)
    assert returned == record["best"]["fid"]  # what train.py hands a sweeper
    assert record["best"]["fid"] <= record["final"]["fid"]
    protocol = record["protocol"]
    assert protocol["classifier"]["sha256"] == load_classifier("digits")[1]["sha256"]
    assert protocol["classifier"]["test_accuracy"] >= 0.95
    assert (protocol["dataset"], protocol["split"], protocol["n_real"]) == ("digits", "test", 360)
    assert (protocol["n_eval"], protocol["n_final"]) == (300, 600)
    # the real-vs-real floor sits far below an untrained generator's 30-iteration FID
    assert protocol["floor"]["fid"] < record["final"]["fid"] / 10 and protocol["floor"]["coverage"] == 10
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_best_checkpoint_holds_the_best_iteration(run):
    out, _ = run
    record = read_metrics(out)
    best = read_checkpoint(out / "checkpoints" / "best.ckpt")
    assert best["iteration"] == record["best_iteration"]
    assert best["hyper_parameters"]["data"]["_target_"].endswith("DigitsDataModule")


def test_tensorboard_has_metric_curves_and_hparams(run):
    out, _ = run
    events = EventAccumulator(str(out), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("metrics/fid")] == [10, 20, 30]
    assert {"metrics/kid", "metrics/is", "metrics/coverage", "metrics/precision"} <= set(events.Tags()["scalars"])
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content).session_start_info
    assert start.hparams["optimizer.g.lr"].number_value == pytest.approx(2e-4)
    assert start.hparams["status"].string_value == "finished" and start.hparams["data"].string_value
    assert "model.generator.hidden" not in start.hparams and "paths.output_dir" not in start.hparams  # curated
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        events.SummaryMetadata("_hparams_/experiment").plugin_data.content).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"hparams/final_fid", "hparams/best_kid", "hparams/iteration"}


def test_evaluate_a_run_folder_and_the_same_samples_as_npz(run, tmp_path):
    out, _ = run
    result = evaluate(str(out), "--n", "400", "--json")
    assert result.returncode == 0, result.stderr
    from_ckpt = json.loads(result.stdout)
    assert set(from_ckpt["scores"]) == set(IMAGE_METRICS)
    assert from_ckpt["protocol"]["classifier"]["sha256"] == read_metrics(out)["protocol"]["classifier"]["sha256"]

    npz = tmp_path / "samples.npz"
    subprocess.run([sys.executable, "-m", "ganexp.sample", str(out), "--n", "400", "--out", str(npz)], check=True)
    assert np.load(npz)["images"].shape == (400, 8, 8)
    result = evaluate(str(npz), "--data", "digits")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines() if not line.startswith("#"))
    assert list(lines) == list(IMAGE_METRICS)
    assert "real-vs-real floor" in lines["fid"]
    # the same 400 samples (seed 0), as uint8 both ways: the same FID
    assert float(lines["fid"].split()[0]) == pytest.approx(from_ckpt["scores"]["fid"], rel=1e-4)


@pytest.mark.parametrize("args, message", [
    (["{npz}"], "say which dataset the images are from with --data"),
    (["{bad_key}", "--data", "digits"], "has no key 'images' (it has: pixels)"),
    (["{floats}", "--data", "digits"], "images are float32; save them as uint8"),
    (["{truncated}"], "cannot read checkpoint"),
    (["{missing}"], "no checkpoint at"),
    (["{npz}", "--data", "mnist", "--data-root", "{empty}"], "MNIST not found: missing"),
    (["{two}", "--data", "digits"], "images are [20, 2, 8, 8]-shaped; expected [N, H, W] or [N, C, H, W] with C = 1"),
])
def test_evaluate_bad_input_is_one_line(run, tmp_path, args, message):
    out, _ = run
    files = {"npz": tmp_path / "ok.npz", "bad_key": tmp_path / "k.npz", "floats": tmp_path / "f.npz",
             "truncated": tmp_path / "t.ckpt", "missing": tmp_path / "nothing", "empty": tmp_path / "empty",
             "two": tmp_path / "two.npz"}
    np.savez(files["two"], images=np.zeros((20, 2, 8, 8), np.uint8))  # two channels: neither grey nor RGB
    np.savez(files["npz"], images=np.zeros((20, 8, 8), np.uint8))
    np.savez(files["bad_key"], pixels=np.zeros((20, 8, 8), np.uint8))
    np.savez(files["floats"], images=np.zeros((20, 8, 8), np.float32))
    files["truncated"].write_bytes((out / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    result = evaluate(*[a.format(**files) for a in args])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("ganexp.evaluate: error: ") and message in result.stderr


def test_toy_runs_get_exact_scores(tmp_path):
    returned = monitored(train(make_cfg(tmp_path, "data=toy", "model=toy_mlp", "noise.latent_dim=2", *EVAL))[0])
    record = read_metrics(tmp_path)
    assert record["monitor"] == "swd" and set(record["final"]) == {"swd", "modes", "hq"}
    assert record["protocol"]["dataset"] == "toy/ring" and returned == record["best"]["swd"]
    floor = record["protocol"]["floor"]
    assert floor["modes"] == 8 and floor["hq"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)  # 2-D: P(r < 3σ)
    assert record["protocol"]["floor"]["swd"] < record["final"]["swd"]


def test_eval_none_records_no_metrics(tmp_path):
    assert monitored(train(make_cfg(tmp_path, "eval=none", "trainer.limit_train_batches=3"))[0]) is None
    record = read_metrics(tmp_path)
    assert record["status"] == "finished" and "final" not in record
    assert not (tmp_path / "checkpoints" / "best.ckpt").exists()


def test_metrics_json_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    replace_json(path, {"status": "running"})

    def crash(*_):
        raise OSError("killed mid-rename")

    monkeypatch.setattr("ganexp.io.writes.os.replace", crash)
    with pytest.raises(OSError):
        replace_json(path, {"status": "finished"})
    assert json.loads(path.read_text()) == {"status": "running"}  # the old record, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # and no temporary file left
