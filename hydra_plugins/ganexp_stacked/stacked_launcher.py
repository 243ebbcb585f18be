"""`hydra/launcher=stacked`: a sweep's jobs that differ only in stackable settings run as one stacked model.

The plugin is the Hydra side only (Hydra instantiates launchers from the `hydra_plugins` package); what a
stack is and how it trains is ganexp/sweeps/stacked.py and ganexp/gan/stack.py.
"""
from __future__ import annotations

from typing import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class StackedLauncher(Launcher):
    def __init__(self, max_stack: int = 16) -> None:
        super().__init__()
        self.max_stack = int(max_stack)  # config, hydra_context and task_function: set by setup, as in Hydra's launchers

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from ganexp.run.compose import install

        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        install(hydra_context.config_loader)  # each job composed once: the pre-run check's configs (config/compose.py)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from ganexp.sweeps.stacked import launch

        return launch(self, job_overrides, initial_job_idx)
