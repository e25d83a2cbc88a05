"""pareto.html: a sweep's trials and Pareto frontier as an interactive plotly page.

The same panels, axes, region, labels and title as pareto.png (`plots.py`), all worked out
in `plots_view.py`; here each trial also gets a hover box (trial id, prompt, searched
values, objectives). `frontier.export_pareto` writes it beside pareto.png:

    plot_html(out / "pareto.html", eligible, frontier_ids, spec, hypervolume=hv, reference=ref,
              reference_source="given")

The page loads plotly.js from `plotly.min.js` beside it (written once per folder, 4.8 MB):
it stays well under 1 MB and opens offline; keep the two files together.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scrutable.sweep.plots_view import BASELINE_LABEL, Shown, alpha_of, frontier_label, params_text, title_text, xy
from scrutable.sweep.results import TrialRecord
from scrutable.sweep.spec import SweepSpec
from scrutable.sweep.terminal import quote_prompt

PLOTLY_JS = "plotly.min.js"  # beside pareto.html


def plot_html(
    path: Path,
    eligible: list[TrialRecord],
    frontier_ids: set[str],
    spec: SweepSpec,
    *,
    hypervolume: float | None = None,
    reference: Sequence[float] | None = None,
    reference_source: str | None = None,
) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    shown = Shown.of(eligible, frontier_ids, spec)
    metrics, panels, columns, rows, best = shown.metrics, shown.panels, shown.columns, shown.rows, shown.best
    colour_range = shown.colour_range
    figure = make_subplots(rows=rows, cols=columns)
    for index, (i, j) in enumerate(panels):
        row, col = index // columns + 1, index % columns + 1
        first = index == 0
        marks = shown.marks(i, j, reference, hypervolume)
        if marks is not None:
            polygon = marks.region
            if polygon:
                figure.add_trace(
                    go.Scatter(
                        x=[p[0] for p in polygon],
                        y=[p[1] for p in polygon],
                        fill="toself",
                        fillcolor="rgba(31,119,180,0.12)",
                        line={"width": 0},
                        mode="lines",
                        hoverinfo="skip",
                        name=marks.region_label,
                    ),
                    row=row,
                    col=col,
                )
                stairs = polygon[:-2]
                figure.add_trace(
                    go.Scatter(
                        x=[p[0] for p in stairs],
                        y=[p[1] for p in stairs],
                        mode="lines",
                        line={"color": "black", "width": 1.5},
                        hoverinfo="skip",
                        name="frontier staircase",
                    ),
                    row=row,
                    col=col,
                )
            figure.add_trace(
                go.Scatter(
                    x=[marks.reference[0]],
                    y=[marks.reference[1]],
                    mode="markers",
                    marker={"symbol": "x", "size": 12, "color": "#d62728"},
                    name=marks.reference_label,
                    hovertemplate="reference point<extra></extra>",
                ),
                row=row,
                col=col,
            )
        groups = {
            "trial (colour: alpha)": [r for r in eligible if (alpha_of(r) or 0) > 0 or alpha_of(r) is None],
            BASELINE_LABEL: [r for r in eligible if alpha_of(r) == 0.0],
        }
        for name, group in groups.items():
            if not group:
                continue
            xs, ys = xy(group, metrics, i, j)
            baseline = name == BASELINE_LABEL
            marker: dict[str, Any] = {
                "size": [15 if r.trial_id in frontier_ids else 8 for r in group],
                "line": {"width": [2 if r.trial_id in frontier_ids else 0 for r in group], "color": "black"},
            }
            if baseline:
                marker |= {"symbol": "diamond", "color": "black"}
            elif colour_range is not None:
                low, high = (math.log10(v) for v in colour_range)
                ticks = [10.0**e for e in range(math.floor(low), math.ceil(high) + 1)]
                marker |= {
                    "color": [math.log10(alpha_of(r) or colour_range[0]) for r in group],
                    "colorscale": "Viridis",
                    "cmin": low,
                    "cmax": high,
                    "showscale": first,
                    "colorbar": {
                        "title": {"text": "alpha (log scale)"},
                        "tickvals": [math.log10(t) for t in ticks],
                        "ticktext": [f"{t:g}" for t in ticks],
                    },
                }
            figure.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="markers",
                    name=name,
                    marker=marker,
                    legendgroup=name,
                    showlegend=first,
                    text=[_hover(r, metrics, r.trial_id in frontier_ids) for r in group],
                    hovertemplate="%{text}<extra></extra>",
                ),
                row=row,
                col=col,
            )
        x_label, x_log, y_label, y_log = shown.axes(i, j, spec)
        xs, ys = xy(best, metrics, i, j)
        for r, x, y in zip(best, xs, ys, strict=True):
            figure.add_annotation(
                x=math.log10(x) if x_log and x > 0 else x,
                y=y,
                text=html.escape(frontier_label(r)),
                showarrow=False,
                xanchor="left",
                yanchor="bottom",
                xshift=6,
                yshift=4,
                font={"size": 10},
                bgcolor="rgba(255,255,255,0.8)",
                row=row,
                col=col,
            )
        figure.update_xaxes(
            title_text=x_label.replace("\n", " "),
            type="log" if x_log else None,
            row=row,
            col=col,
        )
        if y_label is None:
            figure.update_yaxes(showticklabels=False, row=row, col=col)
        else:
            figure.update_yaxes(
                title_text=y_label.replace("\n", " "),
                type="log" if y_log else None,
                row=row,
                col=col,
            )
    head, _, stated = title_text(spec, len(best), len(eligible), hypervolume, reference_source).partition("\n")
    title = head + (f"<br><sub>{stated.replace(chr(10), ' ')}</sub>" if stated else "")
    figure.update_layout(
        title=title,
        template="plotly_white",
        height=(360 if len(metrics) == 1 else 620) * rows,
        width=max(900, 620 * columns),
        legend={"orientation": "h", "yanchor": "top", "y": -0.15},
    )
    # plotly.js from a file beside the page (written once per folder): offline, and the page
    # stays small (inlined, it was 4.8 MB).
    figure.write_html(path, include_plotlyjs="directory", full_html=True)


def _hover(record: TrialRecord, metrics: Sequence[str], on_frontier: bool) -> str:
    lines = [
        f"<b>{html.escape(record.trial_id)}</b>{' (Pareto frontier)' if on_frontier else ''}",
        f"prompt: {html.escape(quote_prompt(record.prompt_text, 80))}",
        html.escape(params_text(record.params)),
    ]
    lines += [f"{html.escape(m)} = {record.objectives[m]:.4g}" for m in metrics]
    return "<br>".join(lines)
