"""scikit-learn's bundled 8×8 digits (1,797 images): trains with no network and no files."""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from ganexp.data.base import TensorDataModule, scale_unit


class DigitsDataModule(TensorDataModule):
    metrics_name = "digits"

    def load(self):
        digits = load_digits()
        images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # pixel values are 0..16
        return scale_unit(images, self.value_range), torch.from_numpy(digits.target)
