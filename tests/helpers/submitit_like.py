"""Stands in for `python -m submitit.core._submit FOLDER` in tests of ganexp/run/slurm_job.py: it is signalled
(SIGUSR2, as SLURM's early time-limit notice) before it sets its own handler, as submitit is while it starts."""
import os
import signal
import sys

from ganexp.run import signals

if __name__ == "__main__":
    os.kill(os.getpid(), signal.SIGUSR2)  # while "starting": Python's default would end the process here
    signal.signal(signal.SIGUSR2, lambda signum, frame: None)  # submitit's handler, set once the job is loaded
    print(f"args={sys.argv[1:]} early={signals._early} managed={signals.managed()}")
