"""Datamodules: the whole dataset as one tensor on the training device, served by index batches."""
from ganexp.data.base import TensorDataModule

__all__ = ["TensorDataModule"]
