"""Draw samples from a trained generator.

    python -m ganexp.sample RUN_DIR_OR_CKPT --n 64 --out grid.png
    python -m ganexp.sample RUN_DIR_OR_CKPT --n 1000 --out samples.npz

PATH may also be a generator export (`python -m ganexp.export`, .safetensors).
`.png`: an image grid (toy 2-D data: a scatter plot). `.npz`: key `images`, uint8,
[N, H, W] for grey and [N, C, H, W] for colour (toy data: key `points`, float32 [N, 2]).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ganexp.build import build_prior
from ganexp.errors import ConfigError
from ganexp.export import check_out
from ganexp.files import load_generator

SUFFIXES = (".png", ".npz")


@torch.no_grad()
def generate(path: str | Path, n: int, seed: int = 0) -> tuple[torch.Tensor, dict]:
    generator, config, _ = load_generator(path)
    z = build_prior(config["noise"]).sample(n, generator=torch.Generator().manual_seed(seed))
    return torch.cat([generator(chunk) for chunk in z.split(1024)]), config


def to_uint8(images: torch.Tensor, value_range) -> np.ndarray:
    from ganexp.metrics.evaluator import quantize

    images = quantize(images, value_range)
    return (images[:, 0] if images.shape[1] == 1 else images).numpy()


def save(samples: torch.Tensor, config: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    value_range = config["data"].get("value_range")
    value_range = tuple(value_range) if value_range else None
    if out.suffix == ".npz":
        if samples.dim() == 4:
            np.savez_compressed(out, images=to_uint8(samples, value_range))
        else:
            np.savez_compressed(out, points=samples.float().numpy())
    elif out.suffix == ".png":
        if samples.dim() == 4:
            from torchvision.utils import save_image

            save_image(samples, out, nrow=int(np.ceil(np.sqrt(len(samples)))), normalize=True, value_range=value_range)
        else:
            from ganexp.figures import save_png, scatter_panels_figure

            points = samples.float().numpy()
            save_png(scatter_panels_figure(points[:0], [(f"{len(points)} samples", points)]), out)
    else:
        raise ConfigError(f"--out {out}: use a .png (grid) or .npz (arrays) file name")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ganexp.sample", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a run folder (uses checkpoints/last.ckpt), a .ckpt or a .safetensors export")
    parser.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    parser.add_argument("--out", type=Path, default=Path("samples.png"), help=".png grid or .npz arrays")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent sample")
    parser.add_argument("--debug", action="store_true", help="a traceback instead of a one-line error")
    args = parser.parse_args(argv)
    try:
        if args.n < 1:
            raise ConfigError(f"--n {args.n} must be >= 1")
        check_out(args.out, SUFFIXES)  # before the checkpoint is read: no work is lost to a bad --out
        samples, config = generate(args.path, args.n, args.seed)
        save(samples, config, args.out)
    except ConfigError as err:
        if args.debug or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"ganexp.sample: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
