"""`hydra/launcher=sequential`, ganexp's default: Hydra's BasicLauncher (one job after another, in this process)
whose config loader takes each job from the pre-run check's compositions (ganexp/run/compose.py), so that
a job is composed once instead of three times. `hydra/launcher=basic` is Hydra's own.
"""
from __future__ import annotations

from hydra._internal.core_plugins import basic_launcher  # Hydra's launcher has no public home
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class SequentialLauncher(basic_launcher.BasicLauncher):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from ganexp.run.compose import install

        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        install(hydra_context.config_loader)
