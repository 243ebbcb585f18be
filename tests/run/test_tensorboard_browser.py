"""What a person sees in TensorBoard: a real 4-job sweep (two swept keys), a real `tensorboard` server and Debian's
headless chromium, driven over the DevTools protocol because TensorBoard's pages live in shadow roots that
`--dump-dom` does not print. The HParams table must show the swept keys and the monitored metric without
ticking anything, and every image card's run label must start with its own swept values."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import run_train

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian: apt-get install chromium; .ci/run installs it)"),
]
websocket = pytest.importorskip("websocket", reason="the DevTools client needs websocket-client (the dev extra)")
pytest.importorskip("tensorboard", reason="no tensorboard")

SWEPT = {"loss.label_smoothing": ("0", "0.1"), "optimizer.lr": ("0.0001", "0.0005")}  # as Hydra writes them; 0 is a prefix of 0.1
ARGS = ["data=toy", "model=toy_mlp", "hydra/launcher=stacked", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "log_every=1",
        "eval_every=0", "eval.n=300", "eval.n_final=300"]
WAIT = 30  # seconds for each page to render

# Every element of the page, shadow roots included; then what the HParams query pane ticks and the grid heads.
WALK = "const all = []; const walk = r => { for (const e of r.querySelectorAll('*')) { all.push(e); " \
       "if (e.shadowRoot) walk(e.shadowRoot); } }; walk(document);"
HPARAMS = f"""(() => {{ {WALK}
  const pane = all.filter(e => e.tagName === 'TF-HPARAMS-QUERY-PANE');
  const boxes = all.filter(e => e.tagName === 'PAPER-CHECKBOX' && pane.some(p => p.shadowRoot.contains(e)))
                   .map(e => [e.textContent.trim(), !!e.checked]);
  const grid = all.filter(e => e.tagName === 'TF-HPARAMS-TABLE-VIEW');
  const cells = all.filter(e => e.tagName === 'VAADIN-GRID-CELL-CONTENT' && grid.some(g => g.shadowRoot.contains(e)))
                   .map(e => e.textContent.trim());
  return boxes.length > 8 && cells.some(c => c.includes('=')) ? JSON.stringify({{boxes, cells}}) : null; }})()"""
IMAGES = f"""(() => {{ {WALK}
  const cards = all.filter(e => e.tagName === 'TF-CARD-HEADING').map(h => [
    h.shadowRoot.querySelector('.name')?.textContent.trim(), h.shadowRoot.querySelector('.run')?.textContent.trim()]);
  return cards.length >= {len(SWEPT) * 2} && cards.every(c => c[0] && c[1]) ? JSON.stringify(cards) : null; }})()"""


def _until(what, seconds: float, why):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if (found := what()) is not None:
            return found
        time.sleep(0.3)
    raise AssertionError(f"not within {seconds} s: {why()}")


class Browser:
    """Headless chromium with its DevTools port chosen by the OS (DevToolsActivePort), one page, always stopped."""

    def __init__(self, tmp: Path):
        self.profile = Path(tempfile.mkdtemp(dir=tmp))
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
             "--window-size=1600,1200", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        active = self.profile / "DevToolsActivePort"
        port = _until(lambda: active.read_text().split()[0] if active.is_file() and active.read_text().strip() else None,
                      WAIT, lambda: f"chromium wrote no {active}")
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
        self.socket, self.calls = websocket.create_connection(url, timeout=WAIT), 0

    def call(self, method: str, **params) -> dict:
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while (reply := json.loads(self.socket.recv())).get("id") != self.calls:
            pass
        return reply["result"]

    def rendered(self, url: str, script: str):
        """What `script` returns once the page at `url` has rendered it (it returns null until then)."""
        self.call("Page.navigate", url=url)
        value = lambda: self.call("Runtime.evaluate", expression=script, returnByValue=True)["result"].get("value")
        return json.loads(_until(value, WAIT, lambda: f"{url} did not render"))

    def stop(self) -> None:
        try:
            self.socket.close()
        finally:
            os.killpg(self.process.pid, 9)
            self.process.wait(10)


class Board:
    """`tensorboard --logdir` on 127.0.0.1, port 0 (the OS picks; TensorBoard prints it), always stopped."""

    def __init__(self, logdir: Path, log: Path):
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0",
             "--load_fast", "false", "--reload_interval", "0"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        found = lambda: re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())
        self.url = f"http://127.0.0.1:{_until(found, WAIT, lambda: log.read_text()[-2000:]).group(1)}"
        runs = lambda: (json.load(urllib.request.urlopen(f"{self.url}/data/runs", timeout=10)) or None)
        self.runs = _until(runs, WAIT, lambda: "TensorBoard loaded no runs")

    def stop(self) -> None:
        os.killpg(self.process.pid, 15)
        self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    sweep = tmp / "sweep"
    grid = [f"{key}={','.join(values)}" for key, values in SWEPT.items()]
    result = run_train("-m", *grid, f"hydra.sweep.dir={sweep}", *ARGS, cwd=tmp, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    board = Board(sweep, tmp / "tensorboard.log")
    try:
        browser = Browser(tmp)
        try:
            yield {"hparams": browser.rendered(f"{board.url}/#hparams", HPARAMS),
                   "images": browser.rendered(f"{board.url}/#images", IMAGES), "runs": board.runs}
        finally:
            browser.stop()
    finally:
        board.stop()


def test_the_hparams_table_shows_the_swept_keys_and_the_monitored_metric_unticked_nothing(seen):
    ticked = [name for name, on in seen["hparams"]["boxes"] if on]
    assert ticked[:2] == sorted(SWEPT)  # the swept keys lead, ticked
    assert {"hparams/final_swd", "hparams/best_swd"} <= set(ticked)  # the monitored metric (toy data: swd)
    heads = seen["hparams"]["cells"]
    columns = heads[heads.index("Trial ID"):]
    assert columns[2:4] == sorted(SWEPT) and "hparams/final_swd" in columns  # as the table's first columns


def test_each_image_label_starts_with_its_own_swept_values(seen):
    cards = seen["images"]
    assert {tag for tag, _ in cards} == {"samples/scatter"}
    labels = sorted({run for _, run in cards})
    assert len(labels) == 4 == len(seen["runs"])
    wanted = sorted(",".join(f"{k}={v}" for k, v in zip(SWEPT, values))
                    for values in [(a, b) for a in SWEPT["loss.label_smoothing"] for b in SWEPT["optimizer.lr"]])
    assert sorted(re.match(r"[^,]*,[^,/]*", label).group(0) for label in labels) == wanted
