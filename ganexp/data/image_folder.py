"""Any folder of images (searched recursively), resized and center-cropped to `size`."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from ganexp.data.base import TensorDataModule, scale_unit
from ganexp.errors import ConfigError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class ImageFolderDataModule(TensorDataModule):
    def __init__(self, path: str | None = None, size: int = 32, channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        if not path:
            raise ConfigError("data=image_folder needs data.path=/folder/with/images")
        if channels not in (1, 3):
            raise ConfigError(f"data.channels={channels} must be 1 (grey) or 3 (RGB)")
        self.path, self.size, self.channels = Path(path).expanduser(), int(size), int(channels)

    def load(self):
        files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in EXTENSIONS)
        if not files:
            raise ConfigError(f"data.path={self.path} holds no images ({', '.join(sorted(EXTENSIONS))})")
        mode = ImageReadMode.GRAY if self.channels == 1 else ImageReadMode.RGB
        images = [TF.center_crop(TF.resize(decode_image(str(f), mode=mode), self.size, antialias=True), self.size)
                  for f in files]
        return scale_unit(torch.stack(images).float() / 255.0, self.value_range), None
