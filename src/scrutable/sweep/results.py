"""Reading a sweep folder: every Tune trial as a `TrialRecord`, without Ray running.

    <storage>/<name>/tune/experiment_state-*.json   status, config and last result of every trial
    <storage>/<name>/tune/<trial dir>/checkpoint_*  state.pt + card.json
    <storage>/<name>/tune/<trial dir>/error.txt     the traceback of a failed trial
    <storage>/<name>/tune/<trial dir>/result.json   one JSON line per report (only with Tune's
                                                    JSON logger, which TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1 removes)
    <storage>/<name>/mlflow.db                      child runs tagged `scrutable.trial_id`

It parses those files directly instead of going through `ray.tune.ExperimentAnalysis`,
which loads the state fine but whose trials need `ray.init()` for `error_file` and
`local_path` (Ray 2.60 asserts "Ray must be initialized to get the session dir"), and
which unpickles every trial config. The format read is Ray 2.60's (pinned in
pyproject.toml) and `tests/sweep/test_results.py` checks it on a real Tune run, so a Ray
upgrade that changes it fails a test instead of an export. Only the trial folders' paths
relative to `tune/` are used, so a sweep folder copied off a cluster still reads.

A trial's row is its last report: the best prompt's record with its test numbers
(`trainables/record.py`), so every value in a `TrialRecord` describes one prompt. The
searched values are read decoded from the trial's config (`search_space.py`).

    records = SweepFolder.open(folder).trials()
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.sweep.folder import CARD_FILE, ERROR_FILE, PARAMS_FILE, RESULT_FILE, TUNE_DIR, mlflow_uri
from scrutable.sweep.spec import SweepSpec

log = logging.getLogger(__name__)

COMPLETED = "TERMINATED"  # Tune's status of a trial whose function returned
FAILED = "ERROR"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the first line of error.txt


@dataclass(frozen=True)
class TrialRecord:
    """One Tune trial as the export sees it; values come from the trial's last report."""

    trial_id: str
    status: str  # Tune's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    params: dict[str, Any]  # searched values, decoded (alpha's zero region is 0.0)
    objectives: dict[str, float]  # spec.metric_names present in the last result
    metrics: dict[str, float] = field(default_factory=dict)  # every numeric `ns/key` of it
    faithfulness: dict[str, float] = field(default_factory=dict)
    prompt_text: str | None = None
    token_ids: list[int] = field(default_factory=list)
    test_metric: float | None = None
    mlflow_run_id: str | None = None
    checkpoint: Path | None = None  # the latest checkpoint directory
    error: str | None = None  # failed trials: last line of error.txt
    path: Path | None = None  # the trial's folder under tune/

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED


def collect_trials(sweep_folder: Path, spec: SweepSpec) -> list[TrialRecord]:
    """Every trial of the sweep in `sweep_folder`, in the order Tune created them.

    Statuses, configs and last results come from Tune's newest experiment state (a trial's
    result.json wins when it holds a later report). Without a readable state (a driver
    killed before its first save) the trial folders alone decide: TERMINATED when the latest
    checkpoint's card says `final`, else ERROR when an error file exists, else UNKNOWN.
    MLflow run ids are looked up once; without a store they are None.
    """
    folder = Path(sweep_folder)
    tune_dir = folder / TUNE_DIR
    if not tune_dir.is_dir():
        raise UserError(f"{tune_dir} does not exist: is {folder} a sweep folder (run `scrutable sweep` first)?")
    entries = _entries_from_state(tune_dir)
    if entries is None:
        log.warning("no readable experiment state in %s: reading trial folders only", tune_dir)
        entries = _entries_from_folders(tune_dir)
    run_ids = mlflow_run_ids(folder, spec)
    entries = sorted(entries, key=lambda e: (e.index, e.trial_id))  # searcher ids are random hex
    return [replace(_record(entry, spec), mlflow_run_id=run_ids.get(entry.trial_id)) for entry in entries]


def mlflow_run_ids(folder: Path, spec: SweepSpec) -> dict[str, str]:
    """Tune trial id -> MLflow child run id, from the runs' `scrutable.trial_id` tags.

    Empty when the store does not exist (a SQLite file is never created here) or does
    not answer: the export must not fail because tracking did.
    """
    from scrutable.sweep.tracking import TRIAL_TAG

    uri = spec.tracking.uri or mlflow_uri(folder)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return {}
    if uri.startswith(("http://", "https://")):
        # A stopped server would otherwise be retried for minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(spec.tracking.experiment or spec.name)
        if experiment is None:
            return {}
        found: dict[str, str] = {}
        token = None
        while True:
            # Same match as tracking's own lookup: the trial tag within the experiment.
            page = client.search_runs([experiment.experiment_id], page_token=token)
            for run in page:
                trial_id = run.data.tags.get(TRIAL_TAG)
                if trial_id:
                    found.setdefault(trial_id, run.info.run_id)  # newest first, as tracking picks
            token = page.token
            if not token:
                return found
    except Exception as exc:  # MLflow raises many types for "cannot reach the store"
        log.warning("MLflow store %s unreadable (%s): run ids left empty", uri, type(exc).__name__)
        return {}


@dataclass(frozen=True)
class _Entry:
    trial_id: str
    status: str
    folder: Path | None
    config: dict[str, Any]
    last_result: dict[str, Any]
    error_file: str | None
    index: int  # Tune's trial counter (the "2" of "2_alpha=...")


def _entries_from_state(tune_dir: Path) -> list[_Entry] | None:
    # A resumed sweep leaves one state per session, named by its start time; the newest
    # session's knows every trial. (Not mtime: Tune re-syncs the old files too.)
    states = sorted(tune_dir.glob("experiment_state-*.json"), key=lambda p: p.name)
    if not states:
        return None
    try:
        state = json.loads(states[-1].read_text())  # Python's json reads Tune's Infinity / NaN
        entries = []
        for trial_json, metadata_json in state["trial_data"]:
            trial = json.loads(trial_json)
            metadata = json.loads(metadata_json)
            relative = trial.get("relative_logdir")
            trial_dir = tune_dir / relative if relative else _find_folder(tune_dir, trial["trial_id"])
            last = metadata.get("last_result")
            entries.append(
                _Entry(
                    trial_id=trial["trial_id"],
                    status=trial["status"],
                    folder=trial_dir if trial_dir is not None and trial_dir.is_dir() else None,
                    config=trial.get("config") or {},
                    last_result=last if isinstance(last, dict) else {},
                    error_file=metadata.get("error_filename"),
                    index=_leading_int(str(trial.get("experiment_tag", ""))),
                )
            )
        return entries
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _entries_from_folders(tune_dir: Path) -> list[_Entry]:
    entries = []
    for trial_dir in sorted(p for p in tune_dir.iterdir() if p.is_dir() and _looks_like_trial(p)):
        last = _last_result(trial_dir)
        # <trainable>_<trial id>_<index>_<tag>: ids are "1b1b6aa7" (searchers) or "945f7_00000" (grids).
        match = re.search(r"_([0-9a-f]{5}_\d{5}|[0-9a-f]{8})_(\d+)_", trial_dir.name)
        trial_id = str(last.get("trial_id") or (match.group(1) if match else trial_dir.name))
        index = int(match.group(2)) if match else _leading_int("")
        config = _read_json(trial_dir / PARAMS_FILE) or last.get("config") or {}
        # A final card wins over an error file: the trial may have failed once, then been retried.
        checkpoint = _latest_checkpoint(trial_dir, last)
        if checkpoint is not None and _read_json(checkpoint / CARD_FILE).get("final") is True:
            status = COMPLETED
        else:
            status = FAILED if (trial_dir / ERROR_FILE).is_file() else "UNKNOWN"
        entries.append(_Entry(trial_id, status, trial_dir, config, last, ERROR_FILE, index))
    return entries


def _looks_like_trial(path: Path) -> bool:
    return any((path / name).exists() for name in (PARAMS_FILE, RESULT_FILE, ERROR_FILE)) or any(
        path.glob("checkpoint_*")
    )


def _leading_int(tag: str) -> int:
    head = tag.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 62  # unknown: after the numbered trials


def _find_folder(tune_dir: Path, trial_id: str) -> Path | None:
    matches = sorted(tune_dir.glob(f"*_{trial_id}_*"))
    return matches[-1] if matches else None


def _record(entry: _Entry, spec: SweepSpec) -> TrialRecord:
    last = entry.last_result
    if entry.folder is not None:
        logged = _last_result(entry.folder)
        if _iteration(logged) > _iteration(last):  # the state is saved less often than results
            last = logged
    metrics = {k: v if isinstance(v, int) else float(v) for k, v in last.items() if "/" in k and _is_number(v)}
    config = entry.config or last.get("config") or {}
    params = spec.space.decoded(config)
    error = None
    if entry.status == FAILED:
        error = "unknown error (no error file)"
        if entry.folder is not None:
            error = _last_line(entry.folder / (entry.error_file or ERROR_FILE)) or error
    text = last.get(keys.PROMPT_TEXT)
    return TrialRecord(
        trial_id=entry.trial_id,
        status=entry.status,
        params=params,
        objectives={m: metrics[m] for m in spec.metric_names if m in metrics},
        metrics=metrics,
        faithfulness={k: metrics[k] for k in keys.FAITHFULNESS if k in metrics},
        prompt_text=None if text is None else str(text),
        token_ids=_token_ids(last.get(keys.PROMPT_TOKEN_IDS)),
        test_metric=metrics.get(keys.TASK_TEST),
        checkpoint=_latest_checkpoint(entry.folder, last) if entry.folder is not None else None,
        error=error,
        path=entry.folder,
    )


def _iteration(result: dict[str, Any]) -> int:
    value = result.get("training_iteration")
    return int(value) if isinstance(value, int | float) else -1


def _last_result(trial_dir: Path) -> dict[str, Any]:
    """The last complete line of result.json (a killed trial may leave half a line)."""
    path = trial_dir / RESULT_FILE
    if not path.is_file():
        return {}
    for line in reversed(path.read_text().splitlines()):
        if line.strip():
            try:
                loaded = json.loads(line)
            except ValueError:
                continue
            if isinstance(loaded, dict):
                return loaded
    return {}


def _latest_checkpoint(trial_dir: Path, last: dict[str, Any]) -> Path | None:
    named = last.get("checkpoint_dir_name")
    if named and (trial_dir / named).is_dir():
        return trial_dir / named
    # Reports without a checkpoint leave no name; zero-padded indices sort by name.
    found = sorted(p for p in trial_dir.glob("checkpoint_*") if p.is_dir())
    return found[-1] if found else None


def _last_line(path: Path) -> str | None:
    if not path.is_file():
        return None
    lines = [_ANSI.sub("", line).strip() for line in path.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else None


def _token_ids(value: Any) -> list[int]:
    if value is None:
        return []
    parts = value.split() if isinstance(value, str) else list(value)
    try:
        return [int(p) for p in parts]
    except (TypeError, ValueError):
        return []


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
