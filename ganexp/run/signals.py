"""Ctrl-C (SIGINT), SIGTERM and SIGHUP (a closed terminal, a dropped ssh session) end a run cleanly
instead of killing it.

While `stop_on_signals(module)` is active, the first of these signals asks the module to stop
after the iteration in progress (`GANModule.request_stop`): the checkpoint callback then writes
`last.ckpt` for that iteration, train.py marks metrics.json `interrupted` (with the signal and
the iteration) and exits 128 + the signal's number (EXIT_CODES). A second signal stops at once, the
default way. After a SIGHUP the terminal is usually gone, so what was written to it goes to /dev/null
instead: a write to a hung-up terminal fails (EIO), and the progress bar's next line would turn the
clean stop into a crash. Before the first iteration (setup: loading data, restoring a checkpoint, training the
metrics classifier on first use, minutes for MNIST) there is nothing to finish or checkpoint, so
the first signal stops at once (StoppedBeforeTraining), recorded the same way. Lightning also
handles SIGTERM (it leaves `fit` with SIGTERMException after the batch); it happens after this handler
has recorded the signal, so they agree.

SIGUSR2 stops a run as SIGTERM does (exit 140). Under SLURM (`hydra/launcher=slurm`) it is the cluster's
notice of a time limit (submitit asks for it with `--signal=USR2@<signal_delay_s>`), and submitit has a
handler for it that requeues the job and exits at once, losing every iteration since the last periodic
checkpoint. While `fit` runs that handler waits: the run stops cleanly, and once its `last.ckpt` and
metrics.json are written `hand_over` gives it the signal, and the next attempt resumes from that checkpoint.
In such a managed job a repeated signal is ignored (the cluster's own kill follows anyway; a "stop now"
would lose the checkpoint being written), and a SIGUSR2 after the last iteration (the final evaluation) is
ignored too: the run is about to finish. Lightning's own SLURM requeue is off there (build.py).
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

EXIT_CODES = {"SIGHUP": 129, "SIGINT": 130, "SIGTERM": 143, "SIGUSR2": 140}  # 128 + the number, as shells say
# Signals whose handler from before the run (submitit's requeue, in a SLURM job) gets them once the run has
# stopped cleanly (hand_over). A job with such a handler is managed by submitit (`managed`).
HANDED_OVER = ("SIGUSR2",)


_early: list[str] = []  # SIGUSR2s that came before submitit set its handler (remember_early)


def remember_early() -> None:
    """A SLURM job's first act (ganexp/run/slurm_job.py): SLURM may send the time limit's SIGUSR2 up to 60 s
    before `signal_delay_s` says, while Python still starts submitit (imports, unpickling the job: seconds, more
    on a loaded node), and Python's default for it ends the process, a job lost without a requeue. Until
    submitit sets its handler, one that comes is remembered instead; the run takes it once its own handlers are
    set (stop_on_signals: before training, a stop at once), and submitit requeues the job as for one in time."""
    signal.signal(signal.SIGUSR2, lambda signum, frame: _early.append(signal.Signals(signum).name))


def managed() -> bool:
    """Whether this process is a job that submitit manages: it has set a handler of its own for SIGUSR2."""
    return hasattr(signal, "SIGUSR2") and callable(signal.getsignal(signal.SIGUSR2))


def _training_over(module) -> bool:
    """The last iteration is done (the final evaluation and checkpoint may be running)."""
    trainer = module.trainer if getattr(module, "attached", False) else None
    return trainer is not None and module.interrupted is None and trainer.fit_loop.done


class StoppedBeforeTraining(BaseException):
    """A signal before the module's first training batch. A BaseException, as KeyboardInterrupt is: Lightning
    tears the fit down and re-raises it, and no `except Exception` takes it for a failed run."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


def stop_reason(module) -> str:
    """metrics.json's reason for a run a signal stopped (GANModule, StackedGAN)."""
    when = "at iteration {}" if module.training_started else "before training started (iteration {})"
    return f"{module.interrupted} {when.format(module.iteration)}"


@contextmanager
def stop_on_signals(module) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    signums = [getattr(signal, name) for name in EXIT_CODES if hasattr(signal, name)]  # no SIGHUP on Windows
    previous = {s: signal.getsignal(s) for s in signums}
    in_job = managed()
    terminal = [fd for fd in (1, 2) if os.isatty(fd)]  # asked now: a hung-up terminal is no tty any more

    def handler(signum, frame) -> None:
        name = signal.Signals(signum).name
        if name == "SIGHUP":  # stdout, stderr that were a terminal go to /dev/null; train.log keeps the run's lines
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                for fd in terminal:
                    os.dup2(devnull, fd)
            finally:
                os.close(devnull)
        if in_job and (module.interrupted is not None or (name in HANDED_OVER and _training_over(module))):
            return  # see the module's docstring: the stop under way, or the end of the run, is the better outcome
        if module.interrupted is not None:  # asked twice: stop now
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not module.training_started:  # nothing to finish or save yet: stop now, not after setup
            raise StoppedBeforeTraining(name)
        module.request_stop(name)

    for s in signums:
        signal.signal(s, handler)
    try:
        if in_job and _early:  # the cluster's notice came before the job could take it: act on it now (before
            _early.clear()  # training: StoppedBeforeTraining, and submitit requeues the job)
            handler(signal.SIGUSR2, None)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def hand_over(name: str) -> None:
    """Give a signal of HANDED_OVER to the handler that was set for it before the run (submitit's: it
    requeues the SLURM job and exits, or raises UncompletedJobError when the job has no retries left)."""
    signum = getattr(signal, name)
    signal.getsignal(signum)(signum, None)


def status(module) -> str:
    """finished, diverged or interrupted: what a run that left fit ended as."""
    if module.diverged_at is not None:
        return "diverged"
    return "interrupted" if module.interrupted is not None else "finished"


def outcome(module) -> dict[str, Any]:
    """The final metrics.json fields of a run that left fit: its status, iteration and why."""
    fields: dict[str, Any] = {"status": status(module), "iteration": module.iteration}
    if fields["status"] == "diverged":
        fields.update(diverged_at=module.diverged_at, reason=module.divergence)
    elif fields["status"] == "interrupted":
        fields.update(signal=module.interrupted, reason=stop_reason(module))
    return fields
