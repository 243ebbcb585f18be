"""Draw samples from a trained generator.

    python -m ganexp.sample RUN_DIR_OR_CKPT --n 64 --out grid.png
    python -m ganexp.sample RUN_DIR_OR_CKPT --n 1000 --out samples.npz

PATH may also be a generator export (.safetensors). `.png`: an image grid (toy 2-D data: a scatter plot).
`.npz`: key `images`, uint8, [N, H, W] grey or [N, C, H, W] colour (toy data: `points`, float32 [N, 2]).
--out is replaced only with --force, never through a link; --n is sized against this machine's memory.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ganexp.io import writes
from ganexp.run.build import build_prior
from ganexp.errors import ConfigError, failed
from ganexp.export import check_out, confine_out
from ganexp.io.files import load_generator
from ganexp.run.validate import machine_memory

SUFFIXES = (".png", ".npz")
FLOAT = 4  # bytes of a float32
CHUNK = 1024  # samples a generator call
PNG_COPIES = 14  # float32 copies of each image a .png grid makes (3 channels, normalized, padded, scaled): measured


@torch.no_grad()
def draw(generator: torch.nn.Module, config: dict, n: int, seed: int = 0, keep=None) -> torch.Tensor:
    """n samples, `keep(chunk)` of each CHUNK of them (e.g. uint8 images) written into one tensor."""
    # The latents are drawn whole: torch's CPU normal_ fills a short tail its own way, so drawing them in chunks
    # would make a seed's samples depend on --n.
    z = build_prior(config["noise"]).sample(n, generator=torch.Generator().manual_seed(seed))
    keep = keep or (lambda chunk: chunk)
    first = keep(generator(z[:1]))
    samples = torch.empty((n, *first.shape[1:]), dtype=first.dtype)
    for start in range(0, n, CHUNK):
        samples[start:start + CHUNK] = keep(generator(z[start:start + CHUNK]))
    return samples


def sample_size(config: dict) -> int:
    """Numbers in one sample: an image's C*H*W, a toy point's 2."""
    return math.prod(int(d) for d in config["data"]["shape"])


def check_n(n: int, config: dict, kept: int, flag: str = "--n") -> None:
    """ConfigError unless n samples fit this machine's memory (train.py sizes its batches so): their latents and
    `kept` bytes a sample for what is made of each."""
    latent = int(config["noise"]["latent_dim"])
    each = FLOAT * latent + kept
    if n * each > (have := machine_memory()):
        raise ConfigError(f"{flag} {n} needs about {n * each / 2**30:,.1f} GiB ({each} bytes a sample, its latent of "
                          f"{latent} numbers included), more than this machine's {have / 2**30:.1f} GiB; "
                          f"give {flag} {have // each} or fewer")


def is_image(config: dict) -> bool:
    return len(config["data"]["shape"]) == 3


def value_range(config: dict):
    value_range = config["data"].get("value_range")
    return tuple(value_range) if value_range else None


def to_uint8(images: torch.Tensor, value_range) -> torch.Tensor:
    """Generator images in `value_range` -> uint8 as the .npz holds them: [N, H, W] grey, [N, C, H, W] colour."""
    from ganexp.data.base import quantize

    images = quantize(images, value_range)
    return images[:, 0] if images.shape[1] == 1 else images


def save(samples: torch.Tensor, config: dict, out: Path) -> None:
    """Write draw()'s samples to `out` (checked by check_out) through ganexp's confined writer."""
    with writes.replacing(out) as tmp:
        if out.suffix == ".npz":
            with open(tmp, "wb") as f:  # a file object: savez adds no suffix of its own
                if samples.dtype == torch.uint8:
                    np.savez_compressed(f, images=samples.numpy())
                else:
                    np.savez_compressed(f, points=samples.float().numpy())
        elif is_image(config):
            from torchvision.utils import save_image

            save_image(samples, tmp, format="PNG", nrow=int(np.ceil(np.sqrt(len(samples)))), normalize=True,
                       value_range=value_range(config))
        else:
            from ganexp.callbacks.figures import save_png, scatter_panels_figure

            points = samples.float().numpy()
            save_png(scatter_panels_figure(points[:0], [(f"{len(points)} samples", points)]), tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ganexp.sample", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a run folder (uses checkpoints/last.ckpt), a .ckpt or a .safetensors export")
    parser.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    parser.add_argument("--out", type=Path, default=Path("samples.png"), help=".png grid or .npz arrays")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent sample")
    parser.add_argument("--force", action="store_true", help="replace --out if it is an existing file")
    parser.add_argument("--debug", action="store_true", help="a traceback instead of a one-line error")
    args = parser.parse_args(argv)
    try:
        if args.n < 1:
            raise ConfigError(f"--n {args.n} must be >= 1")
        check_out(args.out, SUFFIXES, force=args.force)  # before the checkpoint is read: no work lost to a bad --out
        generator, config, _ = load_generator(args.path)
        uint8 = args.out.suffix == ".npz" and is_image(config)  # quantized chunk by chunk: a byte a number kept
        size = sample_size(config)
        check_n(args.n, config, size if uint8 else FLOAT * size * (PNG_COPIES if is_image(config) else 1))
        samples = draw(generator, config, args.n, args.seed,
                       keep=(lambda chunk: to_uint8(chunk, value_range(config))) if uint8 else None)
        confine_out(args.out, Path(args.path).expanduser(), SUFFIXES, args.force)  # check_out again, after the work
        save(samples, config, args.out)
    except ConfigError as err:
        return failed("ganexp.sample", err, args.debug)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
