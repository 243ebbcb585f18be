"""How `hydra/launcher=slurm` starts Python in each job: `python -u -m ganexp.run.slurm_job -u -m
submitit.core._submit FOLDER` (submitit appends what follows the module to its `python` command). A SIGUSR2 that
comes before submitit has set its handler is remembered (ganexp/run/signals.py `remember_early`), then
submitit's own entry point runs as `python -m` would run it."""
from __future__ import annotations

import runpy
import sys

from ganexp.run.signals import remember_early


def main(argv: list[str]) -> None:
    remember_early()
    while argv[:1] == ["-u"]:  # unbuffered already: this module runs under `python -u`
        argv = argv[1:]
    if len(argv) < 2 or argv[0] != "-m":
        sys.exit(f"usage: python -m ganexp.run.slurm_job [-u] -m MODULE [ARG ...] (got {' '.join(argv) or 'nothing'})")
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)

if __name__ == "__main__":
    main(sys.argv[1:])
