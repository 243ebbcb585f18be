"""The comparison view, read back the way a user sees it: the real `tensorboard` program serving a
two-run sweep, its HParams experiment, the runs' metric values and the custom-scalars layout over HTTP."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ganexp.run.resume import register_resolvers
from ganexp.run.tensorboard import GROUPS, LAYOUT, columns
from tests.helpers import CONF, FAST, run_train

SWEEP = ["optimizer.lr=1e-4,2e-4", "eval_every=0", "eval.n=250", "eval.n_final=500"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("tb")
    result = run_train("-m", f"hydra.sweep.dir={cwd / 'sweep'}", *SWEEP, *FAST, cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LeafSpec" not in result.stderr and "Warning" not in result.stderr, result.stderr[-3000:]
    return cwd / "sweep"


@pytest.fixture(scope="module")
def server(sweep):
    """`tensorboard --logdir <sweep>` on loopback, an OS-chosen port; always stopped."""
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep), "--host", "127.0.0.1",
                             "--port", "0", "--load_fast", "false"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline, url, seen = time.time() + 90, None, ""
        while url is None and time.time() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            seen += line
            found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            url = found.group(1) if found else None
        assert url, f"tensorboard did not start: {seen[-2000:]}"
        while time.time() < deadline:  # the first scan of the logdir
            if _get(url, "/data/plugins_listing").get("hparams", {}).get("enabled"):
                break
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _get(url: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json",
                                                                        "X-TensorBoard-Feature-Flags": "{}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_hparams_lists_the_group_names_the_swept_key_and_no_plumbing(server, sweep):
    plugins = _get(server, "/data/plugins_listing")
    assert plugins["hparams"]["enabled"] and plugins["custom_scalars"]["enabled"]
    experiment = _get(server, "/data/plugin/hparams/experiment", {"experimentName": ""})
    names = [h["name"] for h in experiment["hparamInfos"]]
    assert {"data", "model", "loss", "optimizer", "noise", "experiment", "status", "optimizer.lr", "seed",
            "optimizer.g.lr", "loss.label_smoothing", "noise.instance_sigma", "d_steps", "batch_size"} <= set(names)
    assert not [n for n in names if "_target_" in n or "_partial_" in n or n.startswith(("logger", "callbacks"))]
    job = next(sweep.glob("*/*/metrics.json")).parent
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
    assert set(names) == set(columns(config, {g: "x" for g in GROUPS}, overrides, "finished"))  # nothing else
    info = {h["name"]: h for h in experiment["hparamInfos"]}
    assert info["optimizer.lr"]["type"] == "DATA_TYPE_FLOAT64" and info["data"]["type"] == "DATA_TYPE_STRING"
    groups = _get(server, "/data/plugin/hparams/session_groups", {
        "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [], "startIndex": 0, "sliceSize": 10})
    rows = [g["hparams"] for g in groups["sessionGroups"]]
    assert sorted(r["optimizer.lr"] for r in rows) == [1e-4, 2e-4]
    assert all(r["data"] == "digits" and r["model"] == "mlp" and r["status"] == "finished" for r in rows)
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"hparams/final_fid", "hparams/best_fid", "hparams/iteration"} <= metrics


def test_each_runs_metric_values_are_served(server, sweep):
    runs = _get(server, "/data/runs")
    jobs = sorted(p.parent.relative_to(sweep).as_posix() for p in sweep.glob("*/*/metrics.json"))
    assert len(jobs) == 2 and set(jobs) <= set(runs)
    for job in jobs:
        record = json.loads((sweep / job / "metrics.json").read_text())
        served = _get(server, f"/data/plugin/scalars/scalars?run={urllib.request.quote(job)}&tag=hparams/final_fid")
        assert served[-1][2] == pytest.approx(record["final"]["fid"], rel=1e-6)


def test_the_custom_scalars_layout_is_served(server, sweep):
    jobs = sorted(p.parent.relative_to(sweep).as_posix() for p in sweep.glob("*/*/metrics.json"))
    layout = _get(server, "/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c["multiline"]["tag"] for cat in layout["category"] for c in cat["chart"]}
    assert charts["loss: D vs G"] == ["loss/d", "loss/g"]
    assert charts["D accuracy: real / fake / total"] == ["d/acc_real", "d/acc_fake", "d/acc"]
    assert set(charts) == {title for group in LAYOUT.values() for title in group}
    for chart in ("D(x) vs D(G(z))", "gradient norm: G vs D"):  # every tag of a chart is logged by each run
        for tag in charts[chart]:
            points = _get(server, f"/data/plugin/scalars/scalars?run={urllib.request.quote(jobs[0])}&tag={tag}")
            assert len(points) >= 1


def test_columns_of_a_default_run_composed_in_code_name_the_parts():
    config = {"data": {"_target_": "ganexp.data.digits.DigitsDataModule"}, "model": {"generator": {"_target_": "x.MLPGenerator"}},
              "loss": {"_target_": "ganexp.gan.losses.GANLoss", "label_smoothing": 0.1}, "seed": 3,
              "optimizer": {"lr": 1e-3, "g": {"_target_": "torch.optim.Adam", "lr": 1e-3}}, "noise": {"latent_dim": 8}}
    cols = columns(config, {}, ["optimizer.lr=1e-3", "hydra.sweep.dir=x", "loss.label_smoothing=0.1"], "diverged")
    assert cols["data"] == "DigitsDataModule" and cols["model"] == "MLPGenerator" and cols["experiment"] == "none"
    assert cols["optimizer.lr"] == 1e-3 and cols["seed"] == 3.0 and cols["status"] == "diverged"
    assert not any(k.startswith("hydra") for k in cols)


def test_a_default_run_has_at_most_30_columns_and_no_target_or_partial():
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=x"])
    cols = columns(OmegaConf.to_container(cfg, resolve=True), {g: "default" for g in GROUPS}, [], "finished")
    assert len(cols) <= 30 and not [k for k in cols if "_target_" in k or "_partial_" in k], cols
    assert len(cols) == 6 + 18 + 1  # groups, the GAN hyperparameters, status
