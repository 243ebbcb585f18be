"""One run per folder: `<run>/.ganexp-lock` names the process (pid, host) that is writing the run.

The lock itself is an advisory `flock` on that file, so the operating system releases it when
the process ends in any way (exit, Ctrl-C, kill -9). A lock file left behind by a dead process is
therefore stale: the next run takes it over (and says so in its log). A second run into a live
folder is refused in one line (`FolderInUse`, exit 2) before it writes anything there.
DDP's other ranks run in the folder rank 0 holds, and take no lock of their own.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from ganexp.io import writes
from ganexp.errors import ConfigError

LOCK_FILE = ".ganexp-lock"
log = logging.getLogger("ganexp")


class FolderInUse(ConfigError):
    """Another live process holds the run folder (its record is that process's, not ours)."""


def _rank_zero() -> bool:
    return all(os.environ.get(name, "0") in ("", "0") for name in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def _holder(path: Path) -> str:
    """'pid N on host H since T' as written in the lock file (whatever it holds, shown as data)."""
    try:
        info = json.loads(path.read_text()[:1000])
        return f"pid {int(info['pid'])} on host {str(info['host'])[:100]} since {str(info['since'])[:40]}"
    except (OSError, ValueError, TypeError, KeyError):
        return "another process"


def _refusal(folder: Path, path: Path) -> FolderInUse:
    return FolderInUse(f"{folder} is in use by a run that is still going ({_holder(path)}); wait for it to end, "
                       f"or give this run another folder (drop hydra.run.dir / hydra.sweep.dir)")


def check_free(folder: str | Path) -> None:
    """FolderInUse when a live process holds `folder` (a look only: nothing is created or changed)."""
    path = Path(folder) / LOCK_FILE
    if not _rank_zero() or not path.is_file():
        return
    try:
        handle = open(path)
    except OSError:
        return
    with handle:
        _flock(handle, Path(folder), path)
        fcntl.flock(handle, fcntl.LOCK_UN)


def _flock(handle, folder: Path, path: Path) -> None:
    """`handle` locked for this process, or closed and FolderInUse when a live one holds it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise _refusal(folder, path) from None


def _take(folder: Path, path: Path):
    """The open lock file, flocked; its inode is still the file's name (a run that just ended unlinks it)."""
    for _ in range(3):
        try:
            handle = os.fdopen(writes.open_fd(path, os.O_RDWR | os.O_APPEND), "a+")  # never through a link
        except OSError as err:
            raise ConfigError(f"cannot write in {folder} ({err.strerror}); make it writable, or give the run "
                              f"another folder") from None
        _flock(handle, folder, path)
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # the previous run unlinked it between our open and our lock: take the new one
    raise _refusal(folder, path)


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold `folder` for this process while the block runs; FolderInUse when another live one does."""
    folder = Path(folder)
    if not _rank_zero():
        yield
        return
    path = folder / LOCK_FILE
    handle = _take(folder, path)
    handle.seek(0)
    if handle.read().strip():
        log.warning("%s: taking over the lock of a run that ended without releasing it (%s)", folder, _holder(path))
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    handle.flush()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # released: no lock file means no run is writing here
        handle.close()
