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

What both show is worked out once in `plots_view.py` (panels, axes, region, labels, title);
this module draws pareto.png, `plots_html.py` draws pareto.html, and every name of the
three stays importable from here. `frontier.export_pareto` calls both:

    plot_png(out / "pareto.png", eligible, frontier_ids, spec, hypervolume=hv, reference=ref,
             reference_source="given")
    figure = png_figure(eligible, frontier_ids, spec, ...)   # the Figure, unsaved (tests)

pareto.html loads plotly.js from `plotly.min.js` beside it (written once per folder,
4.8 MB): the page stays well under 1 MB and opens offline; keep the two files together.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scrutable.sweep.plots_html import PLOTLY_JS, plot_html
from scrutable.sweep.plots_view import (
    BASELINE_LABEL,
    COLOUR_PARAM,
    LABEL_CHARS,
    SHORT_PARAM,
    TITLE_CHARS,
    Shown,
    alpha_of,
    axis_label,
    frontier_label,
    region,
    title_text,
    xy,
)
from scrutable.sweep.results import TrialRecord
from scrutable.sweep.spec import SweepSpec
from scrutable.sweep.terminal import quote_prompt

# Every name of the plots stays importable from here (`plots.region`, `plots.PLOTLY_JS`, ...).
__all__ = ["BASELINE_LABEL", "COLOUR_PARAM", "LABEL_CHARS", "SHORT_PARAM", "TITLE_CHARS", "PLOTLY_JS", "DPI"]
__all__ += ["axis_label", "region", "plot_png", "png_figure", "plot_html"]

DPI = 120  # pareto.png: 1020 x 720 pixels for two objectives

# --- pareto.png -----------------------------------------------------------------------------


def plot_png(path: Path, *args: Any, **kwargs: Any) -> None:
    """pareto.png at `path`: `png_figure(*args, **kwargs)` saved at `DPI`."""
    png_figure(*args, **kwargs).savefig(path, dpi=DPI)


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

    shown = Shown.of(eligible, frontier_ids, spec)
    metrics, panels, columns, rows, best = shown.metrics, shown.panels, shown.columns, shown.rows, shown.best
    height = 3.2 if len(metrics) == 1 else 6.0
    figure = Figure(figsize=(8.5 if len(panels) == 1 else 6.5 * columns, height * rows), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    norm = LogNorm(*shown.colour_range) if shown.colour_range else None
    mappable = None
    labels = []
    for ax, (i, j) in zip(axes, panels, strict=False):
        marks = shown.marks(i, j, reference, hypervolume)
        if marks is not None:
            polygon = marks.region
            if polygon:
                ax.fill(
                    [p[0] for p in polygon],
                    [p[1] for p in polygon],
                    color="tab:blue",
                    alpha=0.12,
                    linewidth=0,
                    label=marks.region_label,
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
                [marks.reference[0]],
                [marks.reference[1]],
                marker="X",
                s=90,
                color="tab:red",
                label=marks.reference_label,
                zorder=4,
            )
        positive = [r for r in eligible if (a := alpha_of(r)) is not None and a > 0]
        baselines = [r for r in eligible if alpha_of(r) == 0.0]
        others = [r for r in eligible if r not in positive and r not in baselines]
        for group, on in ((positive, False), (positive, True)):
            chosen = [r for r in group if (r.trial_id in frontier_ids) == on]
            if not chosen:
                continue
            xs, ys = xy(chosen, metrics, i, j)
            mappable = ax.scatter(
                xs,
                ys,
                c=[alpha_of(r) for r in chosen],
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
                xs, ys = xy(group, metrics, i, j)
                sizes = [110 if r.trial_id in frontier_ids else 45 for r in group]
                ax.scatter(xs, ys, s=sizes, edgecolors="white", linewidths=0.8, zorder=3, **style)
        ax.scatter([], [], s=110, facecolors="none", edgecolors="black", linewidths=1.8, label="on the Pareto frontier")
        xs, ys = xy(best, metrics, i, j)
        for r, x, y in zip(best, xs, ys, strict=True):
            text = ax.annotate(
                frontier_label(r),
                (x, y),
                xytext=(7, 7),
                textcoords="offset points",
                fontsize=8,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.85},
                zorder=5,
            )
            text.set_in_layout(False)  # placed inside the axes below, after the layout
            labels.append((ax, text, r.prompt_text))
        x_label, x_log, y_label, y_log = shown.axes(i, j, spec)
        ax.set_xlabel(x_label)
        if x_log:
            ax.set_xscale("log")
        if y_label is None:
            ax.set_yticks([])
        else:
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
    figure.suptitle(title_text(spec, len(best), len(eligible), hypervolume, reference_source), fontsize=11)
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
