"""The report's markdown: number formatting, table cells and the tables every section shows.

    fmt(12345.6)        # '1.235e4': 4 significant digits, scientific from 10,000 up
    table(["a", "b"], [["1", "2"]])
    group_table(sweep, [("perplexity", metric(keys.PERPLEXITY))])   # mean ± std by setting
    trial_table(sweep)  # every trial, one row each
    frontier_table(sweep)   # the sweep's frontier, as pareto.csv holds it (`sweep/frontier.py`)

Nothing here reads a file or depends on dict order, so the same sweeps give the same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from scrutable.metrics import keys
from scrutable.report.read import Getter, Stat, Sweep, groups, setting_names, stat
from scrutable.sweep.frontier import task_baseline

SHORT = {"prompt_length": "L", "learning_rate": "lr"}


def fmt(value: float | None) -> str:
    """4 significant digits; scientific from 10,000 up (perplexities span decades)."""
    if value is None or not math.isfinite(value):
        return "–" if value is None or math.isnan(value) else str(value)
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.4g}"


def stat_cell(s: Stat) -> str:
    """Mean ± standard deviation over seeds; the mean alone for one seed, a dash for none."""
    if s.n == 0:
        return "–"
    return fmt(s.mean) if s.std is None else f"{fmt(s.mean)} ± {fmt(s.std)}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def code(text: str | None) -> str:
    """A prompt in a table cell: quoted so leading spaces show, pipes escaped."""
    if text is None:
        return "–"
    return "`" + json.dumps(text, ensure_ascii=False).replace("`", "'").replace("|", "\\|") + "`"


def param_cell(value: Any) -> str:
    return fmt(value) if isinstance(value, float) else str(value)


def param_header(name: str) -> str:
    return SHORT.get(name, name)


def group_table(sweep: Sweep, columns: Sequence[tuple[str, Getter]]) -> list[str]:
    names = setting_names(sweep.spec)
    rows = []
    for setting, records in groups(sweep).items():
        rows.append(
            [
                *(param_cell(v) for v in setting),
                str(len(records)),
                *(stat_cell(stat([get(r) for r in records])) for _, get in columns),
            ]
        )
    return table([*(param_header(n) for n in names), "n", *(header for header, _ in columns)], rows)


def trial_table(sweep: Sweep) -> list[str]:
    names = list(sweep.spec.search)
    rows = []
    for r in sweep.records:
        rows.append(
            [
                r.trial_id,
                *(param_cell(r.params.get(n)) for n in names),
                r.status,
                fmt(r.metrics.get(keys.TASK_DEV_OBJECTIVE)),
                fmt(r.metrics.get(keys.TASK_DEV)),
                fmt(r.metrics.get(keys.TASK_TEST)),
                fmt(r.metrics.get(keys.PERPLEXITY)),
                str(int(r.metrics[keys.PROMPT_STEP])) if keys.PROMPT_STEP in r.metrics else "–",
                code(r.prompt_text) if r.completed else (r.error or "–").replace("|", "\\|"),
            ]
        )
    header = ["trial", *(param_header(n) for n in names), "status", "dev objective", "dev metric", "test metric"]
    return table([*header, "perplexity", "best step", "prompt (unembedded)"], rows)


def frontier_table(sweep: Sweep) -> list[str]:
    """The sweep's frontier (`SweepFolder.frontier`: the trials and order of pareto.csv)."""
    names = list(sweep.spec.search)
    rows = [
        [
            *(param_cell(r.params.get(n)) for n in names),
            *(fmt(r.objectives[m]) for m in sweep.spec.metric_names),
            fmt(r.metrics.get(keys.TASK_TEST)),
            code(r.prompt_text),
        ]
        for r in sweep.folder.frontier(sweep.records)
    ]
    if not rows:
        baseline = task_baseline(sweep.spec, sweep.records)
        if baseline is not None and sweep.completed:
            beat = f"{baseline.metric} {baseline.value:.4g}, {baseline.source}"
            return [f"No trial beats the baseline ({beat}): no frontier."]
        return ["No completed trial with finite objectives: no frontier."]
    header = [*(param_header(n) for n in names), *sweep.spec.metric_names, f"test {sweep.metric_name}", "prompt"]
    return table(header, rows)
