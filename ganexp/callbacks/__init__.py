"""Callbacks, one module each, composed by conf/callbacks/ (one yaml per callback); base.Periodic is the
shared "every N iterations and at the end, unless diverged". Re-exported: the names old checkpoints store."""
from ganexp.callbacks.checkpoint import PeriodicCheckpoint
from ganexp.callbacks.curves import TrainingCurves
from ganexp.callbacks.progression import ImageProgression
from ganexp.callbacks.samples import SampleGrid
from ganexp.callbacks.toy import ToyFigures, feature_layer_problem

__all__ = ["PeriodicCheckpoint", "SampleGrid", "TrainingCurves", "ImageProgression", "ToyFigures",
           "feature_layer_problem"]
