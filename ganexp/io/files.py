"""Reading files that someone else may have made: checkpoints, exports, JSON and YAML records.

Every reader here parses, validates and returns plain data, or raises `BadFile` (a
ConfigError: one line that names the file and the problem, exit 2). Checkpoints are read
with `torch.load(weights_only=True)`, exports with safetensors (no code can run while
loading either), and any config inside them goes through `registry.check_stored` before
anything is built from it. `load_generator` is the one way from a file to a generator.
"""
from __future__ import annotations

import contextlib
import json
import os
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ganexp.errors import ConfigError, shown
from ganexp.config.checks import FLOAT, INT, is_kind, number
from ganexp.config.registry import build, check_stored

EXPORT_SUFFIX = ".safetensors"
EXPORT_FORMAT = "ganexp-generator/1"
NEEDED = ("model.generator", "noise.prior", "noise.latent_dim", "data")  # to sample from a stored config
MAX_RECORD_BYTES = 4 << 20  # JSON / YAML records ganexp writes are kilobytes; a bigger one is not a ganexp record


class BadFile(ConfigError):
    """A file ganexp was given cannot be used; the message names it and says why."""


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]


def _brief(value: Any) -> str:
    return shown(repr(value), 60)  # a stored config holds plain values only: their repr is one printable line


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder means its checkpoints/last.ckpt."""
    path = Path(path).expanduser()
    ckpt = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise BadFile(f"no checkpoint at {ckpt}; give a run folder holding checkpoints/last.ckpt, "
                      f"a .ckpt or a {EXPORT_SUFFIX} file")
    return ckpt


def select(config: Any, dotted: str, default: Any = None) -> Any:
    """config["a"]["b"] for "a.b" in plain nested dicts, or `default` where a part is missing."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def check_run_config(config: Any, source: Path) -> dict:
    """A stored run config: a mapping that holds what sampling needs, and nothing that builds code."""
    if not isinstance(config, dict):
        raise BadFile(f"{source} holds no run config (found a {type(config).__name__}); is it a ganexp file?")
    check_stored(config, source)
    if missing := [k for k in NEEDED if select(config, k) is None]:
        raise BadFile(f"{source} is not a ganexp checkpoint: its stored config lacks {', '.join(missing)}")
    for key in ("model", "model.generator", "noise", "data"):
        if not isinstance(select(config, key), dict):
            raise BadFile(f"{source}: stored {key} is not a mapping")
    return config


def read_checkpoint(path: str | Path) -> dict:
    """A ganexp .ckpt, validated: a plain dict whose stored config passed the allowlist."""
    ckpt = resolve_checkpoint(path)
    if ckpt.suffix == EXPORT_SUFFIX:
        raise BadFile(f"{ckpt} is a generator export (weights only): sample or evaluate it, or start a new run "
                      f"from it with init_from={ckpt}; it cannot be resumed")
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError,
            AttributeError, TypeError, IndexError, KeyError) as err:
        raise BadFile(f"cannot read checkpoint {ckpt} (truncated, corrupt or not a ganexp checkpoint: "
                      f"{_first_line(err)})") from None
    if not isinstance(checkpoint, dict) or "hyper_parameters" not in checkpoint:
        raise BadFile(f"{ckpt} is not a ganexp checkpoint (no stored config)")
    check_run_config(checkpoint["hyper_parameters"], ckpt)
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise BadFile(f"{ckpt}: state_dict is missing or holds something other than named tensors")
    return checkpoint


def resumable(checkpoint: dict) -> bool:
    """A full training checkpoint (last.ckpt), not the weights-only best.ckpt."""
    return all(k in checkpoint for k in ("optimizer_states", "loops", "epoch", "iteration"))


def read_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(generator weights, description) of a `python -m ganexp.export` file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise BadFile(f"no file {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise BadFile(f"cannot read {path} as safetensors ({_first_line(err)})") from None
    if metadata.get("format") != EXPORT_FORMAT:
        raise BadFile(f"{path} is not a ganexp generator export (metadata format {metadata.get('format')!r}, "
                      f"expected {EXPORT_FORMAT!r})")
    try:
        description = json.loads(metadata.get("ganexp", ""))
    except (ValueError, RecursionError) as err:
        raise BadFile(f"{path}: its ganexp metadata is not JSON ({_first_line(err)})") from None
    check_run_config(description, path)
    return weights, description


def load_generator(path: str | Path) -> tuple[torch.nn.Module, dict, dict]:
    """(generator in eval mode, the plain run config, the checkpoint or export description)."""
    path = Path(path).expanduser()
    if path.suffix == EXPORT_SUFFIX:
        weights, config = read_export(path)
        source, record = path, config
    else:
        record = read_checkpoint(path)
        source, config = resolve_checkpoint(path), record["hyper_parameters"]
        weights = generator_weights(record["state_dict"])
    with torch.device("meta"):  # shapes first, no memory: a config whose sizes the weights do not fit is one line
        shaped = build(config["model"]["generator"], "generator", key="model.generator", source=source)
        check_weights(shaped, weights, source, "generator")
        _check_generator_io(shaped, config, source)
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:  # a diverged or crafted generator: its samples would score as numbers
        raise BadFile(f"{source}: the generator's weight {bad} holds NaN or Inf values; it cannot be sampled or "
                      "scored (a diverged run keeps its last good checkpoint: use that one)")
    generator = build(config["model"]["generator"], "generator", key="model.generator", source=source)
    generator.load_state_dict(weights)
    return generator.eval(), config, record


def generator_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The generator a checkpoint is used through: its EMA (`generator_ema.*`) when it has one, else `generator.*`."""
    prefix = "generator_ema." if any(k.startswith("generator_ema.") for k in state_dict) else "generator."
    return {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}


def _check_generator_io(generator: torch.nn.Module, config: dict, source: Path | str) -> None:
    """The stored noise.latent_dim goes into the generator, and what comes out has data.shape (meta tensors)."""
    noise, data = config.get("noise"), config.get("data")
    try:
        latent = number("noise.latent_dim", noise.get("latent_dim") if isinstance(noise, dict) else None, INT,
                        lambda v: v >= 1, "an integer >= 1")
    except ConfigError as err:
        raise BadFile(f"{source}: {err}") from None
    try:
        out = generator(torch.empty(2, latent, device="meta"))
    except Exception as err:  # noqa: BLE001 - any shape error of a crafted config
        raise BadFile(f"{source}: its noise.latent_dim={latent} does not fit its generator ({_first_line(err)})") from None
    shape = data.get("shape") if isinstance(data, dict) else None
    if not isinstance(shape, list) or list(out.shape[1:]) != shape:
        raise BadFile(f"{source}: its generator makes {list(out.shape[1:])}, but its data.shape is {_brief(shape)}")
    value_range = data.get("value_range")
    if value_range is not None and (not isinstance(value_range, list) or len(value_range) != 2
            or not all(is_kind(v, FLOAT) and math.isfinite(v) for v in value_range)
            or not value_range[0] < value_range[1]):
        raise BadFile(f"{source}: its data.value_range={_brief(value_range)} is not two finite numbers low < high")


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path | str, what: str) -> None:
    """`load_state_dict`, with a mismatch said in one line instead of torch's page of key lists."""
    check_weights(module, weights, source, what)
    module.load_state_dict(weights)


def check_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path | str, what: str) -> None:
    """BadFile (one line) unless `weights` has exactly `module`'s keys and shapes."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    wrong = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else
                  f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else
                  f"{wrong[0]} is {list(weights[wrong[0]].shape)} in the file, {list(own[wrong[0]].shape)} in the model")
        raise BadFile(f"{source}: the {what} weights do not fit the {what} its config describes: {detail}")


def _read(path: str | Path, default: Any, max_bytes: int, parse, errors: tuple = ()) -> Any:
    """`parse` of the file's text, read only when it is at most `max_bytes` (a crafted record is data);
    `default` when the file does not exist; BadFile when it is too large or does not parse."""
    path = Path(path)
    if not path.is_file():
        return default
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) <= max_bytes:
            return parse(data.decode())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, *errors) as err:  # JSONDecodeError: ValueError
        raise BadFile(f"cannot read {path} ({_first_line(err)})") from None
    raise BadFile(f"{path} is over {max_bytes:,} bytes, too large for a ganexp record; is it one? "
                  "remove or replace it")


def read_json(path: str | Path, default: Any = None, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    return _read(path, default, max_bytes, json.loads)


def read_yaml(path: str | Path, default: Any = None, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """A YAML file parsed as plain data (safe_load: no tags, no objects)."""
    import yaml

    return _read(path, default, max_bytes, yaml.safe_load, (yaml.YAMLError,))


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its container's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        total = min(total, int(limit)) if limit.isdigit() else total
    return total
