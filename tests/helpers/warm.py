"""`python SCRIPT ARGS` / `python -m MODULE ARGS` for the tests, forked from a warm interpreter.

Each run is a real process of its own (its own pid, signal handlers, exit status, stdout and
stderr, cwd and environment), started by fork() from one interpreter per pytest worker that has
imported torch, Lightning, Hydra and torchvision and nothing of ganexp. Importing those costs a fresh
`python` 4-10 s of CPU on this project's 2-core machines, more than most test runs of train.py
train; the child then runs the script as `python` would (`__main__`, sys.argv, sys.path[0]).
A run that needs a fresh interpreter still gets one: an environment that changes what the
interpreter reads at start (PYTHON*, OMP_*, MKL_*, LD_*), or GANEXP_TEST_FRESH=1 for every run.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

WARM = ["torch", "pytorch_lightning", "torchvision", "torchmetrics", "hydra", "omegaconf", "matplotlib.pyplot",
        "tensorboard", "safetensors", "yaml", "numpy", "PIL.Image"]
AT_START = ("PYTHON", "OMP_", "MKL_", "LD_", "GANEXP_TEST_FRESH")  # read by the interpreter or by torch's import

SERVER = r"""
import json, os, sys
for name in sys.argv[1].split(","):
    try:
        __import__(name)
    except ImportError:
        pass
import atexit, runpy, threading, traceback
requests, replies = os.fdopen(0, "r"), os.fdopen(os.dup(1), "w")


def child(req):
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    argv = req["argv"]
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv, sys.path[0] = argv[1:], os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv, sys.path[0] = argv, os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:  # what a normal interpreter exit runs, in its order (Py_FinalizeEx):
        threading._shutdown()  # non-daemon threads joined, threading's exit hooks (loky stops its workers here)
        atexit._run_exitfuncs()  # then atexit's (logging.shutdown flushes train.log; multiprocessing joins children)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


for line in requests:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        replies.close()
        requests.close()
        child(req)
    print(json.dumps({"pid": pid}), file=replies, flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": status}), file=replies, flush=True)
"""


class Warm:
    """One warm interpreter (a server process) and the environment it was started in."""

    def __init__(self):
        self.env = dict(os.environ)
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, ",".join(WARM)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
        atexit.register(self.close)

    def fits(self, env: dict) -> bool:
        if self.proc.poll() is not None:
            return False
        keys = {k for k in {**env, **self.env} if k.startswith(AT_START)}
        return all(env.get(k) == self.env.get(k) for k in keys)

    def reply(self, timeout: float | None) -> dict | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return json.loads(self.proc.stdout.readline()) if ready else None

    def run(self, argv: list[str], cwd: Path, env: dict, timeout: float | None) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="ganexp-warm-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            pid = self.reply(None)["pid"]
            done = self.reply(timeout)
            if done is None:  # as subprocess.run: kill it, then raise
                os.kill(pid, signal.SIGKILL)
                self.reply(None)
                raise subprocess.TimeoutExpired([sys.executable, *argv], timeout, out.read_text(), err.read_text())
            status = done["status"]
            code = os.waitstatus_to_exitcode(status)
            return subprocess.CompletedProcess([sys.executable, *argv], code, out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


_warm: Warm | None = None


def run_python(*argv: str, cwd: Path, env: dict | None = None, timeout: float | None = 300) -> subprocess.CompletedProcess:
    """`python ARGV` (a script and its arguments, or -m MODULE ...) from `cwd`: a child of the warm
    interpreter when the environment allows, else a fresh `python`."""
    global _warm
    full = {**os.environ, **(env or {})}
    if _warm is None and os.environ.get("GANEXP_TEST_FRESH") != "1":
        _warm = Warm()
    if _warm is not None and _warm.fits(full):  # GANEXP_TEST_FRESH is an AT_START key: env=... with it differs
        return _warm.run(list(argv), cwd, full, timeout)
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full)
