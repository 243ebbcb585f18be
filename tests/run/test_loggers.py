"""logger=mlflow, csv and many: a real two-job sweep (train.py -m) logging to TensorBoard, MLflow and CSV at once,
read back through a real `mlflow server` over its REST API, the CSV files and the event files; a resume appends to
the same MLflow run; logger=mlflow without mlflow is one line before any folder."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import run_train

pytest.importorskip("mlflow", reason="logger=mlflow needs mlflow: pip install -e '.[mlflow]'")

LRS = ("0.0001", "0.0002")  # as Hydra writes them into the folder names
SWEEP = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.max_epochs=1",
         "trainer.limit_train_batches=4", "log_every=1", "image_every=2", "ckpt_every=2", "eval_every=0",
         "eval.n=300", "eval.n_final=300"]
ITERATIONS = 4
LONGER = ["trainer.max_epochs=2"]  # the resume: a second epoch of 4 iterations (max_epochs may change)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on 127.0.0.1 over a store, up within `wait` seconds, always stopped."""

    def __init__(self, store: Path, log: Path):
        self.port = free_port()
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, seconds: float = 90) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise AssertionError(f"mlflow server exited {self.process.returncode}: {Path(self.log.name).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"mlflow server not up after {seconds} s: {Path(self.log.name).read_text()[-2000:]}")

    def get(self, endpoint: str, **query) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/2.0/mlflow/{path}",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def runs(self, experiment: str) -> dict[str, dict]:
        """run name -> run of the experiment named `experiment`."""
        found = self.get("experiments/get-by-name", experiment_name=experiment)["experiment"]
        runs = self.post("runs/search", {"experiment_ids": [found["experiment_id"]]}).get("runs", [])
        return {r["info"]["run_name"]: r for r in runs}

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return sorted((int(m["step"]), m["value"]) for m in self.get("metrics/get-history", run_id=run_id,
                                                                      metric_key=key)["metrics"])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(10)
        self.log.close()


def jobs(sweep: Path) -> dict[str, Path]:
    """optimizer.lr as typed -> the job's folder."""
    return {d.parent.name.split(",")[0].split("=")[1]: d for d in sweep.glob("*/seed=0")}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The sweep with logger=many (TensorBoard, MLflow into a local store, CSV); then the first job resumed for a
    second epoch with logger=mlflow while the server starts on that store."""
    tmp = tmp_path_factory.mktemp("loggers")
    store, sweep = tmp / "mlruns", tmp / "sweep"
    result = run_train("-m", f"optimizer.lr={','.join(LRS)}", "logger=many", f"logger.mlflow.save_dir={store}",
                       f"hydra.sweep.dir={sweep}", *SWEEP, cwd=tmp, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = jobs(sweep)[LRS[0]]
    before = json.loads((resumed / "metrics.json").read_text())["mlflow_runs"]
    server = Server(store, tmp / "server.log")
    try:
        again = run_train(f"optimizer.lr={LRS[0]}", "logger=mlflow", f"logger.save_dir={store}", *SWEEP, *LONGER,
                          f"ckpt_path='{resumed / 'checkpoints' / 'last.ckpt'}'", cwd=tmp, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        server.wait()
        yield {"server": server, "sweep": sweep, "store": store, "stdout": result.stdout, "resumed": resumed,
               "before": before, "kept": jobs(sweep)[LRS[1]]}
    finally:
        server.stop()


def _params(run: dict) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def _run_of(swept, folder: Path) -> dict:
    record = json.loads((folder / "metrics.json").read_text())
    (run_id,) = record["mlflow_runs"].values()
    return swept["server"].get("runs/get", run_id=run_id)["run"]


def test_the_sweep_is_one_experiment_with_a_run_per_job_named_by_its_swept_value_first(swept):
    runs = swept["server"].runs(str(swept["sweep"]))
    assert sorted(runs) == sorted(f"{d.parent.name}/seed=0" for d in jobs(swept["sweep"]).values())
    assert all(name.startswith("optimizer.lr=") for name in runs)  # what differs leads the name
    assert sorted(float(_params(r)["optimizer.lr"]) for r in runs.values()) == [1e-4, 2e-4]
    for run in runs.values():
        params = _params(run)
        assert (params["loss"], params["data"], params["d_steps"]) == ("nonsaturating", "digits", "1.0")
        assert "status" not in params and _tags(run)["status"] == "finished"


def test_a_run_has_the_final_and_best_metrics_of_its_record_every_iteration_s_loss_and_the_grids(swept):
    server, folder = swept["server"], swept["kept"]
    record = json.loads((folder / "metrics.json").read_text())
    run = _run_of(swept, folder)
    metrics, run_id = _metrics(run), run["info"]["run_id"]
    for name in ("fid", "kid", "coverage"):
        assert metrics[f"final_{name}"] == pytest.approx(record["final"][name], rel=1e-12)
        assert metrics[f"best_{name}"] == pytest.approx(record["best"][name], rel=1e-12)
    assert metrics["iteration"] == ITERATIONS
    assert [step for step, _ in server.history(run_id, "loss/d")] == list(range(ITERATIONS))
    assert server.history(run_id, "metrics/fid") == [(ITERATIONS, pytest.approx(record["final"]["fid"]))]
    files = server.get("artifacts/list", run_id=run_id, path="samples/fake")["files"]
    assert [f["path"] for f in files] == ["samples/fake/0000002.png", "samples/fake/0000004.png"]
    assert all(f["file_size"] > 1000 for f in files)
    real = server.get("artifacts/list", run_id=run_id, path="samples/real")["files"]
    assert [f["path"] for f in real] == ["samples/real/0000000.png"]


def test_every_logger_gets_the_same_values(swept):
    """CSV's metrics.csv and TensorBoard's event file hold MLflow's loss/d, step for step, and the final scores."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = swept["kept"]
    mlflow_loss = swept["server"].history(_run_of(swept, folder)["info"]["run_id"], "loss/d")
    with open(folder / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    csv_loss = [(int(r["step"]), float(r["loss/d"])) for r in rows if r.get("loss/d")]
    final = [(int(r["step"]), float(r["final_fid"])) for r in rows if r.get("final_fid")]
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    tb_loss = [(e.step, e.value) for e in events.Scalars("loss/d")]
    for other in (csv_loss, tb_loss):
        assert [step for step, _ in other] == [step for step, _ in mlflow_loss] == list(range(ITERATIONS))
        assert [v for _, v in other] == pytest.approx([v for _, v in mlflow_loss], rel=1e-6)
    record = json.loads((folder / "metrics.json").read_text())
    assert final == [(ITERATIONS, pytest.approx(record["final"]["fid"]))]
    assert events.Scalars("hparams/final_fid")[0].value == pytest.approx(record["final"]["fid"], rel=1e-6)
    assert f"optimizer.lr: {float(LRS[1])}" in (folder / "csv" / "hparams.yaml").read_text()


def test_the_summary_names_the_mlflow_command(swept):
    store = swept["store"]
    assert f"mlflow ui --backend-store-uri sqlite:///{store / 'mlflow.db'}" in (swept["sweep"] / "summary.md").read_text()
    assert f"tensorboard --logdir {swept['sweep']}" in swept["stdout"]


def test_a_resumed_job_appends_to_its_mlflow_run(swept):
    """The first job resumed for a second epoch logs to the run it made, which now has both epochs' losses."""
    folder = swept["resumed"]
    record = json.loads((folder / "metrics.json").read_text())
    assert record["mlflow_runs"] == swept["before"]
    assert len(swept["server"].runs(str(swept["sweep"]))) == 2  # no new run
    run = _run_of(swept, folder)
    assert [step for step, _ in swept["server"].history(run["info"]["run_id"], "loss/d")] == list(range(2 * ITERATIONS))
    metrics = _metrics(run)
    assert metrics["iteration"] == 2 * ITERATIONS and _tags(run)["status"] == "finished"
    assert metrics["final_fid"] == pytest.approx(record["final"]["fid"], rel=1e-12)


def test_logger_mlflow_without_mlflow_is_one_line_and_no_folder(tmp_path, monkeypatch, capsys):
    from ganexp.cli import command_line

    monkeypatch.setitem(sys.modules, "mlflow", None)  # what importlib finds when mlflow is not installed
    monkeypatch.chdir(tmp_path)
    assert command_line(lambda: pytest.fail("the run started"), ["logger=mlflow", *SWEEP]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "logger (MLFlowLogger) needs the mlflow package" in lines[0], lines
    assert '".[mlflow]"' in lines[0] and list(tmp_path.iterdir()) == []
