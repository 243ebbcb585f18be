"""What kind each config key is: the one table the modules read (resume, jobs, compare, tensorboard, stack).

An entry is a dotted key; it covers that key and every key below it (`data` covers `data.seed`), and the
most specific entry wins (`data.root` is machine-local, not experiment). Each entry names all of its kinds:
a key below an experiment group that is also experiment says so.

Kinds:
- EXPERIMENT: what is trained: a resume keeps the checkpoint's value; jobs that differ in it are different jobs.
- MACHINE_LOCAL: where the files are on this machine and how its console looks: a resume may change it.
- DISPLAY: how often and how a run shows itself (scalars, image grids, the progress bar).
- STACKABLE: may differ between the members of one stack (ganexp/gan/stack.py); every one is experiment.
- HPARAMS: a column of every run's TensorBoard HParams entry (ganexp/run/tensorboard.py), at its `column`.
- PLUMBING: not a setting of the run: where it is written, source checkpoints, Hydra's own settings.
A key without an entry (trainer.max_time, eval.n, ...) extends or observes the run: a resume applies it.
"""
from __future__ import annotations

from typing import NamedTuple

EXPERIMENT = "experiment"
MACHINE_LOCAL = "machine-local"
DISPLAY = "display"
STACKABLE_KIND = "stackable"
HPARAMS = "hparams"
PLUMBING = "plumbing"
KINDS = (EXPERIMENT, MACHINE_LOCAL, DISPLAY, STACKABLE_KIND, HPARAMS, PLUMBING)


class Entry(NamedTuple):
    kinds: frozenset[str]
    column: int | None = None  # position among the HParams columns (HPARAMS entries only)


def _(*kinds: str, column: int | None = None) -> Entry:
    return Entry(frozenset(kinds) | ({HPARAMS} if column is not None else frozenset()), column)


E, M, D, S, P = EXPERIMENT, MACHINE_LOCAL, DISPLAY, STACKABLE_KIND, PLUMBING

# The order counts: keys_of lists entries in it (the experiment's top-level keys, STACKABLE as stack.py
# groups by it); HParams columns go by `column`.
TABLE: dict[str, Entry] = {
    # the experiment, top level (a resume keeps each of these whole, except the machine-local keys in it)
    **dict.fromkeys(("model", "data", "loss", "optimizer", "noise"), _(E)),
    # inside the experiment: what a stack may vary (stack.py's order)
    "optimizer.lr": _(E, S),
    "optimizer.g.lr": _(E, S, column=0),
    "optimizer.d.lr": _(E, S, column=1),
    "loss.label_smoothing": _(E, S, column=5),
    "loss.gp_weight": _(E, S, column=12),
    "loss.r1_gamma": _(E, S, column=13),
    "noise.instance_sigma": _(E, S, column=6),
    "noise.instance_sigma_min": _(E, S, column=7),
    "noise.anneal": _(E, S, column=8),
    "noise.anneal_epochs": _(E, S, column=9),
    "noise.anneal_per": _(E, S),
    "seed": _(E, S, column=15),
    "data.seed": _(E, S),
    # the experiment, top level (continued)
    "batch_size": _(E, column=4),
    "d_steps": _(E, column=3),
    **dict.fromkeys(("n_fixed", "ema", "reuse_fake", "augment"), _(E)),  # augment: the members of a stack share it
    # inside the experiment: more HParams columns
    "optimizer.betas": _(E, column=2),
    "noise.prior": _(E, column=10),
    "noise.latent_dim": _(E, column=11),
    "ema.decay": _(E, column=14),
    # where the data is on this machine (not what it is)
    "data.root": _(M),
    "data.download": _(M),
    # the run's budget and number format: HParams columns a resume may change
    "trainer.max_epochs": _(column=16),
    "trainer.precision": _(column=17),
    # how the run shows itself
    "log_every": _(D),
    "image_every": _(D),
    "trainer.enable_progress_bar": _(M, D),
    # not settings of the run
    "ckpt_path": _(P),
    "init_from": _(P),
    "paths": _(M, P),
    "hydra": _(P),
    "sweep": _(P),
}


def kind(key: str) -> frozenset[str]:
    """The kinds of a dotted config key, from the entry of itself or its nearest dotted parent (empty: a setting
    that only extends or observes the run)."""
    key = key.replace("/", ".")  # a config group as Hydra names it (hydra/launcher)
    while key:
        if key in TABLE:
            return TABLE[key].kinds
        key = key.rpartition(".")[0]
    return frozenset()


def is_kind(key: str, what: str) -> bool:
    return what in kind(key)


def keys_of(what: str, *, top: bool = False) -> tuple[str, ...]:
    """The table's entries of kind `what`, in the table's order (HPARAMS: in column order); `top`: only
    top-level keys (no dot)."""
    if what not in KINDS:
        raise ValueError(f"{what!r} is not a kind of config key; the kinds are {', '.join(KINDS)}")
    found = [k for k, e in TABLE.items() if what in e.kinds and not (top and "." in k)]
    if what == HPARAMS:
        found.sort(key=lambda k: TABLE[k].column)
    return tuple(found)


def covers(prefix: str, key: str) -> bool:
    """Whether `key` is `prefix` or a key below it."""
    return key == prefix or key.startswith(prefix + ".")


# What may differ inside one stack (ganexp/gan/stack.py imports it from here).
STACKABLE = keys_of(STACKABLE_KIND)


def override_keys(overrides: list[str]) -> list[str]:
    """The config keys (or group names) a list of Hydra overrides sets."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    except Exception:  # noqa: BLE001 - unparsable overrides were already refused by the command-line check
        return [str(o).lstrip("+~").split("=", 1)[0] for o in overrides]
    return [o.key_or_group for o in parsed]
