"""Plots of a sweep's trials with the frontier highlighted: a PNG (matplotlib) and a
self-contained HTML page (plotly, with plotly.js inlined so it works offline).

One panel per pair of objectives (a strip for a single objective); frontier points are
joined by their attainment steps and labelled with their prompt.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scrutable.sweep.results import TrialRecord
from scrutable.sweep.spec import SweepSpec

LABEL_CHARS = 30  # prompt text shown next to a frontier point in pareto.png
SHORT_PARAM = {"prompt_length": "L", "learning_rate": "lr"}  # hover and summary labels


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


def truncate(text: str | None, chars: int = LABEL_CHARS) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{SHORT_PARAM.get(k, k)}={v:.3g}" if isinstance(v, float) else f"{SHORT_PARAM.get(k, k)}={v}"
        for k, v in params.items()
    )


def plot_png(path: Path, eligible: list[TrialRecord], frontier_ids: set[str], spec: SweepSpec) -> None:
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
                truncate(r.prompt_text) or r.trial_id,
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


def plot_html(path: Path, eligible: list[TrialRecord], frontier_ids: set[str], spec: SweepSpec) -> None:
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
