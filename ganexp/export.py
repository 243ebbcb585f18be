"""Export a generator for sharing: weights in safetensors, its build description as plain JSON.

    python -m ganexp.export outputs/<date>/<time> --out g.safetensors          # last.ckpt's G
    python -m ganexp.export outputs/<date>/<time> --best --out g.safetensors   # best.ckpt's G
    python -m ganexp.sample g.safetensors --n 64 --out grid.png                 # read like a .ckpt

Share `.safetensors`, resume from `.ckpt`: loading a safetensors file cannot run code, and its JSON
description is checked against ganexp's registry of parts like any stored config; no path of the exporting
machine goes into it. An existing --out is replaced only with --force, never when it is a symbolic link.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from ganexp.io import writes
from ganexp.errors import ConfigError, failed, shown
from ganexp.io.files import EXPORT_FORMAT, EXPORT_SUFFIX, BadFile, generator_weights, load_generator, resolve_checkpoint
from ganexp.run.resume import is_run_folder
from ganexp.io.results import read_metrics
from ganexp.io.writes import LinkRefused

LOCAL_KEYS = ("root", "path", "download")  # where the data lay on the exporting machine


def description(config: dict, checkpoint: dict, record: dict) -> dict:
    """The plain-JSON build description of a checkpoint's generator."""
    data = {k: v for k, v in config["data"].items() if k not in LOCAL_KEYS}
    protocol = _typed(record.get("protocol"), dict, {})  # metrics.json is a file like any other: only known shapes
    classifier = _typed(protocol.get("classifier"), dict, {})
    inception = _typed(protocol.get("inception"), dict, {})
    return {
        "model": {"generator": config["model"]["generator"]},
        "noise": {"prior": config["noise"]["prior"], "latent_dim": config["noise"]["latent_dim"]},
        "data": data,
        "image_shape": list(data.get("shape") or []),
        "dataset": _typed(protocol.get("dataset"), str, None) or str(data.get("_target_", "")).rpartition(".")[2],
        "iteration": checkpoint.get("iteration"),
        "metrics": {"final": _scores(record.get("final")), "best": _scores(record.get("best")),
                    "monitor": _typed(record.get("monitor"), str, None),
                    "best_iteration": _typed(record.get("best_iteration"), int, None),
                    "classifier_sha256": _typed(classifier.get("sha256"), str, None),
                    "inception_sha256": _typed(inception.get("weights_sha256"), str, None)},
    }


def _typed(value, kind: type, default):
    return value if isinstance(value, kind) and not isinstance(value, bool) else default


def _scores(value) -> dict | None:
    """{metric name: number} from a record's final/best; anything else is left out."""
    if not isinstance(value, dict):
        return None
    return {str(k)[:40]: v for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def check_out(out: Path, suffixes: tuple[str, ...], force: bool = False, flag: str = "--out") -> None:
    """ConfigError unless `out` can be written as given, before any work is done: not a link, not a folder, one
    of `suffixes`, an existing plain file only with `force`, and its folder writable or creatable."""
    names = " or ".join(suffixes)
    if out.is_symlink():
        target = "?"
        with contextlib.suppress(OSError):
            target = os.readlink(out)
        raise LinkRefused(f"{flag} {out} is a symbolic link (to {shown(target, 1000)}); ganexp never writes "
                          f"through a link, even with --force: remove the link or give another file name")
    if out.is_dir():
        raise ConfigError(f"{flag} {out} is a folder; give a file name ending in {names}")
    if out.suffix not in suffixes:
        raise ConfigError(f"{flag} {out}: give a file name ending in {names}")
    if out.exists():
        if not writes.is_regular(out):
            raise ConfigError(f"{flag} {out} exists and is not a plain file; give another file name")
        if not force:
            raise ConfigError(f"{flag} {out} exists; give --force to replace it, or another file name")
        if not os.access(out, os.W_OK):
            raise ConfigError(f"{flag} {out} is a read-only file; give another file name or make it writable")
    parent = Path(os.path.abspath(out)).parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent  # the nearest existing folder: what `mkdir(parents=True)` creates from
    if not parent.is_dir():
        raise ConfigError(f"{flag} {out}: cannot create its folder, {parent} exists and is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {out}: {parent} is not writable; give a path in a folder you can write to")


def confine_out(out: Path, source: Path, suffixes: tuple[str, ...], force: bool) -> None:
    """Just before --out is written: check_out again (a file may have appeared meanwhile), and declare the folder
    it is written into (ganexp.io.writes): the user's own, unless --out lies inside the run folder the generator
    came from (someone else's, where no link below it is written through)."""
    check_out(out, suffixes, force=force)
    source = Path(os.path.abspath(source))
    run = source if source.is_dir() else source.parents[1] if source.parent.name == "checkpoints" else None
    inside = run is not None and os.path.abspath(out).startswith(str(run).rstrip(os.sep) + os.sep)
    writes.confine(run if inside else Path(os.path.abspath(out)).parent)


def export(path: str | Path, out: str | Path, best: bool = False, force: bool = False) -> dict:
    """Write `out` (.safetensors) from a run folder or a .ckpt; returns the description."""
    from safetensors.torch import save

    path, out = Path(path).expanduser(), Path(out)
    check_out(out, (EXPORT_SUFFIX,), force=force)
    if best:
        if not path.is_dir():
            raise ConfigError("--best needs a run folder (it exports checkpoints/best.ckpt)")
        path = path / "checkpoints" / "best.ckpt"
    ckpt = resolve_checkpoint(path)
    if ckpt.suffix == EXPORT_SUFFIX:
        raise ConfigError(f"{ckpt} is an export already; share it as it is, or export the run or .ckpt it came from")
    _, _, checkpoint = load_generator(ckpt)  # the one way from a file to a generator: its checks hold for exports
    run = ckpt.parent.parent
    record = read_metrics(run) if is_run_folder(run) else {}
    about = description(checkpoint["hyper_parameters"], checkpoint, record)
    weights = {k: v.contiguous().clone() for k, v in generator_weights(checkpoint["state_dict"]).items()}
    if not weights:
        raise BadFile(f"{ckpt} holds no generator weights")
    data = save(weights, metadata={"format": EXPORT_FORMAT, "ganexp": json.dumps(about)})
    confine_out(out, path, (EXPORT_SUFFIX,), force)
    writes.replace_bytes(out, data)  # the user's normal file mode: an export is made to be shared
    return about


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ganexp.export", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a run folder (its checkpoints/last.ckpt) or a .ckpt file")
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    parser.add_argument("--best", action="store_true", help="export the run's best.ckpt instead of last.ckpt")
    parser.add_argument("--force", action="store_true", help="replace --out if it is an existing file")
    parser.add_argument("--debug", action="store_true", help="a traceback instead of a one-line error")
    args = parser.parse_args(argv)
    try:
        about = export(args.path, args.out, args.best, args.force)
    except ConfigError as err:
        return failed("ganexp.export", err, args.debug)
    generator = about["model"]["generator"]["_target_"].rpartition(".")[2]
    print(f"wrote {args.out}: {generator}, z {about['noise']['latent_dim']} ({about['noise']['prior']}), "
          f"{about['dataset']} {about['image_shape']}, iteration {about['iteration']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
