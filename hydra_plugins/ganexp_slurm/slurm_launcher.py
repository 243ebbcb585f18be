"""`hydra/launcher=slurm`: Hydra's submitit SLURM launcher whose launch is ganexp/sweeps/slurm.py's (job states
where accounting is off; a job that ends without a result is one failed job). Without the `slurm` extra there is
no plugin here, and `hydra/launcher=slurm` says what to install (ganexp/sweeps/launch.py)."""
from __future__ import annotations

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher
except ImportError:  # pip install -e ".[slurm]"
    _SubmititSlurmLauncher = None

if _SubmititSlurmLauncher is not None:
    class SlurmLauncher(_SubmititSlurmLauncher):
        def launch(self, job_overrides, initial_job_idx):
            from ganexp.sweeps.slurm import launch

            return launch(self, job_overrides, initial_job_idx)
