"""Any folder of images (searched recursively), resized and center-cropped to `size`.

Each file is scaled to [0, 1] by its own bit depth: 8-bit files / 255 (converted to grey or RGB by PIL,
alpha dropped), 16-bit grey / 65535, 32-bit integer / 65535 when every value lies in 0..65535, 32-bit float
as is when in [0, 1]; other integer or float images are refused, having no known full scale.

Skipped, counted in one log line: hidden files and folders (names starting with ".", e.g. macOS's
"._name.png"); animated files give their first frame only. A file that cannot be decoded, or one larger
than MAX_PIXELS, is refused in one line naming it: each header is read when the datamodule is built and
again before decoding, so a small PNG that declares 13000x13000 pixels is never decoded.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ganexp.config.checks import INT, number
from ganexp.data.base import TensorDataModule, scale_unit
from ganexp.errors import ConfigError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")  # what Pillow may take a file for: never EPS, PSD, ...
# A file is decoded whole before it is resized to data.size, as float32 (12 bytes a pixel in RGB, plus Pillow's
# own copy): a 50-Mpx RGB photo (a 45-Mpx camera's fits) takes 1.3 GB and 9 s. More is no image anyone trains a GAN
# on, and may be a bomb: a 20 KB one-bit PNG can declare 13000x13000 pixels (4 GB), under Pillow's own limit.
MAX_PIXELS = 50_000_000
log = logging.getLogger("ganexp")


def _undecodable(file: Path, err: Exception) -> ConfigError:
    return ConfigError(f"{file} cannot be decoded as an image ({err}); delete it or save it again as PNG")


def _open(file: Path) -> tuple[Image.Image, bool]:
    """`file` with its header read and nothing decoded, and whether it has more than one frame; ConfigError
    when it is no image, or too large to decode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS is lower; one line, not two
            image = Image.open(file, formats=FORMATS)
            animated = bool(getattr(image, "is_animated", False))  # reads one frame further, not all of them
    except Image.DecompressionBombError:  # over twice Pillow's own limit: it gives no size
        raise ConfigError(f"{file} is over the {MAX_PIXELS // 1_000_000} megapixels ganexp decodes; "
                          "shrink it (data.size is all a run keeps) or remove it from the folder") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise _undecodable(file, err) from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise ConfigError(f"{file} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), over the "
                          f"{MAX_PIXELS // 1_000_000} megapixels ganexp decodes; shrink it (data.size is all a run "
                          "keeps) or remove it from the folder")
    return image, animated


def read_unit(file: Path, channels: int) -> tuple[Tensor, bool]:
    """The first frame of `file` as float32 [channels, H, W] in [0, 1], and whether it has more frames."""
    image, animated = _open(file)
    try:
        with image:
            mode = image.mode  # I and F as they are: PIL's convert() would clip them to 8 bits
            pixels = np.asarray(image if mode.startswith("I") or mode == "F" else
                                image.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _undecodable(file, err) from None
    low, high = float(pixels.min()), float(pixels.max())
    if mode.startswith("I"):
        if low < 0 or high > 65535:
            raise ConfigError(f"{file} is a {mode} image with values {low:g}..{high:g}, outside 16 bits (0..65535); "
                              "save it as an 8- or 16-bit PNG")
        full = 65535.0
    elif mode == "F":
        if not (0 <= low and high <= 1):  # also refuses NaN
            raise ConfigError(f"{file} is a float image with values {low:g}..{high:g}, not in [0, 1]; "
                              "scale it to [0, 1] or save it as an 8- or 16-bit PNG")
        full = 1.0
    else:
        full = 255.0
    unit = torch.from_numpy(pixels / full)
    return (unit.permute(2, 0, 1) if unit.dim() == 3 else unit.expand(channels, *unit.shape)), animated


class ImageFolderDataModule(TensorDataModule):
    def __init__(self, path: str | None = None, size: int = 32, channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        if not path:
            raise ConfigError("data=image_folder needs data.path=/folder/with/images")
        number("data.size", size, INT, lambda s: s >= 1, "a positive number of pixels, e.g. data.size=32")
        number("data.channels", channels, INT, lambda c: c in (1, 3), "1 (grey) or 3 (RGB)")
        self.path, self.size, self.channels = Path(path).expanduser(), size, channels
        for file in self.files()[0]:  # each header, so that a bomb or a non-image fails before any run folder
            _open(file)[0].close()

    def files(self) -> tuple[list[Path], int]:
        """The images under data.path, in order, and the number of hidden ones skipped."""
        files, hidden = [], 0
        for p in sorted(self.path.rglob("*")):
            if p.suffix.lower() not in EXTENSIONS or not p.is_file():
                continue
            if any(part.startswith(".") for part in p.relative_to(self.path).parts):
                hidden += 1
            else:
                files.append(p)
        return files, hidden

    def load(self):
        files, hidden = self.files()
        if not files:
            raise ConfigError(f"data.path={self.path} holds no images ({', '.join(sorted(EXTENSIONS))})"
                              f"{f' other than {hidden} hidden files' if hidden else ''}")
        images = torch.empty(len(files), self.channels, self.size, self.size)  # filled in place: one copy in memory
        animated = 0
        for i, f in enumerate(files):
            image, more = read_unit(f, self.channels)
            animated += more
            images[i] = TF.center_crop(TF.resize(image, self.size, antialias=True), self.size)
        if hidden or animated:
            log.info("data.path=%s: read %d images; skipped %d hidden files (names or folders starting with '.'); "
                     "took the first frame of %d animated images", self.path, len(files), hidden, animated)
        return scale_unit(images, self.value_range), None
