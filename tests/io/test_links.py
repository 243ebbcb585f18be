"""A folder from someone else cannot make ganexp write outside it (ganexp/io/writes.py).

Real run and sweep folders are made once by train.py; then every file and folder in them that ganexp
or Hydra writes (and the ones they write later: summaries, best.ckpt, .hydra/attempts) is in turn made
a symbolic link pointing outside (to a file, to a folder, dangling), and every command is run over the
folder: compare, sample, export, evaluate and train's resume in place in this process; the same sweep
again, `hydra.run.dir=<run>` and the printed resume command as a user runs them. Each either works
without the link or refuses in one line with exit 2, and every victim outside is byte-identical after.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from ganexp.io import writes
from tests.helpers import make_cfg, run_train

RUN_ARGS = ["data=toy", "model=toy_mlp", "callbacks=toy", "eval=none", "trainer.max_epochs=1",
            "trainer.limit_train_batches=6", "log_every=2", "image_every=3", "ckpt_every=3",
            "trainer.enable_progress_bar=false"]
SWEEP_ARGS = ["-m", *RUN_ARGS, "loss.label_smoothing=0,0.1"]
# Written by later commands (or not by the first run): made links too.
LATER_IN_RUN = [".hydra/attempts", "checkpoints/best.ckpt", "checkpoints/last.ckpt"]
LATER_IN_SWEEP = ["summary.md", "summary.csv", "summary.png", "trials.png"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(a finished run folder, a finished sweep folder), made by train.py as a user makes them."""
    top = tmp_path_factory.mktemp("made")
    run, sweep = top / "run", top / "sweep"
    for args in ([*RUN_ARGS, f"hydra.run.dir={run}"], [*SWEEP_ARGS, f"hydra.sweep.dir={sweep}"]):
        done = run_train(*args, cwd=top)
        assert done.returncode == 0, done.stderr[-2000:]
    return run, sweep


def entries(folder: Path) -> list[str]:
    """What ganexp and Hydra write in `folder` (a run, or a sweep: its own files and its first job's): everything
    in it, and the names later commands write."""
    jobs = sorted(str(p.parent.relative_to(folder)) for p in folder.rglob("metrics.json"))
    found = [str(p.relative_to(folder)) for p in folder.rglob("*")]
    if jobs == ["."]:  # a run
        return sorted(set(found) | set(LATER_IN_RUN))
    first = jobs[0].split("/")[0]  # the other jobs hold the same names again
    found = [f for f in found if "/" not in f or f.split("/")[0] == first]
    return sorted(set(found) | {str(Path(jobs[0]) / n) for n in LATER_IN_RUN} | set(LATER_IN_SWEEP))


def job(sweep: Path) -> str:
    """The first job folder of a sweep, relative to it (named after its overrides, seed=0 inside)."""
    return str(sorted(p.parent for p in sweep.rglob("metrics.json"))[0].relative_to(sweep))


class Victims:
    """Files and a folder outside the folder under attack, and a path that must never come to exist."""

    def __init__(self, top: Path):
        top.mkdir()
        self.file, self.folder, self.absent = top / "victim.txt", top / "victim_dir", top / "absent.txt"
        self.file.write_bytes(b"precious\n")
        self.folder.mkdir()
        (self.folder / "last.ckpt").write_bytes(b"another run's checkpoint\n")
        (self.folder / "config.yaml").write_bytes(b"another run's config\n")
        self.before = self.digest()

    def target(self, kind: str) -> Path:
        return {"file": self.file, "folder": self.folder, "dangling": self.absent}[kind]

    def digest(self) -> dict[str, str]:
        top = self.file.parent
        return {str(p.relative_to(top)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
                for p in sorted(top.rglob("*"))}

    def untouched(self) -> bool:
        return self.digest() == self.before and not self.absent.exists()


def plant(folder: Path, entry: str, target: Path) -> Path:
    """`folder/entry` replaced by a link to `target` (its parents made where missing)."""
    path = folder / entry
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


def one_line(capsys) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 1, err


def commands(run: Path, sweep: Path, out: Path):
    """Each command a user may run over someone else's folders, in this process: name → exit status."""
    from ganexp.sweeps import compare
    from ganexp import evaluate, export, sample
    def resume() -> int:
        from train import train

        cfg = make_cfg(run, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *RUN_ARGS, "trainer.max_epochs=2")
        try:
            train(cfg, overrides=[])
        except writes.LinkRefused:
            return 2
        return 0

    for_run = {
        "sample": lambda: sample.main([str(run), "--n", "16", "--out", str(out / "s.npz")]),
        "export": lambda: export.main([str(run), "--out", str(out / "g.safetensors")]),
        "evaluate": lambda: evaluate.main([str(run), "--n", "300"]),
        "resume": resume,
    }
    return for_run, {"compare": lambda: compare.main([str(sweep)])}


KINDS = ("file", "folder", "dangling")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["run", "sweep"])
def test_every_written_path_as_a_link_writes_nothing_outside(made, tmp_path, capsys, where):
    """The whole class: each entry of the run (or of the sweep) in turn a link of each kind, every command."""
    checked = 0
    source = made[0] if where == "run" else made[1]
    for entry in entries(source):
        for kind in KINDS:
            case = tmp_path / f"case{checked}"
            run, sweep = case / "run", case / "sweep"
            shutil.copytree(made[0], run, symlinks=True)
            shutil.copytree(made[1], sweep, symlinks=True)
            victims = Victims(case / "outside")
            plant(run if where == "run" else sweep, entry, victims.target(kind))
            (case / "out").mkdir()
            for_run, for_sweep = commands(run, sweep, case / "out")
            for name, command in (for_run if where == "run" else for_sweep).items():
                code = command()
                one_line(capsys)
                assert code in (0, 2), (entry, kind, name, code)
                assert victims.untouched(), (entry, kind, name)
            checked += 1
            shutil.rmtree(case)
    assert checked >= 3 * 15  # every entry of a real folder was tried, not an empty list


def test_check_tree_names_the_link_and_its_target(tmp_path):
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").symlink_to(tmp_path / "nowhere")
    with pytest.raises(writes.LinkRefused) as err:
        writes.check_tree(tmp_path / "run")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "run" / ".hydra" / "config.yaml") in message
    assert f"(to {tmp_path / 'nowhere'})" in message


def test_replacing_a_linked_file_replaces_the_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep")
    run = writes.confine(tmp_path / "run")
    run.mkdir()
    (run / "metrics.json").symlink_to(victim)
    writes.replace_json(run / "metrics.json", {"status": "finished"})
    assert victim.read_bytes() == b"keep" and not (run / "metrics.json").is_symlink()
    assert (run / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~_umask()  # the user's normal mode
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json"]  # no temporary file left


def test_a_linked_folder_below_a_confined_one_is_refused_and_nothing_is_made(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    run = writes.confine(tmp_path / "run")
    run.mkdir()
    (run / "checkpoints").symlink_to(outside)
    for write in (lambda: writes.replace_bytes(run / "checkpoints" / "last.ckpt", b"x"),
                  lambda: writes.make_dirs(run / "checkpoints" / "deeper"),
                  lambda: writes.open_append(run / "checkpoints" / "train.log")):
        with pytest.raises(writes.LinkRefused):
            write()
    assert list(outside.iterdir()) == []


def test_appends_and_locks_never_follow_a_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep")
    run = writes.confine(tmp_path / "run")
    run.mkdir()
    (run / "train.log").symlink_to(victim)
    with pytest.raises(writes.LinkRefused):
        writes.open_append(run / "train.log")
    from ganexp.run.lock import folder_lock

    (run / ".ganexp-lock").symlink_to(victim)
    with pytest.raises(writes.LinkRefused):
        with folder_lock(run):
            pass
    assert victim.read_bytes() == b"keep"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tree(folder: Path) -> dict[str, tuple]:
    """Every entry below `folder` with what it is and holds (links as their target, not followed)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        out[key] = (("link", os.readlink(p)) if p.is_symlink() else ("dir",) if p.is_dir()
                    else ("file", hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns))
    return out


def refused(done, link: Path) -> None:
    """train.py said no in one line that names the link, exit 2."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-1500:]
    assert lines[0].startswith("ganexp: error: ") and "symbolic link" in lines[0] and str(link) in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("entry, kind", [(".ganexp-lock", "file"), ("checkpoints", "folder"),
                                         (".hydra/config.yaml", "dangling"), ("train.log", "file")])
def test_train_py_refuses_a_run_folder_holding_a_link(made, tmp_path, entry, kind):
    """As a user runs it: the same command again (hydra.run.dir=<run>) and the printed resume command."""
    run = tmp_path / "run"
    shutil.copytree(made[0], run, symlinks=True)
    victims = Victims(tmp_path / "outside")
    plant(run, entry, victims.target(kind))
    before = _tree(run)
    for args in ([*RUN_ARGS, f"hydra.run.dir={run}"], [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                                                       "trainer.max_epochs=2"]):
        refused(run_train(*args, cwd=tmp_path), run / entry)
        assert victims.untouched() and _tree(run) == before  # nothing written, inside or out
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("entry, kind", [("multirun.yaml", "dangling"), ("{job}/train.log", "file"),
                                         ("{job}", "folder"), ("{job}/.hydra", "folder")])
def test_a_sweep_rerun_refuses_a_sweep_folder_holding_a_link(made, tmp_path, entry, kind):
    sweep = tmp_path / "sweep"
    shutil.copytree(made[1], sweep, symlinks=True)
    entry = entry.format(job=job(sweep))
    assert (sweep / entry).exists(), sorted(p.name for p in sweep.iterdir())  # the names are the sweep's own
    victims = Victims(tmp_path / "outside")
    plant(sweep, entry, victims.target(kind))
    before = _tree(sweep)
    refused(run_train(*SWEEP_ARGS, f"hydra.sweep.dir={sweep}", cwd=tmp_path), sweep / entry)
    assert victims.untouched() and _tree(sweep) == before


@pytest.mark.parametrize("make", ["hard link", "fifo", "folder as metrics.json", "folder as train.log"])
def test_a_folder_holding_a_hard_link_a_fifo_or_a_folder_named_as_a_file_is_refused(tmp_path, make):
    """Red team: appends (train.log, the lock) reach another name of a hard-linked file; a FIFO blocks Hydra's
    log forever; a folder where a file is written is a traceback. Each: one line, before anything is written."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep")
    run = tmp_path / "run"
    run.mkdir()
    name = {"hard link": "train.log", "fifo": "train.log", "folder as metrics.json": "metrics.json",
            "folder as train.log": "train.log"}[make]
    if make == "hard link":
        os.link(victim, run / name)
    elif make == "fifo":
        os.mkfifo(run / name)
    else:
        (run / name).mkdir()
    with pytest.raises(writes.FolderRefused) as err:
        writes.check_tree(run)
    assert str(run / name) in str(err.value) and "\n" not in str(err.value)
    assert victim.read_bytes() == b"keep"


def test_dot_dot_after_a_link_is_refused(tmp_path):
    """abspath drops `link/..` without looking; the kernel goes through the link first."""
    (tmp_path / "outside" / "deep").mkdir(parents=True)
    run = writes.confine(tmp_path / "run")
    run.mkdir()
    (run / "linkdir").symlink_to(tmp_path / "outside" / "deep")
    with pytest.raises(writes.LinkRefused, match="linkdir is a symbolic link"):
        writes.replace_bytes(run / "linkdir" / ".." / "e.bin", b"x")
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["deep"]
    (run / "sub").mkdir()
    writes.replace_bytes(run / "sub" / ".." / "ok.bin", b"x")  # `..` after a real folder is just a path
    assert (run / "ok.bin").read_bytes() == b"x"


def test_a_name_read_from_a_file_is_shown_on_one_line_without_terminal_escapes():
    from ganexp.errors import shown

    text = shown("evil\nname\x1b]0;title\x07", 100)
    assert text == "evil\\nname\\x1b]0;title\\x07" and text.isprintable()
