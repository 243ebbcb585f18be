"""Datamodules: the whole dataset as one tensor on the training device, served by index batches (base.py)."""
