"""scikit-learn's bundled 8×8 digits: trains with no network and no files.

digits has no official split: `digits_split` keeps a fixed 360 of its 1,797 images for testing. The GAN and
the domain classifier train on the other 1,437, so a generator that memorized them cannot reach the
real-vs-real floor by copying them.
"""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import Tensor

from ganexp.data.base import TensorDataModule, scale_unit

TEST_SIZE = 360


def digits_split(train: bool) -> tuple[Tensor, Tensor]:
    """(images in [0, 1] as float32 [N, 1, 8, 8], int64 labels) of the train or test split."""
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # pixel values are 0..16
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    keep = order[:-TEST_SIZE] if train else order[-TEST_SIZE:]
    return images[keep], torch.from_numpy(digits.target)[keep]


class DigitsDataModule(TensorDataModule):
    metrics_name = "digits"

    def load(self):
        images, labels = digits_split(train=True)  # never the metrics' test images
        return scale_unit(images, self.value_range), labels
