"""Score a run, a checkpoint or a file of samples; one line per metric, with its real-vs-real floor.

    python -m ganexp.evaluate outputs/<date>/<time>            # its checkpoints/last.ckpt
    python -m ganexp.evaluate path/to/best.ckpt --n 10000
    python -m ganexp.evaluate samples.npz --data mnist          # key `images`, uint8
    python -m ganexp.evaluate samples/ --features inception --real real.npz   # any images, in Inception features

Fewer samples than the data's metrics need (min_samples in ganexp.metrics.scores' registry) is a
one-line error naming them, for an .npz exactly as for --n.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ganexp.config import CONF_DIR
from ganexp.errors import ConfigError, failed, shown
from ganexp.metrics.classifier import LABELLED
from ganexp.data.base import quantize
from ganexp.metrics.evaluator import FEATURES, Evaluator
from ganexp.metrics.inception import FILE_NAME
from ganexp.run.validate import machine_memory

# Bytes a sample's scores take besides the sample (measured, with room): images, the classifier's features and
# logits and the float64 copies torchmetrics keeps of them; toy points, their 256 sorted projections, the
# reference's and the floor's.
SCORE_BYTES = {"images": 6_000, "toy": 12_000}
# --data: the data options of conf/data whose reference needs no more settings (a folder of images: --real)
DATA = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml") if p.stem not in ("toy", "image_folder"))


def images_from_npz(path: Path) -> torch.Tensor:
    """`images` as uint8 [N, C, H, W] ([N, H, W] and [N, H, W, C] with C in 1, 3 are accepted). Sizes come from
    the zip directory and the .npy header and are checked before a byte is inflated: a small file can hold
    gigabytes of zeros."""
    try:
        with zipfile.ZipFile(path) as npz:
            members = {info.filename.removesuffix(".npy"): info for info in npz.infolist()}
            have = machine_memory()
            for info in members.values():
                if info.file_size > have:
                    raise ConfigError(f"{path}: member {shown(info.filename)} inflates to {_size(info.file_size)}, "
                                      f"more than this machine's {_size(have)} of memory; is it an .npz of samples?")
            if "images" not in members:
                raise ConfigError(f"{path} has no key 'images' (it has: {shown(', '.join(members), 120) or 'nothing'})")
            with npz.open(members["images"]) as f:
                images = _read_images(path, f, members["images"])
    except ConfigError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError) as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"cannot read {path} as .npz (truncated, empty or not an .npz: {shown(why, 120)})") from None
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"{path}: images are {list(images.shape)}-shaped; expected [N, H, W] or [N, C, H, W] "
                          "with C = 1 (grey) or 3 (RGB), or [N, H, W, C]")
    return torch.from_numpy(np.ascontiguousarray(images))


def _read_images(path: Path, f, info: zipfile.ZipInfo) -> np.ndarray:
    """The array of the open member `f`, its header checked first: uint8, a size that the member holds and
    this machine can score."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ConfigError(f"{path}: {info.filename} is .npy format {version}; save the images with numpy.savez")
    shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
    if dtype != np.uint8:
        raise ConfigError(f"{path}: images are {dtype}; save them as uint8 in 0..255")
    nbytes = math.prod(shape)
    if nbytes > info.file_size:
        raise ConfigError(f"cannot read {path}: {info.filename}'s header claims {list(shape)} ({nbytes:,} bytes), more "
                          f"than its {info.file_size:,} bytes hold; the file is truncated or not numpy's")
    n = shape[0] if shape else 0
    need, have = nbytes + n * SCORE_BYTES["images"], machine_memory()  # as --n is sized
    if need > have:
        raise ConfigError(f"{path}: member {info.filename} holds {n:,} images ({_size(nbytes)} uncompressed); scoring "
                          f"them needs about {_size(need)}, more than this machine's {_size(have)}; give at most "
                          f"{have * n // need:,} images")
    data = bytearray(nbytes)
    if f.readinto(data) != nbytes:
        raise ConfigError(f"cannot read {path}: {info.filename} ends before its {nbytes:,} bytes (truncated)")
    return np.frombuffer(data, np.uint8).reshape(shape, order="F" if fortran else "C")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MiB"


def _uint8(image: torch.Tensor) -> torch.Tensor:
    return (image * 255).round().to(torch.uint8)


def images_from(path: Path) -> torch.Tensor:
    """uint8 images [N, C, H, W] of an .npz (key `images`) or a folder of images (all of one size, RGB; grey tiled)."""
    if path.is_dir():
        from ganexp.data.image_folder import ImageFolderDataModule, read_unit

        files = ImageFolderDataModule(path=str(path), batch_size=1).files()[0]
        if not files:
            raise ConfigError(f"{path} holds no images")
        first = _uint8(read_unit(files[0], 3)[0])
        each = first.numel()  # the images are read into one uint8 tensor, its size known before the second is read
        need, have = len(files) * (each + SCORE_BYTES["images"]), machine_memory()
        if need > have:
            raise ConfigError(f"{path} holds {len(files):,} images of {list(first.shape)}; scoring them needs about "
                              f"{_size(need)}, more than this machine's {_size(have)}; give at most "
                              f"{have // (each + SCORE_BYTES['images']):,} images")
        images = torch.empty((len(files), *first.shape), dtype=torch.uint8)
        images[0] = first
        for k, f in enumerate(files[1:], start=1):
            image = _uint8(read_unit(f, 3)[0])
            if image.shape != first.shape:
                raise ConfigError(f"the images in {path} are not all of one size ({files[0].name}: "
                                  f"{list(first.shape)}, {f.name}: {list(image.shape)}); resize them first")
            images[k] = image
        return images
    if path.suffix == ".npz" and path.is_file():
        return images_from_npz(path)
    raise ConfigError(f"no image folder or .npz file {path}")


def datamodule_for(name: str, root: str | None):
    """The datamodule of conf/data/<name>.yaml as a run builds it, so that samples made elsewhere meet the same
    reference (and cached features) as a run's; `root`: where its files are."""
    from hydra import compose, initialize_config_dir

    from ganexp.config import CONF_DIR
    from ganexp.run.build import build_datamodule, plain

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        data = plain(compose("train", overrides=[f"data={name}"]).data)
    if root:
        data["root"] = root
    return build_datamodule(data)


def samples_from_checkpoint(path: Path, n: int, seed: int, root: str | None, features: str | None = None,
                            weights: str | None = None) -> tuple[torch.Tensor, Evaluator]:
    """Samples of a run, .ckpt or .safetensors export, and an evaluator for the data it names; --n is checked
    against this machine's memory before the data or the classifier are loaded."""
    from ganexp.run.build import build_datamodule
    from ganexp.io.files import load_generator
    from ganexp.sample import FLOAT, check_n, draw, is_image, sample_size

    generator, config, _ = load_generator(path)
    image = is_image(config)
    kept = sample_size(config) * (1 if image else FLOAT)  # uint8 images, float32 points
    check_n(n, config, kept + SCORE_BYTES["images" if image else "toy"])
    data_cfg = dict(config["data"])
    if root:  # where the files are on this machine (an export carries no path)
        data_cfg["root"] = root
    datamodule = build_datamodule(data_cfg, source=path)
    if datamodule.metrics_name == "toy":
        datamodule.setup("fit")  # toy scores need the training sample's standardization
    if features is None:  # the run's own feature space (an export carries no eval settings: auto)
        stored = config.get("eval") if isinstance(config.get("eval"), dict) else {}
        features = stored.get("features", "auto") if isinstance(stored.get("features"), str) else "auto"
    evaluator = Evaluator.for_datamodule(datamodule, features=features, weights=weights)
    keep = (lambda chunk: quantize(chunk, datamodule.value_range)) if image else None
    return draw(generator, config, n, seed, keep=keep), evaluator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ganexp.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a run folder (checkpoints/last.ckpt), a .ckpt, a .safetensors export, "
                                                "a .npz or (with --real) a folder of images")
    parser.add_argument("--data", choices=DATA, help="the dataset of an .npz's images (its test split when labelled, "
                        "else the images a run trains on)")
    parser.add_argument("--real", type=Path, help="the reference images (a folder or .npz) of samples made elsewhere; "
                                                  "scored in Inception features")
    parser.add_argument("--features", choices=FEATURES, help="classifier (MNIST-like data), inception (the papers' "
                        "FID); auto: the classifier where ganexp has one (default: a run's eval.features, else auto)")
    parser.add_argument("--inception-weights", help=f"the InceptionV3 weights file (default: {FILE_NAME} in torch's hub "
                                                    "cache, else downloaded)")
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
        if args.real:
            if args.data:
                raise ConfigError("give --data (a labelled dataset's test split) or --real (your own images), not both")
            real = images_from(args.real)
            samples = images_from(args.path)
            try:
                evaluator = Evaluator(args.real.stem or "real", features=args.features or "auto",
                                      weights=args.inception_weights, real=real, split=str(args.real))
            except ConfigError as err:
                raise ConfigError(f"--real {args.real}: {err}") if "reference images" in str(err) else err from None
        elif args.path.suffix == ".npz":
            if not args.data:
                raise ConfigError(f"{args.path}: say which dataset the images are from with --data {{{','.join(DATA)}}}"
                                  " or give the real images with --real")
            if not args.path.is_file():
                raise ConfigError(f"no file {args.path}")
            samples = images_from_npz(args.path)
            if args.data in LABELLED:
                evaluator = Evaluator(args.data, root=args.data_root, features=args.features or "auto",
                                      weights=args.inception_weights)
            else:
                evaluator = Evaluator.for_datamodule(datamodule_for(args.data, args.data_root),
                                                     features=args.features or "auto", weights=args.inception_weights)
        else:
            samples, evaluator = samples_from_checkpoint(args.path, args.n, args.seed, args.data_root, args.features,
                                                         args.inception_weights)
        try:
            scores = evaluator.score(samples)
        except ConfigError as err:  # too few (or wrong) samples: say where they came from
            where = args.path if args.path.suffix == ".npz" or args.real else f"--n {args.n}"
            raise ConfigError(f"{where}: {err}") from None
        floor = evaluator.floor(len(samples))
    except ConfigError as err:
        return failed("ganexp.evaluate", err, args.debug)
    protocol = evaluator.protocol(n=len(samples))
    if args.json:
        print(json.dumps({"scores": scores, "floor": floor, "protocol": protocol}))
        return 0
    clf, inception = protocol.get("classifier"), protocol.get("inception")
    about = f", classifier {clf['sha256'][:12]} ({clf['test_accuracy']:.2%} test accuracy)" if clf else ""
    about += f", InceptionV3 weights {inception['weights_sha256'][:12]}" if inception else ""
    print(f"# {len(samples)} samples vs {protocol['dataset']} ({protocol['split']}){about}, "
          f"{time.perf_counter() - start:.1f} s")
    for name, value in scores.items():
        print(f"{name:<10} {value:>10.4f}   real-vs-real floor {floor[name]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
