"""The one way ganexp writes a file: confined to its folder, never through a symbolic link, whole or not at all.

Run and sweep folders travel (a tarball of `outputs/multirun/...`, a shared drive, a colleague's home), so a
folder someone else made is untrusted: a link planted inside it (`checkpoints -> ~/other-run/checkpoints`,
`summary.md -> ~/.bashrc`) must not make ganexp write outside it, as tar and rsync refuse to write through
links inside a tree they unpack. The rules, for every file ganexp writes:

- A folder ganexp writes into is `confine`d first (a run folder, a sweep folder, the metrics cache).
  Below a confined folder no component of a path written to may be a symbolic link: `LinkRefused`
  (a ConfigError: one line naming the link and where it points, exit 2). The confined folder itself
  may be a link (`outputs` on a scratch disk is normal), and so may anything ganexp only reads.
- `check_tree` refuses a folder that holds a link anywhere below it, before a run or sweep writes
  anything there (Hydra writes `.hydra/*.yaml`, `train.log`, `multirun.yaml` with plain `open`, so the
  check has to come before Hydra starts: `ConfinedFolders`, a Hydra callback, and the job-folder resolver).
- A whole file is written to a new temporary file in the same real folder (O_EXCL: never an existing
  name or link), fsynced, renamed over the target with `os.replace` (which replaces a link, never
  follows it), and the folder is fsynced, so a kill or a full disk leaves the old file or the new one.
  Files get the user's normal mode (0666 & ~umask), not mkstemp's 0600: exports are made to be shared.
- Appends and locks open with O_NOFOLLOW.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from ganexp.errors import ConfigError, failed, shown

FILES = {"metrics.json", "train.log", "hparams.yaml", ".ganexp-lock", ".ganexp-run", "multirun.yaml", "config.yaml",
         "hydra.yaml", "overrides.yaml", "curves.csv", "last.ckpt", "best.ckpt"}  # written as files: never a folder
MAX_ENTRIES = 100_000  # entries check_tree looks at: a folder crafted with millions of files fails in one line
_confined: set[str] = set()  # absolute (not resolved) folders this process writes into


class FolderRefused(ConfigError):
    """A run or sweep folder ganexp will not write into as it is (nothing is written, not even a record)."""


class LinkRefused(FolderRefused):
    """A path ganexp would write through is a symbolic link inside a folder it writes into."""


def _abs(path: str | Path) -> str:
    """Absolute, links left as they are. abspath drops `link/..` without looking, where the kernel goes
    through the link first: a `..` after a link is refused."""
    raw = os.path.join(os.getcwd(), os.fspath(path))
    parts = raw.split(os.sep)
    for i, part in enumerate(parts):
        before = os.sep.join(parts[:i])
        if part == ".." and before and os.path.islink(before):
            raise _refusal(before)
    return os.path.abspath(raw)


def confine(folder: str | Path) -> Path:
    """Declare `folder` one that ganexp writes into: no link below it is ever written through."""
    _confined.add(_abs(folder))
    return Path(folder)


def inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _root(path: str) -> str | None:
    """The innermost confined folder that holds `path` (None: none does)."""
    return max((root for root in _confined if inside(path, root)), key=len, default=None)


def _refusal(link: str) -> LinkRefused:
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    return LinkRefused(f"{shown(link, 1000)} is a symbolic link (to {shown(target, 1000)}); ganexp never writes "
                       f"through a link inside a run or sweep folder: remove the link (a copy made with `cp -rL` has "
                       f"none), or use another folder")


def check_path(path: str | Path, *, final: bool = True) -> Path:
    """LinkRefused when a component of `path` below its confined folder is a link (`final`: the last one too;
    a file replaced whole may itself be a link, since os.replace replaces the link)."""
    full = _abs(path)
    root = _root(full)
    parts = Path(full).relative_to(root).parts if root else (Path(full).name,)
    current = root or os.path.dirname(full)
    for part in parts if final else parts[:-1]:
        current = os.path.join(current, part)
        if os.path.islink(current):
            raise _refusal(current)
    return Path(path)


def check_tree(folder: str | Path) -> None:
    """LinkRefused for the first link anywhere below `folder` (not followed), ConfigError for anything there
    that is not a plain file or folder (a FIFO, a folder named as a file ganexp writes) or is a hard link;
    nothing is changed."""
    folder = _abs(folder)
    if not os.path.isdir(folder):
        return
    seen = 0
    for top, dirs, files in os.walk(folder):  # os.walk does not descend into links to folders
        for name in sorted(dirs + files):
            seen += 1
            if seen > MAX_ENTRIES:
                raise FolderRefused(f"{shown(folder, 120)} holds more than {MAX_ENTRIES} files and folders; "
                                  "is it a run or sweep folder? give the run another folder")
            path = os.path.join(top, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                raise _refusal(path)
            if stat.S_ISDIR(info.st_mode) and name not in FILES:
                continue
            if not stat.S_ISREG(info.st_mode):  # a FIFO blocks the writer, a folder where a file goes fails it
                raise FolderRefused(f"{shown(path, 1000)} is not a plain file; ganexp writes only plain files in a "
                                  "run or sweep folder: remove it, or use another folder")
            if info.st_nlink > 1:  # another name of the same file may lie outside: an append would reach it
                raise FolderRefused(f"{shown(path, 1000)} is a hard link ({info.st_nlink} names for one file); ganexp "
                                  "never writes into a file another folder shares: copy the folder without "
                                  "hard links (`cp -r`, not `cp -al`), or use another folder")


def make_dirs(folder: str | Path) -> Path:
    """`folder` and its missing parents, made one at a time; none below its confined folder may be a link."""
    check_path(folder)
    full = _abs(folder)
    missing: list[str] = []
    while not os.path.isdir(full):
        missing.append(full)
        full = os.path.dirname(full)
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
        check_path(path)  # a link made between the look and the mkdir
    return Path(folder)


def _mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync(path: str | Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A new temporary file beside `path` to write (keeping its suffix: savez, savefig and PIL go by it);
    renamed over `path` when the block ends without an error, removed otherwise."""
    path = Path(path)
    make_dirs(path.parent)
    check_path(path, final=False)
    for _ in range(100):
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        with contextlib.suppress(FileExistsError):
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _mode()))
            break
    else:
        raise OSError(f"no free temporary name beside {path}")
    try:
        yield tmp
        if not tmp.is_file() or tmp.is_symlink():  # a writer that removed or swapped the file
            raise OSError(f"{tmp} was not written")
        _fsync(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # some file systems cannot open or sync a folder
        _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)


def replace_bytes(path: str | Path, data: bytes) -> Path:
    return replace_with(path, lambda tmp: tmp.write_bytes(data))


def replace_text(path: str | Path, text: str) -> Path:
    return replace_bytes(path, text.encode())


def replace_json(path: str | Path, data: Any) -> Path:
    return replace_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=True))


def replace_with(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """`write(tmp)` makes the file (torch.save, savefig, save_file, ...), then it replaces `path`."""
    with replacing(path) as tmp:
        write(tmp)
    return Path(path)


def open_fd(path: str | Path, flags: int) -> int:
    """os.open of `path` with O_NOFOLLOW and O_CREAT, its folders made and checked (appends, locks)."""
    path = Path(path)
    make_dirs(path.parent)
    check_path(path)
    try:
        return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), _mode())
    except OSError:
        if os.path.islink(path):  # ELOOP: made a link after the check
            raise _refusal(str(path)) from None
        raise


def open_append(path: str | Path, encoding: str = "utf-8"):
    """A text file opened for appending, never through a link."""
    return os.fdopen(open_fd(path, os.O_WRONLY | os.O_APPEND), "a", encoding=encoding)


def is_regular(path: str | Path) -> bool:
    """A plain file (not a link, not a folder): what an existing output may be to be replaced with --force."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def refuse_now(err: ConfigError) -> None:
    """Where Hydra calls ganexp (callbacks, resolvers) a ConfigError would become Hydra's traceback:
    say it in ganexp's one line and exit 2 (HYDRA_FULL_ERROR=1 keeps the traceback)."""
    sys.exit(failed("ganexp", err))


from hydra.experimental.callback import Callback  # noqa: E402  (hydra-core is a dependency)


class ConfinedFolders(Callback):
    """conf/hydra/default.yaml: a run or sweep folder with a link inside is refused before Hydra writes in it."""

    def on_run_start(self, config, **kwargs: Any) -> None:
        self._check(str(config.hydra.run.dir))

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        self._check(str(config.hydra.sweep.dir))

    @staticmethod
    def _check(folder: str) -> None:
        confine(folder)
        try:
            check_tree(folder)
        except ConfigError as err:
            refuse_now(err)
