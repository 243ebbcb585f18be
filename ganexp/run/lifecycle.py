"""One run's lifecycle, for a plain run (train.py) and for each member of a stack (ganexp/gan/stack.py): fit under
the signal handlers, then the outcome (the final status, derived here only), written to metrics.json and to
the run's TensorBoard HParams row."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pytorch_lightning.utilities.exceptions import SIGTERMException

from ganexp.run.results import update_metrics
from ganexp.run.signals import StoppedBeforeTraining, stop_on_signals, stop_reason


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


def fit(trainer, module, datamodule, runs: list[tuple[Any, Any]], ckpt_path: str | None = None,
        resumes_at: int | None = None) -> None:
    """trainer.fit(module) under ganexp's signal handlers (Ctrl-C / SIGTERM: finish the iteration, checkpoint
    it, stop). `runs`: (HParams row, member module) of every run it trains, whose rows say "failed" if fit
    raises. `resumes_at`: the iteration a resume starts from, kept when a signal comes before it was read."""
    with stop_on_signals(module):
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SIGTERMException:  # Lightning's way out of fit after SIGTERM; the handler above recorded it
            module.request_stop("SIGTERM")
        except StoppedBeforeTraining as stop:  # a signal during setup: nothing to finish or checkpoint
            if resumes_at is not None:
                module.iteration = max(module.iteration, resumes_at)
            module.request_stop(stop.signal_name)
        except Exception:  # a failed run still gets its HParams row, so the table shows the failure
            for row, run in runs:
                row.write_after(trainer, run, {"status": "failed", "iteration": run.iteration})
            raise


def finish(trainer, module, row, out: str | Path) -> dict:
    """The run's outcome into its metrics.json (rank 0) and its HParams row (if on_fit_end did not write it)."""
    fields = outcome(module)
    record = update_metrics(out, **fields) if trainer.is_global_zero else fields
    row.write_after(trainer, module, record)
    return record
