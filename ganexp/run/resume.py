"""Resuming continues the run that is in the checkpoint, and never rewrites what a user has.

- A run folder is one that ganexp made: it holds the marker file `.ganexp-run`. Resuming
  in place happens only for `<run>/checkpoints/last.ckpt` of such a folder; any other
  checkpoint starts a new run folder (the source is recorded in its metrics.json).
- The experiment (EXPERIMENT keys) comes from the checkpoint's stored config. A command-line
  override that changes it is refused in one line that lists the keys; overrides that only
  extend or observe the run (epochs, time, eval / log / checkpoint frequency, logger,
  callbacks, trainer) apply.
- `ResumeCheck` (a Hydra callback) does all of this in `on_run_start`, before Hydra makes or
  touches a folder, so a refused resume leaves every byte of the run as it was; and
  `hydra_subdir` keeps a folder's original `.hydra/` when a later attempt runs in it.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ganexp.config.checks import FLOAT, INT, is_kind
from ganexp.errors import ConfigError, shown
from ganexp.io.files import (
    EXPORT_SUFFIX, BadFile, load_weights, read_checkpoint, read_export, resolve_checkpoint, resumable, select,
)
from ganexp.run.jobs import check_folder
from ganexp.io.writes import refuse_now
from ganexp.config.keys import EXPERIMENT as _EXPERIMENT, MACHINE_LOCAL, PLUMBING, covers, keys_of, override_keys
from ganexp.run.folders import (  # noqa: F401  (re-exported: the run-folder names are importable from here too)
    RUN_MARKER, hydra_subdir, in_place_run, is_run_folder, mark_run, register_resolvers, run_dir,
)
from ganexp.run.validate import check_config

# What the experiment is; a resume keeps the checkpoint's values of all of these.
EXPERIMENT = keys_of(_EXPERIMENT, top=True)  # model, data, loss, optimizer, noise, seed, batch_size, ...
# Experiment settings added after the first checkpoints, as every run before them trained: a checkpoint
# without them resumes with these values (and a re-run of its own command line compares equal). This is
# history, not a second copy of conf/train.yaml's defaults: it stays as it is if a default changes later.
ADDED_LATER = {"ema": {"decay": 0.0, "start": 0}, "reuse_fake": False, "augment": {"policy": []}}
# Machine-local keys inside the experiment (data.root, data.download): where the files are, not what they are.
FREE = tuple(k for k in keys_of(MACHINE_LOCAL) if k.split(".")[0] in EXPERIMENT)
NOT_SETTINGS = keys_of(PLUMBING)  # ckpt_path, init_from, paths, hydra, sweep
LOCATIONS = ("dirpath", "save_dir")  # a part's argument that is a folder it writes in: always this run's
from ganexp.config import CONF_DIR  # noqa: E402


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    return {path: leaf for key, value in node.items() for path, leaf in _leaves(value, f"{prefix}.{key}").items()}


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def experiment_changes(requested: dict, stored: dict, keys: list[str]) -> list[str]:
    """'key: stored → requested' for every experiment setting the overrides `keys` change."""
    changes: list[str] = []
    for key in keys:  # plumbing keys (NOT_SETTINGS) lie outside EXPERIMENT: they change nothing here
        scope = EXPERIMENT if key == "experiment" else [key] if key.split(".")[0] in EXPERIMENT else []
        for k in scope:
            new, old = _leaves(select(requested, k, _ABSENT), k), _leaves(select(stored, k, _ABSENT), k)
            for path in sorted(set(new) | set(old)):
                if any(covers(f, path) for f in FREE):
                    continue
                a, b = old.get(path, _ABSENT), new.get(path, _ABSENT)
                if a != b and (line := f"{path}: {_show(a)} → {_show(b)}") not in changes:
                    changes.append(line)
    return changes


def _show(value: Any) -> str:
    return shown(value if value is _ABSENT else json.dumps(value))


def resume_config(cfg: DictConfig, overrides: list[str] | None) -> tuple[DictConfig, dict]:
    """(cfg with the experiment taken from the checkpoint at cfg.ckpt_path, the checkpoint).

    ConfigError when the file cannot be resumed from or the overrides change the experiment.
    `overrides=None` (a config composed in code, no command line): every setting as composed,
    the experiment from the checkpoint."""
    ckpt_path = resolve_checkpoint(cfg.ckpt_path)  # a run folder means its last.ckpt (in a new run folder)
    checkpoint = read_checkpoint(ckpt_path)
    if not resumable(checkpoint):
        raise ConfigError(f"{ckpt_path} holds weights only (no optimizer or loop state: best.ckpt or an export); "
                          f"resume from the run's checkpoints/last.ckpt, or start a new run from these weights "
                          f"with init_from={ckpt_path}")
    stored = {**copy.deepcopy(ADDED_LATER), **checkpoint["hyper_parameters"]}
    requested = {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
                 for k in EXPERIMENT if k in cfg}  # only these: paths resolve only once Hydra runs the job
    changes = experiment_changes(requested, stored, override_keys(overrides)) if overrides is not None else []
    changes.sort(key=lambda c: not c.split(":")[0].endswith("._target_"))  # a swapped part says the most
    if changes:
        rest = [c.split(":")[0] for c in changes[6:]]
        shown = "; ".join(changes[:6]) + (f"; also {', '.join(rest)}" if rest else "")
        changed = sorted({c.split(":")[0] for c in changes})
        raise ConfigError(f"resuming {ckpt_path} continues its experiment, but the command line changes it ({shown}); "
                          f"drop those overrides to resume, or start a new run from its weights: "
                          f"python train.py init_from={ckpt_path} {' '.join(o for o in overrides if _sets_any(o, changed))}".rstrip())
    merged = copy.deepcopy(cfg)
    with open_dict(merged):
        if overrides is not None:
            _carry_settings(merged, stored, override_keys(overrides))
        for key in [k for k in EXPERIMENT if k in stored]:
            value = copy.deepcopy(stored[key])
            if key == "data" and isinstance(value, dict):  # where the files are on this machine
                data = OmegaConf.to_container(merged.data, resolve=True)
                value.update({sub: data[sub] for sub in (free.split(".", 1)[1] for free in FREE) if sub in data})
            merged[key] = value
        merged.ckpt_path = str(ckpt_path)
    check_config(merged)  # the stored values obey the same rules as the command line's
    return merged, checkpoint


def _carry_settings(merged: DictConfig, stored: dict, keys: list[str]) -> None:
    """Every setting that is not the experiment as stored, unless the command line sets it: each config
    group whole (the option chosen and its contents, empty or not: `eval=none` is `eval: {}`) and each
    top-level key; what the command line sets inside a group is laid over the stored group. A part's
    argument that conf/ writes as an interpolation is that interpolation again: a location
    (`${paths.output_dir}`) always, so a resumed run writes into its own folder and never where a file
    says; any other (`every: ${image_every}`) where it gives the stored value, so it follows its key."""
    if "experiment" in keys:
        return  # an experiment overlay sets its own budget
    keys = [k.replace("/", ".") for k in keys]
    composed = OmegaConf.to_container(merged, resolve=False)
    carried = [top for top in composed if top in stored and top not in EXPERIMENT and top not in NOT_SETTINGS
               and top not in keys]
    probe = OmegaConf.create(stored)  # plain values only: files.check_run_config refuses interpolations
    templates = _interpolations()
    for top in carried:
        for path, part in _parts(stored[top], top):
            for arg, value in part.items():
                template = templates.get((_class_name(part["_target_"]), arg),  # a part conf/ does not know
                                         "${paths.output_dir}" if arg in LOCATIONS else None)  # still writes here
                if template is None:
                    continue
                OmegaConf.update(probe, f"{path}.{arg}", template)
                if "${paths." not in template and \
                        OmegaConf.select(probe, f"{path}.{arg}", throw_on_resolution_failure=False) != value:
                    OmegaConf.update(probe, f"{path}.{arg}", value)  # the run's own value: keep it
    restored = OmegaConf.to_container(probe, resolve=False)
    for top in carried:
        value = restored[top]
        for key in keys:
            if key.startswith(top + "."):
                value = _lay_over(value, key.split(".")[1:], composed[top])
        merged[top] = value


def _parts(node: Any, path: str):
    """(path, part) of every mapping with a `_target_` in `node`, itself included."""
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield path, node
        for key, value in node.items():
            yield from _parts(value, f"{path}.{key}")


@functools.lru_cache(maxsize=None)
def _interpolations() -> dict[tuple[str, str], str]:
    """(a part's `_target_`, argument) → interpolation, as conf/ writes them; from every option, as a stored run's
    may be one this composition did not choose (callbacks=toy's `dirpath: ${paths.output_dir}`)."""
    found: dict[tuple[str, str], str] = {}
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        for _, part in _parts(OmegaConf.to_container(OmegaConf.load(path), resolve=False), ""):
            for arg, value in part.items():
                if isinstance(value, str) and "${" in value:
                    found.setdefault((_class_name(part["_target_"]), arg), value)
    return found


def _class_name(target: str) -> str:
    """A part's class by its own name: the registry's older spellings (ganexp.callbacks.PeriodicCheckpoint)
    name the same class as conf/'s (ganexp.callbacks.checkpoint.PeriodicCheckpoint)."""
    return target.rsplit(".", 1)[-1]


def _lay_over(group: Any, parts: list[str], composed: Any) -> Any:
    """`group` with the command line's value of one key in it (`parts` below the group): where the stored
    group has no such part (an option that is off, a callback it lacks), the command line's whole part."""
    if not isinstance(group, dict) or not group:
        return copy.deepcopy(composed)
    node, source = group, composed
    for i, part in enumerate(parts):
        source = source.get(part, _ABSENT) if isinstance(source, dict) else _ABSENT
        if i == len(parts) - 1 or not isinstance(node.get(part), dict):
            if source is _ABSENT:
                node.pop(part, None)  # ~key
            else:
                node[part] = copy.deepcopy(source)
            break
        node = node[part]
    return group


def _sets_any(override: str, keys: list[str]) -> bool:
    key = override_keys([override])[0]
    return any(covers(k, key) or covers(key, k) for k in keys) or key == "experiment"


def check_run(config: DictConfig) -> None:
    """Everything a run's files decide, checked before Hydra makes or touches a folder."""
    task = OmegaConf.to_container(config.hydra.overrides.task) if "hydra" in config else []
    if config.get("ckpt_path") and config.get("init_from"):
        raise ConfigError("ckpt_path and init_from together: ckpt_path resumes a run, init_from starts a new one "
                          "from a checkpoint's weights; give one of them")
    ckpt_path = config.get("ckpt_path")
    if "hydra" in config and config.hydra.mode != "MULTIRUN":
        folder = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        check_folder(folder, task if not ckpt_path else None)
        last = folder / "checkpoints" / "last.ckpt"
        if is_run_folder(folder) or last.is_file():
            if config.get("init_from"):
                raise ConfigError(f"hydra.run.dir={folder} already holds a run; init_from starts a new one: "
                                  "drop hydra.run.dir (or give a new folder)")
            if ckpt_path and in_place_run(ckpt_path) != folder.resolve():
                raise ConfigError(f"hydra.run.dir={folder} already holds a run, and ckpt_path={ckpt_path} is "
                                  "another one's checkpoint; drop hydra.run.dir to continue it in a new folder")
        if not ckpt_path and last.is_file():
            ckpt_path = str(last)  # hydra.run.dir=<a run>: the same as resuming it
    if ckpt_path:
        cfg = copy.deepcopy(config)
        with open_dict(cfg):
            del cfg["hydra"]
            cfg.ckpt_path = ckpt_path
        resume_config(cfg, task)
    if config.get("init_from"):  # a readable ganexp checkpoint or export (its weights are loaded at build)
        (read_export if Path(str(config.init_from)).suffix == EXPORT_SUFFIX else read_checkpoint)(config.init_from)


from hydra.experimental.callback import Callback  # noqa: E402  (hydra-core is a dependency)


class ResumeCheck(Callback):
    """conf/hydra/default.yaml: checks a resume (or init_from) before Hydra writes anything."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_run(config)
        except ConfigError as err:
            refuse_now(err)


def init_weights(module, path: Any) -> None:
    """A new run that starts from a checkpoint's G and D (or an export's G): weights only, fresh
    optimizers, the experiment as configured now."""
    if Path(str(path)).suffix == EXPORT_SUFFIX:
        load_weights(module.generator, read_export(path)[0], path, "generator")
    else:
        source = resolve_checkpoint(path)
        state = read_checkpoint(source)["state_dict"]
        for name in ("generator", "discriminator"):
            part = {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
            load_weights(getattr(module, name), part, source, name)
    if module.generator_ema is not None:  # the average starts from the loaded weights
        module.generator_ema.load_state_dict(module.generator.state_dict())


def check_training_state(checkpoint: dict, module, source: Any) -> None:
    """What Lightning and the module restore on resume, checked against the model built from the
    stored config: a crafted optimizer state, RNG state or loop record is one line, never a crash."""
    import torch

    def bad(what: str) -> BadFile:
        return BadFile(f"{source}: {what}; it cannot be resumed (start a new run from its weights with "
                       f"init_from={source})")

    iteration = checkpoint.get("iteration")
    if not is_kind(iteration, INT) or iteration < 0:
        raise bad(f"iteration={_show(iteration)} is not a count")
    if not isinstance(checkpoint.get("loops"), dict) or not isinstance(checkpoint["loops"].get("fit_loop"), dict):
        raise bad("it has no fit_loop state")
    own, stored = module.state_dict(), checkpoint["state_dict"]
    odd = sorted(set(own) ^ set(stored)) or [k for k in own if stored[k].shape != own[k].shape
                                                or stored[k].dtype != own[k].dtype or stored[k].layout != torch.strided]
    if odd:
        raise bad(f"its weights do not fit the model its config describes (e.g. {odd[0]})")
    optimizers = checkpoint.get("optimizer_states")
    if not isinstance(optimizers, list) or len(optimizers) != 2:
        raise bad("it does not hold the two optimizer states (G, D)")
    for state, net in zip(optimizers, (module.generator, module.discriminator)):
        params = list(net.parameters())
        groups, per_param = select(state, "param_groups"), select(state, "state")  # state: any shape
        ids = [i for g in groups or [] if isinstance(g, dict) for i in g.get("params", [])]
        if len(ids) != len(params) or not isinstance(per_param, dict) or not set(per_param) <= set(ids):
            raise bad("its optimizer state does not fit the model's parameters")
        for idx, entry in per_param.items():
            param = params[ids.index(idx)]
            for name, value in (entry.items() if isinstance(entry, dict) else []):  # a number (step) or a tensor
                if not (value is None or is_kind(value, FLOAT) or isinstance(value, torch.Tensor) and (
                        value.dim() == 0 or value.shape == param.shape and value.dtype == param.dtype)):
                    raise bad(f"its optimizer state {name} does not fit its parameter")
    if (rng := checkpoint.get("rng")) is not None:
        ok = (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor)
              and rng["torch"].dtype == torch.uint8 and rng["torch"].shape == torch.get_rng_state().shape
              and isinstance(rng.get("numpy"), (list, tuple)) and len(rng["numpy"]) == 5
              and isinstance(rng["numpy"][1], torch.Tensor) and rng["numpy"][1].shape == (624,)
              and isinstance(rng.get("python"), (list, tuple)) and len(rng["python"]) == 3
              and isinstance(rng["python"][1], (list, tuple)) and len(rng["python"][1]) == 625
              and isinstance(rng.get("cuda"), (list, tuple))
              and (rng.get("draws") is None or (isinstance(rng["draws"], torch.Tensor)  # training's draws (module.py)
                                                and rng["draws"].dtype == torch.uint8
                                                and rng["draws"].dim() == 1 and len(rng["draws"]) <= 8192)))
        if not ok:
            raise bad("its random-number state is not the one ganexp writes")
