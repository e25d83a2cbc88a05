"""Plots of a sweep's trials and Pareto frontier: pareto.png (matplotlib) and pareto.html
(plotly), made to be read in five seconds.

With two objectives (the common case: a task objective against perplexity) one panel shows

- every trial, coloured by alpha on a log colour bar; the alpha = 0 baselines, which a log
  scale cannot hold, as black diamonds with their own legend entry;
- the frontier ringed in black, joined by its attainment staircase, each point labelled
  with its prompt (quoted with its spaces, cut with … so it stays inside the axes);
- the reference point and the hypervolume region (what the frontier dominates and the
  reference point does not reach) shaded, its value and the reference named in the legend
  and the title. Its area is the hypervolume `frontier.py` reports (`region` is tested
  against `pareto.hypervolume`);
- axes named by meaning and unit ("perplexity under smollm2-135m (log scale)", "dev
  objective: mean log-probability of the correct label"), the task objective upwards.

More objectives: one panel per pair, without staircase and region (the hypervolume is
over all of them: stated in the title). One objective: a strip.

pareto.html loads plotly.js from `plotly.min.js` beside it (written once per folder,
4.8 MB): the page stays well under 1 MB and opens offline; keep the two files together.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scrutable.metrics import keys
from scrutable.sweep.results import TrialRecord
from scrutable.sweep.spec import SweepSpec
from scrutable.sweep.terminal import quote_prompt

LABEL_CHARS = 34  # a frontier point's prompt label in pareto.png, quotes included
TITLE_CHARS = 90  # a title line of pareto.png; longer ones wrap
DPI = 120  # pareto.png: 1020 x 720 pixels for two objectives
SHORT_PARAM = {"prompt_length": "L", "learning_rate": "lr"}  # hover and summary labels
COLOUR_PARAM = "alpha"  # the perplexity weight: the knob that moves a trial along the trade-off
PLOTLY_JS = "plotly.min.js"  # beside pareto.html
BASELINE_LABEL = "alpha = 0 baseline (no perplexity term)"

# What each objective means, for the axes ({scorer}: the spec's scorer; {objective} and
# {metric}: the task's, below). Faithfulness names follow `metrics/keys.py`.
_MEANING = {
    keys.PERPLEXITY: "perplexity under {scorer}",
    keys.LOG_PERPLEXITY: "log-perplexity under {scorer} (nats per token)",
    keys.TASK_DEV_OBJECTIVE: "dev objective: {objective}",
    keys.TASK_DEV_OBJECTIVE_UNEMBEDDED: "dev objective of the nearest tokens: {objective}",
    keys.TASK_TEST_OBJECTIVE: "test objective: {objective}",
    keys.TASK_DEV: "dev {metric}",
    keys.TASK_DEV_UNEMBEDDED: "dev {metric} of the nearest tokens",
    keys.TASK_TEST: "test {metric}",
    keys.TASK_TEST_UNEMBEDDED: "test {metric} of the nearest tokens",
    keys.DISTANCE_EUCLIDEAN: "distance differential: mean L2 distance to the nearest token",
    keys.DISTANCE_COSINE: "distance differential: mean cosine distance to the nearest token",
    keys.OUTPUT_MSE: "output differential: mean squared logit difference",
    keys.OUTPUT_MSE_VERBALIZER: "output differential on the answer tokens (MSE of logits)",
    keys.TOP1_AGREEMENT: "share of inputs whose answer agrees with the nearest tokens'",
    keys.PERFORMANCE_DIFF: "|dev metric - dev metric of the nearest tokens|",
    keys.PROMPT_NORM: "mean L2 norm of the prompt vectors",
    keys.VOCAB_NORM: "mean L2 norm of the vocabulary embeddings",
}
# The task objective and metric (`tasks/`): classification scores the verbalizer, Yelp its rewrites.
_TASK_OBJECTIVE = {"yelp": "mean joint score of the rewrites"}
_TASK_METRIC = {"yelp": "joint score"}


def axis_label(metric: str, mode: str, spec: SweepSpec, log: bool = False) -> str:
    """What an objective means, its scale and which way is better."""
    meaning = _MEANING.get(metric, metric).format(
        scorer=spec.scorer,
        objective=_TASK_OBJECTIVE.get(spec.task, "mean log-probability of the correct label"),
        metric=_TASK_METRIC.get(spec.task, "accuracy"),
    )
    return f"{meaning}{' (log scale)' if log else ''}\n({'higher' if mode == 'max' else 'lower'} is better)"


def _log_axis(metric: str, values: Sequence[float]) -> bool:
    # Perplexities span orders of magnitude (a readable prompt ~10s, a soft one ~1e4+).
    return metric == keys.PERPLEXITY and min(values) > 0


def _axis(metric: str, mode: str, spec: SweepSpec, eligible: Sequence[TrialRecord]) -> tuple[str, bool]:
    """An objective's axis over the trials: its label, and whether its scale is logarithmic."""
    log = _log_axis(metric, [r.objectives[metric] for r in eligible])
    return axis_label(metric, mode, spec, log), log


def _panels(metrics: Sequence[str]) -> list[tuple[int, int | None]]:
    """(x, y) objective indices per panel: a strip for one objective, every pair for more; with
    two, the task objective goes upwards (a trade-off reads as 'up is better')."""
    if len(metrics) == 1:
        return [(0, None)]
    if len(metrics) == 2:
        task = [m.startswith("task/") for m in metrics]
        return [(1, 0)] if task[0] and not task[1] else [(0, 1)]
    return [(i, j) for i in range(len(metrics)) for j in range(i + 1, len(metrics))]


def _grid(metrics: Sequence[str]) -> tuple[list[tuple[int, int | None]], int, int]:
    """The panels, and the columns and rows that hold them (at most three across)."""
    panels = _panels(metrics)
    columns = min(3, len(panels))
    return panels, columns, math.ceil(len(panels) / columns)


def _xy(group: Sequence[TrialRecord], metrics: Sequence[str], i: int, j: int | None) -> tuple[list[float], list[float]]:
    """Where a panel puts each trial of `group`: objective i across, objective j up (0 on a strip)."""
    xs = [r.objectives[metrics[i]] for r in group]
    return xs, [0.0] * len(group) if j is None else [r.objectives[metrics[j]] for r in group]


def region(
    points: Sequence[tuple[float, float]], modes: tuple[str, str], reference: tuple[float, float]
) -> list[tuple[float, float]]:
    """The hypervolume region of two objectives as a closed polygon (first vertex repeated at the
    end), in the objectives' own units; its boundary from the first vertex through the
    second-to-last but one is the frontier's attainment staircase. Empty when no point beats
    the reference in both objectives.

    Worked in minimisation (a maximised objective negated): the points that dominate the
    reference, swept by the first objective, keep those lower in the second than every
    earlier one (the staircase's corners)."""
    sign = [-1.0 if mode == "max" else 1.0 for mode in modes]
    rx, ry = sign[0] * reference[0], sign[1] * reference[1]
    inside = sorted((sign[0] * x, sign[1] * y) for x, y in points if sign[0] * x < rx and sign[1] * y < ry)
    corners: list[tuple[float, float]] = []
    for x, y in inside:
        if not corners or y < corners[-1][1]:
            corners.append((x, y))
    if not corners:
        return []
    path = [(corners[0][0], ry)]
    for i, (x, y) in enumerate(corners):
        following = corners[i + 1][0] if i + 1 < len(corners) else rx
        path += [(x, y), (following, y)]
    path += [(rx, ry), (corners[0][0], ry)]
    return [(sign[0] * x, sign[1] * y) for x, y in path]


def _panel_region(
    best: Sequence[TrialRecord],
    metrics: Sequence[str],
    modes: Sequence[str],
    reference: Sequence[float],
    i: int,
    j: int,
) -> list[tuple[float, float]]:
    """The hypervolume `region` a two-objective panel shades: the frontier `best` against the
    reference point, objective i across and j up."""
    points = [(r.objectives[metrics[i]], r.objectives[metrics[j]]) for r in best]
    return region(points, (modes[i], modes[j]), (reference[i], reference[j]))


def _alpha(record: TrialRecord) -> float | None:
    value = record.params.get(COLOUR_PARAM)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _alpha_range(spec: SweepSpec, eligible: Sequence[TrialRecord]) -> tuple[float, float] | None:
    """The colour bar's ends: the searched range (so colours mean the same across sweeps of
    one spec), widened to any positive value outside it; None when alpha is not searched."""
    if COLOUR_PARAM not in spec.search:
        return None
    values = [a for a in map(_alpha, eligible) if a is not None and a > 0]
    dimension = spec.search[COLOUR_PARAM]
    ends = [float(v) for v in (dimension.low, dimension.high) if v is not None and float(v) > 0]
    ends += [float(v) for v in dimension.values or [] if isinstance(v, int | float) and float(v) > 0]
    ends += values
    if not ends:
        return None
    low, high = min(ends), max(ends)
    return (low, high) if high > low else (low / 2, high * 2)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{SHORT_PARAM.get(k, k)}={v:.3g}" if isinstance(v, float) else f"{SHORT_PARAM.get(k, k)}={v}"
        for k, v in params.items()
    )


def _short(metric: str) -> str:
    return metric.rsplit("/", 1)[-1]


def _reference_text(metrics: Sequence[str], reference: Sequence[float] | None) -> str:
    if reference is None:
        return ""
    return ", ".join(f"{_short(m)} {v:.4g}" for m, v in zip(metrics, reference, strict=True))


def _title(spec: SweepSpec, n_best: int, n_all: int, hypervolume: float | None, source: str | None) -> str:
    head = f"sweep {spec.name}: {n_best} of {n_all} trials on the Pareto frontier"
    if hypervolume is None:
        return head
    stated = f"hypervolume {hypervolume:.4g} (shaded) against the reference point ({source or 'given'})"
    return head + "\n" + textwrap.fill(stated, TITLE_CHARS)


# --- pareto.png -----------------------------------------------------------------------------


def plot_png(
    path: Path,
    eligible: list[TrialRecord],
    frontier_ids: set[str],
    spec: SweepSpec,
    *,
    hypervolume: float | None = None,
    reference: Sequence[float] | None = None,
    reference_source: str | None = None,
) -> None:
    figure = png_figure(
        eligible, frontier_ids, spec, hypervolume=hypervolume, reference=reference, reference_source=reference_source
    )
    figure.savefig(path, dpi=DPI)


def png_figure(
    eligible: list[TrialRecord],
    frontier_ids: set[str],
    spec: SweepSpec,
    *,
    hypervolume: float | None = None,
    reference: Sequence[float] | None = None,
    reference_source: str | None = None,
) -> Any:
    """The matplotlib Figure of pareto.png, laid out and with its labels placed."""
    # Figure without pyplot: renders with Agg and never touches the global backend.
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    metrics, modes = spec.metric_names, spec.directions
    panels, columns, rows = _grid(metrics)
    height = 3.2 if len(metrics) == 1 else 6.0
    figure = Figure(figsize=(8.5 if len(panels) == 1 else 6.5 * columns, height * rows), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    best = [r for r in eligible if r.trial_id in frontier_ids]
    colour_range = _alpha_range(spec, eligible)
    norm = LogNorm(*colour_range) if colour_range else None
    mappable = None
    labels = []
    for ax, (i, j) in zip(axes, panels, strict=False):
        if j is not None and len(metrics) == 2 and reference is not None and hypervolume is not None:
            polygon = _panel_region(best, metrics, modes, reference, i, j)
            if polygon:
                ax.fill(
                    [p[0] for p in polygon],
                    [p[1] for p in polygon],
                    color="tab:blue",
                    alpha=0.12,
                    linewidth=0,
                    label=f"hypervolume {hypervolume:.4g} (region the frontier dominates)",
                    zorder=0,
                )
                stairs = polygon[:-2]
                ax.plot(
                    [p[0] for p in stairs],
                    [p[1] for p in stairs],
                    color="black",
                    linewidth=1.3,
                    label="frontier staircase",
                    zorder=1,
                )
            ax.scatter(
                [reference[i]],
                [reference[j]],
                marker="X",
                s=90,
                color="tab:red",
                label=f"reference point ({_reference_text([metrics[i], metrics[j]], [reference[i], reference[j]])})",
                zorder=4,
            )
        positive = [r for r in eligible if (a := _alpha(r)) is not None and a > 0]
        baselines = [r for r in eligible if _alpha(r) == 0.0]
        others = [r for r in eligible if r not in positive and r not in baselines]
        for group, on in ((positive, False), (positive, True)):
            chosen = [r for r in group if (r.trial_id in frontier_ids) == on]
            if not chosen:
                continue
            xs, ys = _xy(chosen, metrics, i, j)
            mappable = ax.scatter(
                xs,
                ys,
                c=[_alpha(r) for r in chosen],
                cmap="viridis",
                norm=norm,
                s=110 if on else 40,
                edgecolors="black" if on else "none",
                linewidths=1.8 if on else 0,
                zorder=3,
            )
        for group, style in (
            (baselines, {"marker": "D", "color": "black", "label": BASELINE_LABEL}),
            (others, {"marker": "o", "color": "tab:blue", "label": "trial"}),
        ):
            if group:
                xs, ys = _xy(group, metrics, i, j)
                sizes = [110 if r.trial_id in frontier_ids else 45 for r in group]
                ax.scatter(xs, ys, s=sizes, edgecolors="white", linewidths=0.8, zorder=3, **style)
        ax.scatter([], [], s=110, facecolors="none", edgecolors="black", linewidths=1.8, label="on the Pareto frontier")
        xs, ys = _xy(best, metrics, i, j)
        for r, x, y in zip(best, xs, ys, strict=True):
            text = ax.annotate(
                quote_prompt(r.prompt_text, LABEL_CHARS) if r.prompt_text is not None else r.trial_id,
                (x, y),
                xytext=(7, 7),
                textcoords="offset points",
                fontsize=8,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.85},
                zorder=5,
            )
            text.set_in_layout(False)  # placed inside the axes below, after the layout
            labels.append((ax, text, r.prompt_text))
        x_label, x_log = _axis(metrics[i], modes[i], spec, eligible)
        ax.set_xlabel(x_label)
        if x_log:
            ax.set_xscale("log")
        if j is None:
            ax.set_yticks([])
        else:
            y_label, y_log = _axis(metrics[j], modes[j], spec, eligible)
            ax.set_ylabel(y_label)
            if y_log:
                ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.margins(0.08)
    if mappable is not None:
        bar = figure.colorbar(mappable, ax=list(axes[: len(panels)]), shrink=0.9, pad=0.01)
        bar.set_label("alpha: weight of the perplexity term (log scale)")
        from matplotlib.ticker import FuncFormatter, NullFormatter

        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 0.1, not 10^-1
        bar.ax.yaxis.set_minor_formatter(NullFormatter())
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    # One legend below the panels: inside an axes it would cover points or labels.
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    figure.suptitle(_title(spec, len(best), len(eligible), hypervolume, reference_source), fontsize=11)
    _keep_labels_inside(figure, labels)
    return figure


def _keep_labels_inside(figure: Any, labels: list[tuple[Any, Any, str | None]]) -> None:
    """Flip a label to the other side of its point where it would cross the axes' edge, cut it
    shorter where it still would, and move it off the labels already placed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw_without_rendering()  # settles the constrained layout
    figure.set_layout_engine("none")  # and freezes it, so what is measured here is what is saved
    placed: dict[int, list[Any]] = {}
    for ax, text, prompt in labels:
        box = ax.get_window_extent(renderer)
        chars = LABEL_CHARS
        for _ in range(LABEL_CHARS):
            extent = text.get_window_extent(renderer)
            dx, dy = text.xyann
            if extent.x1 > box.x1 and dx > 0:
                text.set_horizontalalignment("right")
                text.xyann = (-dx, dy)
            elif extent.y1 > box.y1 and dy > 0:
                text.set_verticalalignment("top")
                text.xyann = (dx, -dy)
            elif (extent.x0 < box.x0 or extent.x1 > box.x1) and prompt is not None and chars > 8:
                chars -= 4
                text.set_text(quote_prompt(prompt, chars))
            else:
                break
        for other in placed.setdefault(id(ax), []):  # a label over an earlier one moves below it
            extent = text.get_window_extent(renderer)
            if extent.overlaps(other):
                dx, dy = text.xyann
                points_per_pixel = 72.0 / figure.dpi
                text.xyann = (dx, dy - (extent.y1 - other.y0 + 2) * points_per_pixel)
        placed[id(ax)].append(text.get_window_extent(renderer))


# --- pareto.html ----------------------------------------------------------------------------


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

    metrics, modes = spec.metric_names, spec.directions
    panels, columns, rows = _grid(metrics)
    figure = make_subplots(rows=rows, cols=columns)
    best = [r for r in eligible if r.trial_id in frontier_ids]
    colour_range = _alpha_range(spec, eligible)
    for index, (i, j) in enumerate(panels):
        row, col = index // columns + 1, index % columns + 1
        first = index == 0
        if j is not None and len(metrics) == 2 and reference is not None and hypervolume is not None:
            polygon = _panel_region(best, metrics, modes, reference, i, j)
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
                        name=f"hypervolume {hypervolume:.4g} (region the frontier dominates)",
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
                    x=[reference[i]],
                    y=[reference[j]],
                    mode="markers",
                    marker={"symbol": "x", "size": 12, "color": "#d62728"},
                    name=f"reference point ({_reference_text([metrics[i], metrics[j]], [reference[i], reference[j]])})",
                    hovertemplate="reference point<extra></extra>",
                ),
                row=row,
                col=col,
            )
        groups = {
            "trial (colour: alpha)": [r for r in eligible if (_alpha(r) or 0) > 0 or _alpha(r) is None],
            BASELINE_LABEL: [r for r in eligible if _alpha(r) == 0.0],
        }
        for name, group in groups.items():
            if not group:
                continue
            xs, ys = _xy(group, metrics, i, j)
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
                    "color": [math.log10(_alpha(r) or colour_range[0]) for r in group],
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
        x_label, x_log = _axis(metrics[i], modes[i], spec, eligible)
        xs, ys = _xy(best, metrics, i, j)
        for r, x, y in zip(best, xs, ys, strict=True):
            figure.add_annotation(
                x=math.log10(x) if x_log and x > 0 else x,
                y=y,
                text=html.escape(quote_prompt(r.prompt_text, LABEL_CHARS) if r.prompt_text is not None else r.trial_id),
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
        if j is None:
            figure.update_yaxes(showticklabels=False, row=row, col=col)
        else:
            y_label, y_log = _axis(metrics[j], modes[j], spec, eligible)
            figure.update_yaxes(
                title_text=y_label.replace("\n", " "),
                type="log" if y_log else None,
                row=row,
                col=col,
            )
    head, _, stated = _title(spec, len(best), len(eligible), hypervolume, reference_source).partition("\n")
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
        html.escape(_params_text(record.params)),
    ]
    lines += [f"{html.escape(m)} = {record.objectives[m]:.4g}" for m in metrics]
    return "<br>".join(lines)
