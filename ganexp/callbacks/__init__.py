"""Callbacks, one module each, composed by conf/callbacks/ (one yaml per callback).

checkpoint   PeriodicCheckpoint: last.ckpt every N iterations and at the end (runs last)
samples      SampleGrid: the fixed-latent grid (or toy scatter) every N iterations
curves       TrainingCurves: every logged scalar over epochs (curves.png / .csv)
progression  ImageProgression: one row of fixed-latent samples per epoch (progression.png)
toy          ToyFigures: 2-d data's scatter, decision surface and D feature space
base         Periodic: the shared "every N iterations and at the end, unless diverged"
"""
from ganexp.callbacks.checkpoint import PeriodicCheckpoint
from ganexp.callbacks.curves import TrainingCurves
from ganexp.callbacks.progression import ImageProgression
from ganexp.callbacks.samples import SampleGrid
from ganexp.callbacks.toy import ToyFigures, feature_layer_problem

__all__ = ["PeriodicCheckpoint", "SampleGrid", "TrainingCurves", "ImageProgression", "ToyFigures",
           "feature_layer_problem"]
