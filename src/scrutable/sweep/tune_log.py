"""Ray Tune's own log: its warnings and errors kept in the sweep folder, the few that
concern the whole sweep shown on the terminal, and a failed restore turned into a refusal.

Tune reports through Python logging under `ray.tune`, which the launcher silences on the
terminal (its lines would tear the progress display). Silenced is not lost: inside
`tune_log(folder)` every warning and error goes to `<sweep folder>/tune.log`, appended
across runs and resumes, and a warning that the whole sweep cannot go on (no node can
offer a trial's resources: Tune waits forever) is also printed as one line.

Why a refusal: when `Tuner.restore` cannot read the experiment's state (a truncated
searcher state, a corrupt experiment state), Tune logs "Failed to restore the run state."
and carries on with "Restarting experiment." (ray/tune/execution/tune_controller.py,
`TuneController.__init__`): the resumed sweep starts from zero, and its export replaces
pareto/ with the new trials only. Here that log record raises `RestoreFailed` instead,
from inside Tune's constructor, before any trial runs or any state file is rewritten; the
CLI prints it as one line and exits 2, and the folder keeps every finished trial.

    with tune_log(folder, resume=True):
        tuner.fit()
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scrutable.errors import UserError
from scrutable.sweep.folder import PARETO_DIR, TUNE_LOG

LOG_FILE = TUNE_LOG  # (the name tests import)
TUNE_LOGGER = "ray.tune"
# The record TuneController logs (with logger.exception) when resume() raised.
RESTORE_FAILED = "Failed to restore the run state."
CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"
# Loggers whose warnings concern the whole sweep, not one trial: shown on the terminal too.
WHOLE_SWEEP = ("ray.tune.execution.insufficient_resources_manager",)


class RestoreFailed(UserError):
    """Tune could not restore the experiment: the resume stops before it restarts from zero."""


class _Watcher(logging.Handler):
    """Turns Tune's failed-restore record into `RestoreFailed`; echoes whole-sweep warnings."""

    def __init__(self, folder: Path, resume: bool) -> None:
        super().__init__(logging.WARNING)
        self.folder = folder
        self.resume = resume

    def emit(self, record: logging.LogRecord) -> None:
        if self.resume and record.name == CONTROLLER_LOGGER and record.getMessage() == RESTORE_FAILED:
            cause = record.exc_info[1] if record.exc_info else None
            reason = f"{type(cause).__name__}: {str(cause).splitlines()[0][:200]}" if cause else "see the log"
            raise RestoreFailed(
                f"Ray Tune could not restore the sweep in {self.folder} ({reason}; details in "
                f"{self.folder / LOG_FILE}): stopped before anything was overwritten, the finished trials are "
                f"still in {self.folder / PARETO_DIR} and MLflow; restore the damaged state file from a copy, or "
                "start a new sweep with --out NEW_FOLDER"
            )
        if record.name in WHOLE_SWEEP:
            print(f"ray tune: {' '.join(record.getMessage().split())}", file=sys.stderr, flush=True)


@contextmanager
def tune_log(folder: Path, *, resume: bool) -> Iterator[Path]:
    """Route Tune's warnings and errors to `folder/tune.log` for the duration (and refuse a
    restore that failed, when `resume`); yields the log's path."""
    logger = logging.getLogger(TUNE_LOGGER)
    saved = logger.level, logger.propagate
    path = folder / LOG_FILE
    to_file = logging.FileHandler(path, encoding="utf-8", delay=True)
    to_file.setLevel(logging.WARNING)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    watcher = _Watcher(folder, resume)
    logger.setLevel(logging.WARNING)
    logger.propagate = False  # not to Ray's stderr handler: the terminal shows the progress display
    logger.addHandler(to_file)  # first: the failed restore's traceback reaches the file before the raise
    logger.addHandler(watcher)
    try:
        yield path
    finally:
        logger.removeHandler(watcher)
        logger.removeHandler(to_file)
        to_file.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
