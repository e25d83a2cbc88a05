"""Sweep results on disk: every trial as a `TrialRecord`, the Pareto frontier as files.

`collect_trials` reads a finished (or interrupted) sweep folder without Ray running:

    <storage>/<name>/tune/experiment_state-*.json   status, config and last result of every trial
    <storage>/<name>/tune/<trial dir>/checkpoint_*  state.pt + card.json
    <storage>/<name>/tune/<trial dir>/error.txt     the traceback of a failed trial
    <storage>/<name>/tune/<trial dir>/result.json   one JSON line per report (only with Tune's
                                                    JSON logger, which TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1 removes)
    <storage>/<name>/mlflow.db                      child runs tagged `scrutable.trial_id`

It parses those files directly instead of going through `ray.tune.ExperimentAnalysis`,
which loads the state fine but whose trials need `ray.init()` for `error_file` and
`local_path` (Ray 2.60 asserts "Ray must be initialized to get the session dir"), and
which unpickles every trial config (the spec in it imports torch). Only the trial folders'
paths relative to `tune/` are used, so a sweep folder copied off a cluster still reads.

`export_pareto` keeps the completed trials whose objectives are all finite, marks the
non-dominated ones (`pareto.non_dominated`: no other trial is at least as good in every
objective and strictly better in one) and writes, under `out_dir`:

    trials.csv    every trial, failed ones with the last line of their error
    pareto.csv    the frontier: objectives, params, prompt, faithfulness, run id, checkpoint
    pareto.json   the same plus counts, the hypervolume and the reference point it used
    pareto.png    all trials, the frontier highlighted and joined by its attainment steps
    pareto.html   the same in plotly, self-contained (plotly.js inlined: works offline)

The hypervolume (`pareto.hypervolume`) is measured against a stated reference point: the
one passed in, else `pareto.default_reference` (10% of the observed range beyond the worst
trial). Default references move with the data, so only compare hypervolumes across sweeps
that were exported with the same explicit reference.

Usage::

    spec = load_spec(folder / "spec.yaml")
    summary = export_pareto(collect_trials(folder, spec), spec, folder / "pareto")
    print(render_summary(summary))
"""

from __future__ import annotations

import csv
import html
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.sweep.pareto import Direction, default_reference, hypervolume, non_dominated
from scrutable.sweep.spec import SweepSpec

log = logging.getLogger(__name__)

COMPLETED = "TERMINATED"  # Tune's status of a trial whose function returned
FAILED = "ERROR"
PROMPT_TEXT = "prompt/text"  # string values reported next to the numeric keys
PROMPT_TOKENS = "prompt/token_ids"  # space-separated ints (Tune flattens lists)
FAITHFULNESS = (keys.DISTANCE, keys.OUTPUT_MSE, keys.TOP1_AGREEMENT, keys.PERFORMANCE_DIFF)
REFERENCE_MARGIN = 0.1  # passed to default_reference
LABEL_CHARS = 30  # prompt text shown next to a frontier point in pareto.png
SHORT_PARAM = {"prompt_length": "L", "learning_rate": "lr"}  # hover and summary labels
_DIRECTION: dict[str, Direction] = {"max": "maximize", "min": "minimize"}
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


@dataclass(frozen=True)
class ParetoSummary:
    """What `export_pareto` found and wrote; `render_summary` prints it."""

    sweep: str
    metric_names: list[str]
    directions: list[str]  # the spec's "max"/"min"
    param_names: list[str]
    n_trials: int
    n_completed: int
    n_failed: int
    n_excluded: int  # completed, but an objective is missing or not finite
    frontier: list[TrialRecord]  # best first in the first objective
    hypervolume: float | None
    reference: list[float] | None  # in the objectives' own units, one per metric
    reference_source: str | None
    files: dict[str, Path]
    failures: dict[str, str] = field(default_factory=dict)  # trial id -> error line
    notes: list[str] = field(default_factory=list)


# --- reading a sweep folder -------------------------------------------------------------


def collect_trials(sweep_folder: Path, spec: SweepSpec) -> list[TrialRecord]:
    """Every trial of the sweep in `sweep_folder`, in the order Tune created them.

    Statuses, configs and last results come from Tune's newest experiment state (a trial's
    result.json wins when it holds a later report). Without a readable state (a driver
    killed before its first save) the trial folders alone decide: TERMINATED when the latest
    checkpoint's card says `final`, else ERROR when an error file exists, else UNKNOWN.
    MLflow run ids are looked up once; without a store they are None.
    """
    folder = Path(sweep_folder)
    tune_dir = folder / "tune"
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
    from scrutable.sweep.tracking import TRIAL_TAG, default_uri

    uri = spec.tracking.uri or default_uri(folder)
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
        config = _read_json(trial_dir / "params.json") or last.get("config") or {}
        # A final card wins over an error file: the trial may have failed once, then been retried.
        checkpoint = _latest_checkpoint(trial_dir, last)
        if checkpoint is not None and _read_json(checkpoint / "card.json").get("final") is True:
            status = COMPLETED
        else:
            status = FAILED if (trial_dir / "error.txt").is_file() else "UNKNOWN"
        entries.append(_Entry(trial_id, status, trial_dir, config, last, "error.txt", index))
    return entries


def _looks_like_trial(path: Path) -> bool:
    return any((path / name).exists() for name in ("params.json", "result.json", "error.txt")) or any(
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
    params = {}
    for name, dimension in spec.search.items():
        value = config.get(name)
        if _is_number(value):
            params[name] = dimension.decode(value)
        elif value is not None:
            params[name] = value
    error = None
    if entry.status == FAILED:
        error = "unknown error (no error file)"
        if entry.folder is not None:
            error = _last_line(entry.folder / (entry.error_file or "error.txt")) or error
    text = last.get(PROMPT_TEXT)
    return TrialRecord(
        trial_id=entry.trial_id,
        status=entry.status,
        params=params,
        objectives={m: metrics[m] for m in spec.metric_names if m in metrics},
        metrics=metrics,
        faithfulness={k: metrics[k] for k in FAITHFULNESS if k in metrics},
        prompt_text=None if text is None else str(text),
        token_ids=_token_ids(last.get(PROMPT_TOKENS)),
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
    path = trial_dir / "result.json"
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


# --- the frontier -----------------------------------------------------------------------


def export_pareto(
    records: Sequence[TrialRecord],
    spec: SweepSpec,
    out_dir: Path,
    reference: Sequence[float] | None = None,
) -> ParetoSummary:
    """Write the frontier files under `out_dir` and return what they say.

    `reference` is in the objectives' own units, one value per `spec.metric_names`
    (a lower bound for maximised objectives, an upper bound for minimised ones).
    With no eligible trial, the CSV/JSON files are written empty and the plots skipped.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = spec.metric_names
    directions = [_DIRECTION[d] for d in spec.directions]
    if reference is not None and len(reference) != len(metrics):
        raise ValueError(f"reference has {len(reference)} values for {len(metrics)} objectives ({', '.join(metrics)})")

    excluded = {r.trial_id: _exclusion(r, metrics) for r in records}
    eligible = [r for r in records if excluded[r.trial_id] is None]
    points = np.array([[r.objectives[m] for m in metrics] for r in eligible], dtype=float).reshape(-1, len(metrics))
    on_frontier = non_dominated(points, directions)  # (N,)
    frontier = _best_first([r for r, keep in zip(eligible, on_frontier, strict=True) if keep], metrics, directions)
    frontier_ids = {r.trial_id for r in frontier}

    notes: list[str] = []
    volume = reference_values = source = None
    if eligible:
        if reference is None:
            reference_values = [float(v) for v in default_reference(points, directions, margin=REFERENCE_MARGIN)]
            source = f"default: {REFERENCE_MARGIN:.0%} of the observed range beyond the worst trial"
        else:
            reference_values, source = [float(v) for v in reference], "given"
        volume = hypervolume(points, directions, reference_values)
    else:
        notes.append("no completed trial with finite objectives: no frontier, plots skipped")
    non_finite = sum(1 for reason in excluded.values() if reason and reason.startswith("non-finite"))
    if non_finite:
        notes.append(f"{non_finite} completed trial(s) with a non-finite objective (e.g. perplexity inf) left out")
    if len(metrics) == 1:
        notes.append(f"single objective: the frontier is the best trial(s) by {metrics[0]}")

    files = {
        "trials.csv": out_dir / "trials.csv",
        "pareto.csv": out_dir / "pareto.csv",
        "pareto.json": out_dir / "pareto.json",
    }
    params = list(spec.search)
    _write_csv(files["trials.csv"], records, spec, frontier_ids, excluded, full=True)
    _write_csv(files["pareto.csv"], frontier, spec, frontier_ids, excluded, full=False)
    summary = ParetoSummary(
        sweep=spec.name,
        metric_names=metrics,
        directions=list(spec.directions),
        param_names=params,
        n_trials=len(records),
        n_completed=sum(r.completed for r in records),
        n_failed=sum(r.status == FAILED for r in records),
        n_excluded=sum(1 for r in records if r.completed and excluded[r.trial_id] is not None),
        frontier=frontier,
        hypervolume=volume,
        reference=reference_values,
        reference_source=source,
        files=files,
        failures={r.trial_id: r.error or "" for r in records if r.status == FAILED},
        notes=notes,
    )
    files["pareto.json"].write_text(json.dumps(_summary_json(summary), indent=2, allow_nan=False) + "\n")

    plots = {"pareto.png": out_dir / "pareto.png", "pareto.html": out_dir / "pareto.html"}
    if eligible:
        _plot_png(plots["pareto.png"], eligible, frontier_ids, spec)
        _plot_html(plots["pareto.html"], eligible, frontier_ids, spec)
        files.update(plots)
    else:
        for stale in plots.values():  # an older export's plot would contradict the CSVs
            stale.unlink(missing_ok=True)
    return summary


def _exclusion(record: TrialRecord, metrics: Sequence[str]) -> str | None:
    """Why a trial is not a frontier candidate, or None when it is one."""
    if record.status == FAILED:
        return f"failed: {record.error}"
    if not record.completed:
        return f"not completed ({record.status})"
    missing = [m for m in metrics if m not in record.objectives]
    if missing:
        return f"missing objective {', '.join(missing)}"
    bad = [m for m in metrics if not math.isfinite(record.objectives[m])]
    if bad:
        return "non-finite " + ", ".join(f"{m}={record.objectives[m]}" for m in bad)
    return None


def _best_first(records: list[TrialRecord], metrics: Sequence[str], directions: Sequence[str]) -> list[TrialRecord]:
    def key(record: TrialRecord) -> tuple[float, ...]:
        return tuple(
            -record.objectives[m] if d == "maximize" else record.objectives[m]
            for m, d in zip(metrics, directions, strict=True)
        )

    return sorted(records, key=lambda r: (key(r), r.trial_id))


# --- files ------------------------------------------------------------------------------


def _value_columns(spec: SweepSpec) -> list[str]:
    """Objectives first, then the test metric, faithfulness and step, each once."""
    return list(dict.fromkeys([*spec.metric_names, keys.TASK_TEST, *FAITHFULNESS, keys.TRAIN_STEP]))


def _write_csv(
    path: Path,
    records: Sequence[TrialRecord],
    spec: SweepSpec,
    frontier_ids: set[str],
    excluded: dict[str, str | None],
    *,
    full: bool,
) -> None:
    head = ["trial_id", "status", "on_frontier"] if full else ["trial_id"]
    tail = ["prompt_text", "token_ids", "mlflow_run_id", "checkpoint"] + (["excluded"] if full else [])
    columns = head + list(spec.search) + _value_columns(spec) + tail
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for r in records:
            row: dict[str, Any] = {
                "trial_id": r.trial_id,
                "status": r.status,
                "on_frontier": r.trial_id in frontier_ids,
            }
            row.update({name: r.params.get(name) for name in spec.search})
            row.update({column: r.metrics.get(column) for column in _value_columns(spec)})
            row.update(
                prompt_text=r.prompt_text,
                token_ids=" ".join(map(str, r.token_ids)),
                mlflow_run_id=r.mlflow_run_id,
                checkpoint=r.checkpoint,
                excluded=excluded.get(r.trial_id),
            )
            writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _frontier_json(record: TrialRecord) -> dict[str, Any]:
    return {
        "trial_id": record.trial_id,
        "objectives": record.objectives,
        "params": record.params,
        "prompt_text": record.prompt_text,
        "token_ids": record.token_ids,
        "faithfulness": {k: _finite_or_none(v) for k, v in record.faithfulness.items()},
        "test_metric": _finite_or_none(record.test_metric),
        "mlflow_run_id": record.mlflow_run_id,
        "checkpoint": None if record.checkpoint is None else str(record.checkpoint),
    }


def _summary_json(summary: ParetoSummary) -> dict[str, Any]:
    reference = None
    if summary.reference is not None:
        reference = {
            "values": dict(zip(summary.metric_names, summary.reference, strict=True)),
            "source": summary.reference_source,
        }
    return {
        "sweep": summary.sweep,
        "objectives": [{"metric": m, "mode": d} for m, d in zip(summary.metric_names, summary.directions, strict=True)],
        "counts": {
            "trials": summary.n_trials,
            "completed": summary.n_completed,
            "failed": summary.n_failed,
            "excluded": summary.n_excluded,
            "frontier": len(summary.frontier),
        },
        "hypervolume": summary.hypervolume,
        "reference": reference,
        "frontier": [_frontier_json(r) for r in summary.frontier],
        "failures": summary.failures,
        "notes": summary.notes,
    }


# --- plots ------------------------------------------------------------------------------


def _panels(n_metrics: int) -> list[tuple[int, int | None]]:
    """(x, y) objective indices per panel: a strip for K = 1, every pair for K >= 2."""
    if n_metrics == 1:
        return [(0, None)]
    return [(i, j) for i in range(n_metrics) for j in range(i + 1, n_metrics)]


def _log_axis(metric: str, values: Sequence[float]) -> bool:
    # Perplexities span orders of magnitude (a readable prompt ~10s, a soft one ~1e4+).
    return metric.endswith("perplexity") and not metric.endswith("log_perplexity") and min(values) > 0


def _axis_label(metric: str, mode: str) -> str:
    return f"{metric} ({'higher' if mode == 'max' else 'lower'} is better)"


def _step_path(points: list[tuple[float, float]], modes: tuple[str, str]) -> list[tuple[float, float]]:
    """The frontier's attainment staircase: between neighbours, the corner both dominate."""
    worse = [min if mode == "max" else max for mode in modes]
    ordered = sorted(points)
    path = ordered[:1]
    for a, b in zip(ordered, ordered[1:], strict=False):
        path += [(worse[0](a[0], b[0]), worse[1](a[1], b[1])), b]
    return path


def _truncate(text: str | None, chars: int = LABEL_CHARS) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{SHORT_PARAM.get(k, k)}={v:.3g}" if isinstance(v, float) else f"{SHORT_PARAM.get(k, k)}={v}"
        for k, v in params.items()
    )


def _plot_png(path: Path, eligible: list[TrialRecord], frontier_ids: set[str], spec: SweepSpec) -> None:
    # Figure without pyplot: renders with Agg and never touches the global backend.
    from matplotlib.figure import Figure

    metrics, modes = spec.metric_names, spec.directions
    panels = _panels(len(metrics))
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(6.5 * columns, (2.6 if len(metrics) == 1 else 5.0) * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    rest = [r for r in eligible if r.trial_id not in frontier_ids]
    best = [r for r in eligible if r.trial_id in frontier_ids]
    for ax, (i, j) in zip(axes, panels, strict=False):
        xi = metrics[i]

        def ys(group: list[TrialRecord], j: int | None = j) -> list[float]:
            return [0.0] * len(group) if j is None else [r.objectives[metrics[j]] for r in group]

        ax.scatter([r.objectives[xi] for r in rest], ys(rest), s=22, color="0.6", label="trial", zorder=2)
        ax.scatter(
            [r.objectives[xi] for r in best],
            ys(best),
            s=55,
            color="tab:red",
            edgecolor="black",
            label="Pareto frontier",
            zorder=3,
        )
        if j is not None and len(metrics) == 2:
            steps = _step_path([(r.objectives[xi], r.objectives[metrics[j]]) for r in best], (modes[i], modes[j]))
            ax.plot([p[0] for p in steps], [p[1] for p in steps], color="tab:red", linewidth=1.2, zorder=1)
        for r, y in zip(best, ys(best), strict=True):
            ax.annotate(
                _truncate(r.prompt_text) or r.trial_id,
                (r.objectives[xi], y),
                xytext=(5, 5),
                textcoords="offset points",
                fontsize=7,
            )
        ax.set_xlabel(_axis_label(xi, modes[i]))
        if _log_axis(xi, [r.objectives[xi] for r in eligible]):
            ax.set_xscale("log")
        if j is None:
            ax.set_yticks([])
        else:
            ax.set_ylabel(_axis_label(metrics[j], modes[j]))
            if _log_axis(metrics[j], ys(eligible)):
                ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.margins(0.12)  # room for the prompt labels of extreme points
        ax.legend(fontsize=8, loc="best")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle(f"sweep {spec.name}: {len(best)} of {len(eligible)} trials on the frontier")
    figure.savefig(path, dpi=120)


def _plot_html(path: Path, eligible: list[TrialRecord], frontier_ids: set[str], spec: SweepSpec) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics, modes = spec.metric_names, spec.directions
    panels = _panels(len(metrics))
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = make_subplots(rows=rows, cols=columns)
    groups = {
        "trial": ([r for r in eligible if r.trial_id not in frontier_ids], {"size": 7, "color": "#999999"}),
        "Pareto frontier": (
            [r for r in eligible if r.trial_id in frontier_ids],
            {"size": 11, "color": "#d62728", "line": {"width": 1, "color": "black"}},
        ),
    }
    for index, (i, j) in enumerate(panels):
        row, col = index // columns + 1, index % columns + 1
        for name, (group, marker) in groups.items():
            figure.add_trace(
                go.Scatter(
                    x=[r.objectives[metrics[i]] for r in group],
                    y=[0.0] * len(group) if j is None else [r.objectives[metrics[j]] for r in group],
                    mode="markers",
                    name=name,
                    marker=marker,
                    legendgroup=name,
                    showlegend=index == 0,
                    text=[_hover(r, metrics) for r in group],
                    hovertemplate="%{text}<extra></extra>",
                ),
                row=row,
                col=col,
            )
        if j is not None and len(metrics) == 2:
            best = groups["Pareto frontier"][0]
            corners = [(r.objectives[metrics[i]], r.objectives[metrics[j]]) for r in best]
            steps = _step_path(corners, (modes[i], modes[j]))
            figure.add_trace(
                go.Scatter(
                    x=[p[0] for p in steps],
                    y=[p[1] for p in steps],
                    mode="lines",
                    hoverinfo="skip",
                    line={"color": "#d62728", "width": 1.5},
                    showlegend=False,
                ),
                row=row,
                col=col,
            )
        x_log = _log_axis(metrics[i], [r.objectives[metrics[i]] for r in eligible])
        figure.update_xaxes(
            title_text=_axis_label(metrics[i], modes[i]), type="log" if x_log else None, row=row, col=col
        )
        if j is None:
            figure.update_yaxes(showticklabels=False, row=row, col=col)
        else:
            y_log = _log_axis(metrics[j], [r.objectives[metrics[j]] for r in eligible])
            figure.update_yaxes(
                title_text=_axis_label(metrics[j], modes[j]), type="log" if y_log else None, row=row, col=col
            )
    figure.update_layout(
        title=f"sweep {spec.name}: Pareto frontier",
        template="plotly_white",
        height=(320 if len(metrics) == 1 else 520) * rows,
        width=620 * columns,
    )
    # Inline plotly.js (~4.8 MB): the report must open on an offline cluster node.
    figure.write_html(path, include_plotlyjs=True, full_html=True)


def _hover(record: TrialRecord, metrics: Sequence[str]) -> str:
    lines = [
        f"<b>{html.escape(record.trial_id)}</b>",
        f"prompt: {html.escape(record.prompt_text or '')}",
        html.escape(_params_text(record.params)),
    ]
    lines += [f"{html.escape(m)} = {record.objectives[m]:.4g}" for m in metrics]
    return "<br>".join(lines)


# --- the one-screen summary ----------------------------------------------------------------


def render_summary(summary: ParetoSummary, max_rows: int = 15) -> str:
    """A plain-text table of the frontier, counts, hypervolume and files (fits one screen)."""
    lines = [
        f"sweep {summary.sweep}: {summary.n_trials} trials, {summary.n_completed} completed, "
        f"{summary.n_failed} failed, {summary.n_excluded} excluded; {len(summary.frontier)} on the Pareto frontier"
    ]
    if summary.frontier:
        header = [
            "trial",
            *(f"{m} ({d})" for m, d in zip(summary.metric_names, summary.directions, strict=True)),
            *(SHORT_PARAM.get(p, p) for p in summary.param_names),
            "prompt",
        ]
        rows = []
        for r in summary.frontier[:max_rows]:
            rows.append(
                [
                    r.trial_id,
                    *(f"{r.objectives[m]:.4g}" for m in summary.metric_names),
                    *(_cell(r.params.get(p)) for p in summary.param_names),
                    repr(_truncate(r.prompt_text, 40)),
                ]
            )
        widths = [max(len(str(row[c])) for row in [header, *rows]) for c in range(len(header))]
        for row in [header, *rows]:
            lines.append("  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
        if len(summary.frontier) > max_rows:
            lines.append(f"  ... and {len(summary.frontier) - max_rows} more in pareto.csv")
    if summary.hypervolume is not None and summary.reference is not None:
        reference = ", ".join(f"{m}={v:.4g}" for m, v in zip(summary.metric_names, summary.reference, strict=True))
        lines.append(
            f"hypervolume {summary.hypervolume:.4g} w.r.t. reference ({reference}; {summary.reference_source})"
        )
    for trial_id, reason in list(summary.failures.items())[:5]:
        lines.append(f"failed {trial_id}: {reason}")
    if len(summary.failures) > 5:
        lines.append(f"... and {len(summary.failures) - 5} more failures in trials.csv")
    lines += [f"note: {note}" for note in summary.notes]
    folder = next(iter(summary.files.values())).parent if summary.files else None
    if folder is not None:
        lines.append(f"files in {folder}: {', '.join(summary.files)}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
