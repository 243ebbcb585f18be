"""README's sweep section, each command as written (tiny budgets appended): what a reader copies must run."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.helpers import ROOT, run_train

TINY = ["trainer.limit_train_batches=2", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "image_every=0"]
SCORED = ["eval.n=250", "eval.n_final=500", "eval_every=0"]  # a search needs a score; the grids rank by losses
SMALLER = {"hydra.sweeper.n_trials": "3"}  # a value the README gives, made smaller


def sweep_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Sweeps"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].split(" # ")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_sweep_section_has_the_commands_this_file_runs():
    commands = sweep_commands()
    assert sum(c.startswith("python train.py -m") for c in commands) == 4
    assert any("hydra/launcher=stacked" in c for c in commands) and any("sweep=lr_smoothing_noise" in c for c in commands)


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in sweep_commands() if c.startswith("python train.py")])
def test_each_readme_sweep_runs_as_written(command, tmp_path):
    args = [a if a.split("=")[0] not in SMALLER else f"{a.split('=')[0]}={SMALLER[a.split('=')[0]]}"
            for a in shlex.split(command)[2:]]
    result = run_train(*args, *TINY, *(SCORED if "sweep=search" in command else ["eval=none"]), cwd=tmp_path,
                       timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1 and (sweeps[0] / "summary.md").is_file()
    compare = [c for c in sweep_commands() if c.startswith("python -m ganexp.compare")][0]
    line = compare.replace("outputs/multirun/<date>/<time>", str(sweeps[0])).replace(" [--metric fid]", "")
    shown = subprocess.run([sys.executable, *shlex.split(line)[1:]], capture_output=True, text=True, cwd=tmp_path)
    assert shown.returncode == 0 and "| # |" in shown.stdout, shown.stderr[-2000:]
