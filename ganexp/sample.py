"""Draw samples from a trained generator.

    python -m ganexp.sample RUN_DIR_OR_CKPT --n 64 --out grid.png
    python -m ganexp.sample RUN_DIR_OR_CKPT --n 1000 --out samples.npz
    python -m ganexp.sample RUN_DIR_OR_CKPT --n 16 --truncation 0.7 --out grid.png
    python -m ganexp.sample RUN_DIR_OR_CKPT --n 16 --walk 10 --out walk.gif

PATH may also be a generator export (.safetensors). `.png`: an image grid (toy 2-D data: a scatter plot).
`.npz`: key `images`, uint8, [N, H, W] grey or [N, C, H, W] colour (toy data: `points`, float32 [N, 2]).
--truncation t draws z from the normal prior cut at ±t (torch.nn.init.trunc_normal_): a seed's samples then
depend on --n. `--walk K`: a closed walk of --n grid cells, each through --points fixed latents by spherical
interpolation, K frames from each point to the next, as a .gif (or an .mp4 with imageio-ffmpeg installed).
--out is replaced only with --force, never through a link; --n is sized against this machine's memory.
"""
from __future__ import annotations

import argparse
import importlib.util
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
WALK_SUFFIXES = (".gif", ".mp4")
FRAME_MS = 100  # a walk's frame: 10 frames a second
FLOAT = 4  # bytes of a float32
CHUNK = 1024  # samples a generator call
PNG_COPIES = 14  # float32 copies of each image a .png grid makes (3 channels, normalized, padded, scaled): measured


def latents(config: dict, n: int, seed: int = 0, truncation: float | None = None) -> torch.Tensor:
    """n latents of the run's prior, drawn whole: torch's CPU normal_ fills a short tail its own way, so drawing
    them in chunks would make a seed's samples depend on --n. `truncation`: the normal cut at ±t."""
    prior, seeded = build_prior(config["noise"]), torch.Generator().manual_seed(seed)
    return prior.sample(n, generator=seeded) if truncation is None else prior.truncated(n, truncation, seeded)


@torch.no_grad()
def generate(generator: torch.nn.Module, z: torch.Tensor, keep=None) -> torch.Tensor:
    """generator(z), `keep(chunk)` of each CHUNK of them (e.g. uint8 images) written into one tensor."""
    keep = keep or (lambda chunk: chunk)
    first = keep(generator(z[:1]))
    samples = torch.empty((len(z), *first.shape[1:]), dtype=first.dtype)
    for start in range(0, len(z), CHUNK):
        samples[start:start + CHUNK] = keep(generator(z[start:start + CHUNK]))
    return samples


def draw(generator: torch.nn.Module, config: dict, n: int, seed: int = 0, keep=None,
         truncation: float | None = None) -> torch.Tensor:
    """n samples of a seed's latents (see `generate`)."""
    return generate(generator, latents(config, n, seed, truncation), keep)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation row by row from a [n, d] (t = 0, exactly) to b (t = 1) along the great circle
    through their directions; a straight line where they are parallel."""
    omega = torch.arccos(torch.nn.functional.cosine_similarity(a, b, dim=1).clamp(-1, 1))[:, None]
    sin = torch.sin(omega)
    straight = sin < 1e-6
    safe = torch.where(straight, torch.ones_like(sin), sin)
    start = torch.where(straight, torch.full_like(sin, 1 - t), torch.sin((1 - t) * omega) / safe)
    end = torch.where(straight, torch.full_like(sin, t), torch.sin(t * omega) / safe)
    return start * a + end * b


def grid(images: torch.Tensor, config: dict) -> torch.Tensor:
    """uint8 [H, W, 3]: the .png grid of `images`, as save_image writes it."""
    from torchvision.utils import make_grid

    tiles = make_grid(images, nrow=int(np.ceil(np.sqrt(len(images)))), normalize=True, value_range=value_range(config))
    return tiles.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8)


def walk(generator: torch.nn.Module, config: dict, n: int, points: int, steps: int, seed: int = 0,
         truncation: float | None = None) -> list[torch.Tensor]:
    """A closed walk: n cells, each through `points` fixed latents of the seed (point p is latents p·n … p·n+n-1),
    `steps` frames from each to the next and the last back to the first: points·steps grids (`grid`), frame
    p·steps showing point p."""
    z = latents(config, points * n, seed, truncation).view(points, n, -1)
    return [grid(generate(generator, slerp(z[p], z[(p + 1) % points], j / steps)), config)
            for p in range(points) for j in range(steps)]


def save_walk(frames: list[torch.Tensor], grey: bool, out: Path) -> None:
    """A walk's frames as a looping .gif (grey images exactly: one palette entry a level) or an .mp4."""
    with writes.replacing(out) as tmp:
        if out.suffix == ".gif":
            from PIL import Image

            images = [Image.fromarray((f[..., 0] if grey else f).numpy()) for f in frames]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=FRAME_MS, loop=0)
        else:
            import imageio_ffmpeg

            height, width = frames[0].shape[:2]
            writer = imageio_ffmpeg.write_frames(str(tmp), (width, height), fps=1000 / FRAME_MS, macro_block_size=2)
            writer.send(None)
            for frame in frames:
                writer.send(np.ascontiguousarray(frame.numpy()))
            writer.close()


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
    parser.add_argument("--out", type=Path, default=Path("samples.png"),
                        help=".png grid or .npz arrays; with --walk a .gif (or .mp4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent sample")
    parser.add_argument("--truncation", type=float, help="draw every |z_i| > t again (normal prior), e.g. 0.7")
    parser.add_argument("--walk", type=int, help="a latent walk, this many frames from each fixed point to the next")
    parser.add_argument("--points", type=int, help="fixed points of a --walk (default 4)")
    parser.add_argument("--force", action="store_true", help="replace --out if it is an existing file")
    parser.add_argument("--debug", action="store_true", help="a traceback instead of a one-line error")
    args = parser.parse_args(argv)
    try:
        if args.n < 1:
            raise ConfigError(f"--n {args.n} must be >= 1")
        suffixes = check_walk(args)
        check_out(args.out, suffixes, force=args.force)  # before the checkpoint is read: no work lost to a bad --out
        generator, config, _ = load_generator(args.path)
        if args.walk is not None:
            return sample_walk(args, generator, config)
        uint8 = args.out.suffix == ".npz" and is_image(config)  # quantized chunk by chunk: a byte a number kept
        size = sample_size(config)
        check_n(args.n, config, size if uint8 else FLOAT * size * (PNG_COPIES if is_image(config) else 1))
        samples = draw(generator, config, args.n, args.seed,
                       keep=(lambda chunk: to_uint8(chunk, value_range(config))) if uint8 else None,
                       truncation=args.truncation)
        confine_out(args.out, Path(args.path).expanduser(), SUFFIXES, args.force)  # check_out again, after the work
        save(samples, config, args.out)
    except ConfigError as err:
        return failed("ganexp.sample", err, args.debug)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def check_walk(args) -> tuple[str, ...]:
    """The suffixes --out may have; ConfigError for a bad --walk / --points, or an .mp4 this machine cannot write."""
    if args.walk is None:
        if args.points is not None:
            raise ConfigError("--points is the number of fixed points of a --walk; give --walk K too, or drop it")
        return SUFFIXES
    if args.walk < 1:
        raise ConfigError(f"--walk {args.walk}: give the number of frames from one point to the next, >= 1")
    if args.points is not None and args.points < 2:
        raise ConfigError(f"--points {args.points}: a walk needs 2 or more fixed points")
    if args.out.suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ConfigError(f"--out {args.out}: an .mp4 needs imageio-ffmpeg (pip install -e \".[video]\"); "
                          "or give a .gif")
    return WALK_SUFFIXES


def sample_walk(args, generator: torch.nn.Module, config: dict) -> int:
    if not is_image(config):
        raise ConfigError(f"--walk makes a film of image grids, but {args.path} makes {config['data']['shape']}-d "
                          "points (toy data); sample them to a .png or .npz instead")
    points = 4 if args.points is None else args.points
    frames = points * args.walk
    size = sample_size(config)
    check_n(args.n, config, FLOAT * size * PNG_COPIES)  # one frame's images as a grid
    check_n(args.n * frames, config, 3 * size, flag="--n × frames")  # every frame's uint8 grid
    grids = walk(generator, config, args.n, points, args.walk, args.seed, args.truncation)
    confine_out(args.out, Path(args.path).expanduser(), WALK_SUFFIXES, args.force)
    save_walk(grids, int(config["data"]["shape"][0]) == 1, args.out)
    print(f"wrote a walk of {frames} frames ({args.n} cells, {points} points) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
