"""Score a run, a checkpoint or a file of samples; one line per metric, with its real-vs-real floor.

    python -m ganexp.evaluate outputs/<date>/<time>            # its checkpoints/last.ckpt
    python -m ganexp.evaluate path/to/best.ckpt --n 10000
    python -m ganexp.evaluate samples.npz --data mnist          # key `images`, uint8

Fewer samples than the data's metrics need (min_samples in ganexp.metrics.scores' registry) is a
one-line error naming them, for an .npz exactly as for --n.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from ganexp.errors import ConfigError
from ganexp.metrics.classifier import LABELLED
from ganexp.metrics.evaluator import Evaluator, quantize


def images_from_npz(path: Path) -> torch.Tensor:
    """`images` as uint8 [N, C, H, W] ([N, H, W] and [N, H, W, C] with C in 1, 3 are accepted)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f:
                raise ConfigError(f"{path} has no key 'images' (it has: {', '.join(f.files) or 'nothing'})")
            images = f["images"]
    except MemoryError:  # numpy's header claims a shape this machine cannot hold: the file lies or is not for us
        raise ConfigError(f"cannot read {path}: its header claims more images than memory holds") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"cannot read {path} as .npz (truncated, empty or not an .npz: {why})") from None
    if images.dtype != np.uint8:
        raise ConfigError(f"{path}: images are {images.dtype}; save them as uint8 in 0..255")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4:
        raise ConfigError(f"{path}: images are {list(images.shape)}-shaped; expected [N, H, W] or [N, C, H, W]")
    return torch.from_numpy(np.ascontiguousarray(images))


def samples_from_checkpoint(path: Path, n: int, seed: int, root: str | None) -> tuple[torch.Tensor, Evaluator]:
    """Samples of a run, .ckpt or .safetensors export, and an evaluator for the data it names."""
    from ganexp.build import build_datamodule
    from ganexp.sample import generate

    samples, config = generate(path, n, seed)
    data_cfg = dict(config["data"])
    if root:  # where the files are on this machine (an export carries no path)
        data_cfg["root"] = root
    datamodule = build_datamodule(data_cfg, source=path)
    if datamodule.metrics_name == "toy":
        datamodule.setup("fit")  # toy scores need the training sample's standardization
    evaluator = Evaluator.for_datamodule(datamodule)
    if samples.dim() == 4:
        samples = quantize(samples, datamodule.value_range)
    return samples, evaluator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ganexp.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a run folder (checkpoints/last.ckpt), a .ckpt, a .safetensors export or a .npz")
    parser.add_argument("--data", choices=LABELLED, help="the dataset of an .npz's images")
    parser.add_argument("--n", type=int, default=10_000, help="samples drawn from a checkpoint (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent sample")
    parser.add_argument("--data-root", help="where MNIST / Fashion-MNIST live (default: the run's data.root)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--debug", action="store_true", help="a traceback instead of a one-line error")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.n < 1:  # nothing to draw; how many the metrics need is the evaluator's check, once the data is known
            raise ConfigError(f"--n {args.n} must be a positive number of samples")
        if args.path.suffix == ".npz":
            if not args.data:
                raise ConfigError(f"{args.path}: say which dataset the images are from with --data {{{','.join(LABELLED)}}}")
            if not args.path.is_file():
                raise ConfigError(f"no file {args.path}")
            samples, evaluator = images_from_npz(args.path), Evaluator(args.data, root=args.data_root)
        else:
            samples, evaluator = samples_from_checkpoint(args.path, args.n, args.seed, args.data_root)
        try:
            scores = evaluator.score(samples)
        except ConfigError as err:  # too few (or wrong) samples: say where they came from
            where = args.path if args.path.suffix == ".npz" else f"--n {args.n}"
            raise ConfigError(f"{where}: {err}") from None
        floor = evaluator.floor(len(samples))
    except ConfigError as err:
        if args.debug or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"ganexp.evaluate: error: {err}", file=sys.stderr)
        return 2
    protocol = evaluator.protocol(n=len(samples))
    if args.json:
        print(json.dumps({"scores": scores, "floor": floor, "protocol": protocol}))
        return 0
    clf = protocol.get("classifier")
    about = f", classifier {clf['sha256'][:12]} ({clf['test_accuracy']:.2%} test accuracy)" if clf else ""
    print(f"# {len(samples)} samples vs {protocol['dataset']} ({protocol['split']}){about}, "
          f"{time.perf_counter() - start:.1f} s")
    for name, value in scores.items():
        print(f"{name:<10} {value:>10.4f}   real-vs-real floor {floor[name]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
