"""The Pareto frontier of a sweep, as files: which trials are non-dominated, and what they say.

`export_pareto` keeps the completed trials whose objectives are all finite, marks the
non-dominated ones (`pareto.non_dominated`: no other trial is at least as good in every
objective and strictly better in one) and writes, under `out_dir`:

    trials.csv    every trial, failed ones with the last line of their error
    pareto.csv    the frontier: objectives, params, test metric, faithfulness, prompt, run id, checkpoint
    pareto.json   the same plus counts, the hypervolume and the reference point it used
    pareto.png    all trials, the frontier highlighted and joined by its attainment steps (`plots.py`)
    pareto.html   the same in plotly, offline: plotly.js from plotly.min.js beside it

Every value of a row comes from one trial's final report, which describes one prompt (the
best on the dev objective) with its dev and test numbers.

A baseline (`task_baseline`): a prompt that scores no better than no prompt at all, or than
a uniform guess over the task's labels (-log 2 on SST-2's dev objective, the mean
log-probability of the correct label; 1/2 on accuracy), is useless however readable it is.
The baseline is the better of the two: the trials measure the empty prompt on their dev
sample (`baseline/*` in their final report), and the uniform guess needs no model. Only
trials that beat it are frontier candidates; the others stay in trials.csv with the reason
in `excluded`. Where a task has no labels (Yelp's joint score) there is no baseline.

The hypervolume (`pareto.hypervolume`) is measured against a stated reference point: the
one passed in, else `pareto.default_reference` (10% of the observed range beyond the worst
candidate) with the baseline as its task coordinate, so it counts only what beats the
baseline. Default references move with the data, so only compare hypervolumes across
sweeps that were exported with the same explicit reference.

    summary = export_pareto(folder.trials(), folder.spec, folder.pareto_dir)   # folder: SweepFolder
    print(render_summary(summary))

`select` is the frontier alone, without files; `scrutable report` uses it too, so both
show the same trials in the same order.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scrutable.metrics import keys
from scrutable.paths import atomic_path, write_atomically
from scrutable.sweep.folder import PARETO_CSV, PARETO_HTML, PARETO_JSON, PARETO_PNG, TRIALS_CSV
from scrutable.sweep.pareto import default_reference, directions_of, hypervolume, non_dominated
from scrutable.sweep.plots import SHORT_PARAM, plot_html, plot_png
from scrutable.sweep.results import FAILED, TrialRecord
from scrutable.sweep.spec import SweepSpec
from scrutable.sweep.terminal import WIDTH, fit, quote_prompt

REFERENCE_MARGIN = 0.1  # passed to default_reference


@dataclass(frozen=True)
class TaskBaseline:
    """The score a prompt must beat in one maximised task objective, and where it comes from."""

    metric: str
    value: float
    source: str

    def beaten_by(self, record: TrialRecord) -> bool:
        return record.objectives[self.metric] > self.value


def task_baseline(spec: SweepSpec, records: Sequence[TrialRecord] = ()) -> TaskBaseline | None:
    """The better of a uniform guess over the task's labels (the dev objective: -log(labels);
    the dev accuracy: 1/labels) and the empty prompt's score in the same objective, measured
    by the completed trials (`baseline/*`, `trainables/common.empty_prompt_dev`); None where
    neither task objective is maximised or the task has no labels. Reads no data and loads
    no model (`tasks.LABELS`)."""
    from scrutable.tasks import LABELS

    modes = dict(zip(spec.metric_names, spec.directions, strict=True))
    labels = len(LABELS.get(spec.task, ()))
    if not labels:
        return None
    if modes.get(keys.TASK_DEV_OBJECTIVE) == "max":
        metric, guess, empty_key = keys.TASK_DEV_OBJECTIVE, -math.log(labels), keys.BASELINE_EMPTY_DEV_OBJECTIVE
    elif modes.get(keys.TASK_DEV) == "max":
        metric, guess, empty_key = keys.TASK_DEV, 1 / labels, keys.BASELINE_EMPTY_DEV
    else:
        return None
    uniform = f"uniform guess over {labels} labels"
    # Every trial of one setting measures the same value; the best of several (a grid over
    # data seeds measures one per split) is the bar all of them must clear.
    measured = [r.metrics[empty_key] for r in records if r.completed and empty_key in r.metrics]
    measured = [value for value in measured if math.isfinite(value)]
    if not measured:
        return TaskBaseline(metric, guess, uniform)
    empty = max(measured)
    if empty > guess:
        return TaskBaseline(metric, empty, f"the empty prompt (no prompt); a {uniform} scores {guess:.4g}")
    return TaskBaseline(metric, guess, f"{uniform}; the empty prompt scores {empty:.4g}")


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
    baseline: TaskBaseline | None = None
    n_below_baseline: int = 0  # completed with finite objectives, but not better than the baseline


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
    directions = directions_of(spec.directions)
    if reference is not None and len(reference) != len(metrics):
        raise ValueError(f"reference has {len(reference)} values for {len(metrics)} objectives ({', '.join(metrics)})")

    chosen = select(records, spec)
    excluded, below, eligible, frontier = chosen.excluded, chosen.below, chosen.eligible, chosen.frontier
    baseline, points = chosen.baseline, chosen.points
    frontier_ids = {r.trial_id for r in frontier}

    notes: list[str] = []
    volume = reference_values = source = None
    if chosen.candidates:
        if reference is None:
            reference_values = [float(v) for v in default_reference(points, directions, margin=REFERENCE_MARGIN)]
            source = f"default: {REFERENCE_MARGIN:.0%} of the observed range beyond the worst trial"
            if baseline is not None:
                reference_values[metrics.index(baseline.metric)] = baseline.value
                source = f"default: baseline {baseline.metric}, elsewhere {REFERENCE_MARGIN:.0%} beyond the worst"
        else:
            reference_values, source = [float(v) for v in reference], "given"
        volume = hypervolume(points, directions, reference_values)
        if volume == 0:
            named = ", ".join(f"{m}={v:g}" for m, v in zip(metrics, reference_values, strict=True))
            notes.append(
                f"warning: hypervolume 0 against the reference ({named}, {source}): no trial beats it in every "
                "objective; pick a looser reference"
            )
    elif eligible and baseline is not None:
        notes.append(f"no trial beats the baseline ({baseline.metric} {baseline.value:.4g}, {baseline.source})")
    else:
        notes.append("no completed trial with finite objectives: no frontier, plots skipped")
    non_finite = sum(1 for reason in excluded.values() if reason and reason.startswith("non-finite"))
    if non_finite:
        notes.append(f"{non_finite} completed trial(s) with a non-finite objective (e.g. perplexity inf) left out")
    if len(metrics) == 1:
        notes.append(f"single objective: the frontier is the best trial(s) by {metrics[0]}")

    files = {name: out_dir / name for name in (TRIALS_CSV, PARETO_CSV, PARETO_JSON)}
    params = list(spec.search)
    _write_csv(files[TRIALS_CSV], records, spec, frontier_ids, {**excluded, **below}, full=True)
    _write_csv(files[PARETO_CSV], frontier, spec, frontier_ids, excluded, full=False)
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
        baseline=baseline,
        n_below_baseline=len(below),
    )
    write_atomically(files[PARETO_JSON], json.dumps(summary_json(summary), indent=2, allow_nan=False) + "\n")

    plots = {name: out_dir / name for name in (PARETO_PNG, PARETO_HTML)}
    if eligible:
        for plot, name in ((plot_png, PARETO_PNG), (plot_html, PARETO_HTML)):
            plot(
                plots[name],
                eligible,
                frontier_ids,
                spec,
                hypervolume=volume,
                reference=reference_values,
                reference_source=source,
            )
        files.update(plots)
    else:
        for stale in plots.values():  # an older export's plot would contradict the CSVs
            stale.unlink(missing_ok=True)
    return summary


@dataclass(frozen=True)
class Selection:
    """Which trials are frontier candidates, and why the others are not."""

    excluded: dict[str, str | None]  # trial id -> why it is no candidate at all (None: it is one)
    below: dict[str, str]  # trial id -> why it does not beat the baseline
    eligible: list[TrialRecord]  # completed, every objective finite
    candidates: list[TrialRecord]  # eligible and beating the baseline
    points: np.ndarray  # (len(candidates), n objectives)
    frontier: list[TrialRecord]  # the non-dominated candidates, best first
    baseline: TaskBaseline | None


def select(records: Sequence[TrialRecord], spec: SweepSpec) -> Selection:
    """The frontier of `records`: completed trials with finite objectives that beat the
    baseline, non-dominated, best first (all objectives in order, then the trial id)."""
    metrics = spec.metric_names
    directions = directions_of(spec.directions)
    excluded = {r.trial_id: _exclusion(r, metrics) for r in records}
    eligible = [r for r in records if excluded[r.trial_id] is None]
    baseline = task_baseline(spec, records)
    below = {
        r.trial_id: f"does not beat the baseline ({baseline.metric} {r.objectives[baseline.metric]:.4g} <= "
        f"{baseline.value:.4g}, {baseline.source})"
        for r in eligible
        if baseline is not None and not baseline.beaten_by(r)
    }
    candidates = [r for r in eligible if r.trial_id not in below]
    points = np.array([[r.objectives[m] for m in metrics] for r in candidates], dtype=float).reshape(-1, len(metrics))
    on_frontier = non_dominated(points, directions)  # (N,)
    frontier = _best_first([r for r, keep in zip(candidates, on_frontier, strict=True) if keep], metrics, directions)
    return Selection(excluded, below, eligible, candidates, points, frontier, baseline)


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
    """Objectives first, then the dev and test metrics, faithfulness and steps, each once."""
    columns = [*spec.metric_names, keys.TASK_DEV, keys.TASK_TEST, *keys.FAITHFULNESS, keys.PROMPT_STEP, keys.TRAIN_STEP]
    return list(dict.fromkeys(columns))


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
    columns = head + spec.space.names + _value_columns(spec) + tail  # the trial's own seed too
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for r in records:
            row: dict[str, Any] = {
                "trial_id": r.trial_id,
                "status": r.status,
                "on_frontier": r.trial_id in frontier_ids,
            }
            row.update({name: r.params.get(name) for name in spec.space.names})
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


def summary_json(summary: ParetoSummary) -> dict[str, Any]:
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
        "baseline": None
        if summary.baseline is None
        else {
            "metric": summary.baseline.metric,
            "value": summary.baseline.value,
            "source": summary.baseline.source,
            "trials_not_beating_it": summary.n_below_baseline,
        },
        "frontier": [_frontier_json(r) for r in summary.frontier],
        "failures": summary.failures,
        "notes": summary.notes,
    }


# --- the one-screen summary ----------------------------------------------------------------


def render_summary(summary: ParetoSummary, max_rows: int = 15, width: int = WIDTH) -> str:
    """A plain-text table of the frontier, counts, hypervolume and files, `width` columns wide.

    Objective columns are headed by the metric's short name (`dev_objective`); a legend line
    gives each one's full key and direction. The prompt column takes the width that is left,
    quoted with its leading space and cut with an ellipsis; the full text is in pareto.csv."""
    lines = [
        fit(
            f"sweep {summary.sweep}: {summary.n_trials} trials, {summary.n_completed} completed, "
            f"{summary.n_failed} failed, {summary.n_excluded} excluded; {len(summary.frontier)} on the "
            "Pareto frontier",
            width=width,
        )
    ]
    if summary.frontier:
        short = [m.rsplit("/", 1)[-1] for m in summary.metric_names]
        legend = ", ".join(
            f"{name} = {m} ({d})" for name, m, d in zip(short, summary.metric_names, summary.directions, strict=True)
        )
        lines.append(fit(f"objectives: {legend}", width=width))
        header = ["trial", *short, *(SHORT_PARAM.get(p, p) for p in summary.param_names), "prompt"]
        rows: list[list[str]] = [
            [
                r.trial_id,
                *(f"{r.objectives[m]:.4g}" for m in summary.metric_names),
                *(_cell(r.params.get(p)) for p in summary.param_names),
                r.prompt_text or "",
            ]
            for r in summary.frontier[:max_rows]
        ]
        widths = [max(len(str(row[c])) for row in [header, *rows]) for c in range(len(header) - 1)]
        prompt_chars = max(width - 2 - sum(w + 2 for w in widths), 12)
        for i, row in enumerate([header, *rows]):
            prompt = row[-1] if i == 0 else quote_prompt(row[-1], prompt_chars)
            cells = [str(cell).ljust(w) for cell, w in zip(row[:-1], widths, strict=True)]
            lines.append(("  " + "  ".join([*cells, prompt])).rstrip())
        if len(summary.frontier) > max_rows:
            lines.append(f"  ... and {len(summary.frontier) - max_rows} more in pareto.csv")
    if summary.hypervolume is not None and summary.reference is not None:
        reference = ", ".join(f"{m}={v:.4g}" for m, v in zip(summary.metric_names, summary.reference, strict=True))
        lines.append(
            fit(
                f"hypervolume {summary.hypervolume:.4g} w.r.t. reference ({reference}; {summary.reference_source})",
                width=width,
            )
        )
    if summary.baseline is not None:
        b = summary.baseline
        lines.append(
            fit(
                f"baseline {b.metric} {b.value:.4g} ({b.source}): {summary.n_below_baseline} completed trial(s) "
                "do not beat it and are left off the frontier (they stay in trials.csv)",
                width=width,
            )
        )
    for trial_id, reason in list(summary.failures.items())[:5]:
        lines.append(fit(f"failed {trial_id}: {reason}", width=width))
    if len(summary.failures) > 5:
        lines.append(f"... and {len(summary.failures) - 5} more failures in trials.csv")
    lines += [fit(f"note: {note}", width=width) for note in summary.notes]
    folder = next(iter(summary.files.values())).parent if summary.files else None
    if folder is not None:
        lines.append(fit(f"files in {folder}/: {', '.join(summary.files)}", width=width))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
