"""Repair of the sweep's MLflow runs from Tune's results, at the end of a sweep.

The tracking callback (`tracking.py`) writes each report as it comes; a write the store
refuses is retried, then buffered, and a crash or an interrupted sweep loses the buffer.
Tune's own results on disk hold every report (`result.json`, one JSON line per report, in
each trial's folder), so at the end of every sweep, resumed or not, the driver compares each
trial's run with them and writes what is missing:

    lost = callback.repair(collect_trials(folder, spec))   # `MlflowTracking.repair` calls `repair`

For each trial: its run exists (found by its `scrutable.trial_id` tag, or created), every
reported step's metrics and prompt are logged, and a finished or failed trial's run that is
still open is closed with its card or error. What still cannot be written comes back as
one line per trial for the sweep's summary.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrutable.metrics import keys
from scrutable.sweep.folder import ERROR_FILE, PARAMS_FILE, trial_history
from scrutable.sweep.tracking_store import RETRY_DELAYS_S, numeric

if TYPE_CHECKING:
    from scrutable.sweep.tracking import MlflowTracking


def repair(callback: MlflowTracking, records: list[Any]) -> list[str]:
    """Make every child run match Tune's results; return what could not be written.

    `records` are `TrialRecord`s (trial id, status, trial folder, checkpoint). For each
    trial: the run exists, every reported step's metrics and prompt are logged, and a
    finished or failed trial's run is closed with its card or error."""
    callback.flush(RETRY_DELAYS_S)
    callback.pending.clear()  # replaced by the comparison below, which covers them
    lost: list[str] = []
    for record in records:
        try:
            _repair_one(callback, record)
        except Exception as exc:
            lost.append(f"trial {record.trial_id}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return lost


def _repair_one(callback: MlflowTracking, record: Any) -> None:
    from mlflow.entities import Metric

    def retried(action: Any) -> Any:
        return _with_retries(callback, action)

    trial = _RecordTrial(record)
    run_id = retried(lambda: callback.run_id(trial))
    logged = {int(m.step) for m in retried(lambda: callback.client.get_metric_history(run_id, keys.TRAIN_STEP))}
    for row in trial_history(record):  # one row per step, the later report of a resumed step
        step = int(row.get(keys.TRAIN_STEP, -1))
        if step < 0 or step in logged:
            continue
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in numeric(row).items()]
        retried(lambda m=metrics: callback.client.log_batch(run_id, metrics=m))
        if keys.PROMPT_TEXT in row:
            text = str(row[keys.PROMPT_TEXT])
            retried(lambda t=text, s=step: callback.artifacts.text(run_id, t, f"prompts/step_{s:06d}.txt"))
        callback.repaired_writes += 1
    run = retried(lambda: callback.client.get_run(run_id))
    if run.info.status != "RUNNING":
        return
    if record.status == "TERMINATED":
        retried(lambda: callback.close_finished(run_id, trial))
    elif record.status == "ERROR":
        retried(lambda: callback.close_failed(run_id, trial))


def _with_retries(callback: MlflowTracking, action: Any) -> Any:
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return action()
        except Exception:
            callback.reconnect()
            if delay is None:
                raise
            time.sleep(delay)
    return None


class _RecordTrial:
    """A `TrialRecord` read from disk, shaped like the Tune trial the callbacks receive."""

    def __init__(self, record: Any) -> None:
        self.trial_id = record.trial_id
        self.config = _trial_config(record.path)
        self.checkpoint = _Checkpoint(record.checkpoint) if record.checkpoint is not None else None
        error = record.path / ERROR_FILE if record.path is not None else None
        self.error_file = str(error) if error is not None and error.is_file() else None


class _Checkpoint:
    """A checkpoint folder on this machine, shaped like Tune's (`path`, `filesystem`): the
    export reads the experiment locally (a bucket's is mirrored first, `storage.mirror`)."""

    def __init__(self, path: Path) -> None:
        import pyarrow.fs

        self.path = str(path)
        self.filesystem = pyarrow.fs.LocalFileSystem()


def _trial_config(path: Path | None) -> dict[str, Any]:
    params = path / PARAMS_FILE if path is not None else None
    if params is None or not params.is_file():
        return {}
    loaded: dict[str, Any] = json.loads(params.read_text())
    return loaded


