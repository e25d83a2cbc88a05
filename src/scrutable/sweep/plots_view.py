"""What pareto.png and pareto.html show of a sweep, worked out once for both renderers.

`plots.py` draws pareto.png with matplotlib, `plots_html.py` pareto.html with plotly; both
take their panels, axes, hypervolume region, labels, colours and title from here, so the
two files always agree:

    shown = Shown.of(eligible, frontier_ids, spec)     # metrics, panels, frontier, colour range
    for index, (i, j) in enumerate(shown.panels):     # objective i across, j up (None: a strip)
        marks = shown.marks(i, j, reference, hypervolume)   # region + reference point, or None
        x_label, x_log, y_label, y_log = shown.axes(i, j, spec)
        xs, ys = xy(shown.best, shown.metrics, i, j)        # where the frontier's labels go

`region` is the hypervolume region as a polygon: its area is what `pareto.hypervolume`
computes (tested against it in tests/sweep/test_plots.py).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from scrutable.metrics import keys
from scrutable.sweep.results import TrialRecord
from scrutable.sweep.spec import SweepSpec
from scrutable.sweep.terminal import quote_prompt

LABEL_CHARS = 34  # a frontier point's prompt label in pareto.png, quotes included
TITLE_CHARS = 90  # a title line of pareto.png; longer ones wrap
SHORT_PARAM = {"prompt_length": "L", "learning_rate": "lr"}  # hover and summary labels
COLOUR_PARAM = "alpha"  # the perplexity weight: the knob that moves a trial along the trade-off
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


def xy(group: Sequence[TrialRecord], metrics: Sequence[str], i: int, j: int | None) -> tuple[list[float], list[float]]:
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


def alpha_of(record: TrialRecord) -> float | None:
    value = record.params.get(COLOUR_PARAM)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _alpha_range(spec: SweepSpec, eligible: Sequence[TrialRecord]) -> tuple[float, float] | None:
    """The colour bar's ends: the searched range (so colours mean the same across sweeps of
    one spec), widened to any positive value outside it; None when alpha is not searched."""
    if COLOUR_PARAM not in spec.search:
        return None
    values = [a for a in map(alpha_of, eligible) if a is not None and a > 0]
    dimension = spec.search[COLOUR_PARAM]
    ends = [float(v) for v in (dimension.low, dimension.high) if v is not None and float(v) > 0]
    ends += [float(v) for v in dimension.values or [] if isinstance(v, int | float) and float(v) > 0]
    ends += values
    if not ends:
        return None
    low, high = min(ends), max(ends)
    return (low, high) if high > low else (low / 2, high * 2)


def params_text(params: dict[str, Any]) -> str:
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


def title_text(spec: SweepSpec, n_best: int, n_all: int, hypervolume: float | None, source: str | None) -> str:
    head = f"sweep {spec.name}: {n_best} of {n_all} trials on the Pareto frontier"
    if hypervolume is None:
        return head
    stated = f"hypervolume {hypervolume:.4g} (shaded) against the reference point ({source or 'given'})"
    return head + "\n" + textwrap.fill(stated, TITLE_CHARS)


def frontier_label(record: TrialRecord) -> str:
    """A frontier point's label: its prompt, quoted and cut to `LABEL_CHARS`, else its trial id."""
    return quote_prompt(record.prompt_text, LABEL_CHARS) if record.prompt_text is not None else record.trial_id


class Marks(NamedTuple):
    """A two-objective panel's hypervolume marks: the shaded region (a closed polygon, [] when
    no frontier point beats the reference), the reference point, and their legend entries."""

    region: list[tuple[float, float]]
    reference: tuple[float, float]
    region_label: str
    reference_label: str


@dataclass(frozen=True)
class Shown:
    """The panels of a sweep's plots and what every panel shares, from the plot's inputs."""

    eligible: list[TrialRecord]
    metrics: list[str]
    modes: list[str]
    panels: list[tuple[int, int | None]]  # (x, y) objective indices; y None on a strip
    columns: int
    rows: int
    best: list[TrialRecord]  # the frontier
    colour_range: tuple[float, float] | None  # the alpha colour bar's ends

    @classmethod
    def of(cls, eligible: list[TrialRecord], frontier_ids: set[str], spec: SweepSpec) -> Shown:
        metrics, modes = list(spec.metric_names), list(spec.directions)
        panels, columns, rows = _grid(metrics)
        best = [r for r in eligible if r.trial_id in frontier_ids]
        return cls(eligible, metrics, modes, panels, columns, rows, best, _alpha_range(spec, eligible))

    def marks(
        self, i: int, j: int | None, reference: Sequence[float] | None, hypervolume: float | None
    ) -> Marks | None:
        """The region and reference point a panel shows: only with two objectives, a reference
        and a hypervolume (with more, the hypervolume is over all of them: in the title)."""
        if j is None or len(self.metrics) != 2 or reference is None or hypervolume is None:
            return None
        pair = [self.metrics[i], self.metrics[j]]
        return Marks(
            _panel_region(self.best, self.metrics, self.modes, reference, i, j),
            (reference[i], reference[j]),
            f"hypervolume {hypervolume:.4g} (region the frontier dominates)",
            f"reference point ({_reference_text(pair, [reference[i], reference[j]])})",
        )

    def axes(self, i: int, j: int | None, spec: SweepSpec) -> tuple[str, bool, str | None, bool]:
        """The panel's x label and log scale, and its y label (None on a strip) and log scale."""
        x_label, x_log = _axis(self.metrics[i], self.modes[i], spec, self.eligible)
        if j is None:
            return x_label, x_log, None, False
        y_label, y_log = _axis(self.metrics[j], self.modes[j], spec, self.eligible)
        return x_label, x_log, y_label, y_log
