"""The method-specific part of a sweep's section: what each method's paper trades off.

- `tradeoff` (PEZ, RLPrompt): alpha x prompt length -> perplexity, test metric, dev
  objective as mean ± standard deviation over seeds (n), a plot of both against alpha with
  error bars and the English-phrase reference line (`reference_phrases.py`), and for each
  length the measured direction from alpha = 0 to the largest alpha.
- `soft_prompt`: the soft prompt's test metric vs its unembedded tokens' (performance
  differential), the distance and output differentials, over prompt lengths and seeds.

Each returns its markdown lines and appends its measured directions (difference of means ±
its standard error) to `directions`, for the closing comparison section. Called by
`sections.render_sweep`; figures in `plots.py`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from scrutable.metrics import keys
from scrutable.reference_phrases import Reference, reference_perplexities
from scrutable.report.markdown import code, fmt, group_table, table
from scrutable.report.plots import Point, plot_alpha_tradeoff, plot_lengths
from scrutable.report.read import Getter, Sweep, metric, prompt_length, stat, test_gap
from scrutable.sweep.results import TrialRecord


def tradeoff(sweep: Sweep, target: Path, link: str, directions: list[str]) -> list[str]:
    """PEZ and RLPrompt: alpha x length -> perplexity, test metric, dev objective."""
    spec, name = sweep.spec, sweep.metric_name
    columns: list[tuple[str, Getter]] = [
        ("perplexity", metric(keys.PERPLEXITY)),
        (f"test {name}", metric(keys.TASK_TEST)),
        ("dev objective", metric(keys.TASK_DEV_OBJECTIVE)),
        (f"dev {name}", metric(keys.TASK_DEV)),
    ]
    lines = [
        "### Perplexity and test metric by setting",
        "",
        f"Mean ± standard deviation over seeds (n trials) of each trial's best prompt on the dev objective: "
        f"its perplexity under `{spec.scorer}`, its test {name}, its dev objective and dev {name}.",
        "",
        *group_table(sweep, columns),
        "",
    ]
    lengths = sorted({prompt_length(sweep, r) for r in sweep.completed})
    references = reference_perplexities(sweep.path, spec, lengths)
    if references:
        lines += [
            "Reference: the first L tokens of ordinary English sentences (the first "
            f"{next(iter(references.values())).n} {spec.task} test sentences with at least L tokens) "
            "under the same scorer:",
            "",
            *_reference_table(references),
            "",
        ]
    if "alpha" in spec.search:
        by_length = _by_length(sweep)
        perplexity = {
            f"L={L}": [stat([r.metrics.get(keys.PERPLEXITY) for r in rs]).point(a) for a, rs in pts]
            for L, pts in by_length.items()
        }
        test = {
            f"L={L}": [stat([r.metrics.get(keys.TASK_TEST) for r in rs]).point(a) for a, rs in pts]
            for L, pts in by_length.items()
        }
        plot_alpha_tradeoff(
            target / "alpha_tradeoff.png",
            perplexity,
            test,
            f"test {name}",
            {f"L={L}": ref.median for L, ref in references.items() if L in by_length},
            f"{spec.name}: mean ± std over seeds",
        )
        lines += [f"![alpha vs perplexity and test {name}]({link}/alpha_tradeoff.png)", ""]
        directions += _alpha_directions(sweep, by_length)
    return lines


def _by_length(sweep: Sweep) -> dict[int, list[tuple[float, list[TrialRecord]]]]:
    """{L: [(alpha, trials), ...]} in ascending order."""
    out: dict[int, dict[float, list[TrialRecord]]] = {}
    for record in sweep.completed:
        alpha = float(record.params.get("alpha", 0.0))
        out.setdefault(prompt_length(sweep, record), {}).setdefault(alpha, []).append(record)
    return {L: sorted(by_alpha.items()) for L, by_alpha in sorted(out.items())}


def _reference_table(references: dict[int, Reference]) -> list[str]:
    rows = [[str(L), str(r.n), fmt(r.median), fmt(r.geometric_mean), code(r.example)] for L, r in references.items()]
    return table(["L", "phrases", "median perplexity", "geometric mean", "first phrase"], rows)


def _alpha_directions(sweep: Sweep, by_length: dict[int, list[tuple[float, list[TrialRecord]]]]) -> list[str]:
    out = []
    for length, points in by_length.items():
        if len(points) < 2 or points[0][0] != 0.0:
            continue
        (_, base), (top_alpha, top) = points[0], points[-1]
        accuracy = _difference(
            [r.metrics.get(keys.TASK_TEST) for r in top], [r.metrics.get(keys.TASK_TEST) for r in base]
        )
        ratio = _geometric_ratio(
            [r.metrics.get(keys.PERPLEXITY) for r in top], [r.metrics.get(keys.PERPLEXITY) for r in base]
        )
        out.append(
            f"`{sweep.spec.name}`, L={length}: test {sweep.metric_name} at alpha={fmt(top_alpha)} minus at alpha=0: "
            f"{accuracy}; perplexity at alpha={fmt(top_alpha)} / at alpha=0 (geometric means): {ratio}."
        )
    return out


def _difference(a: Sequence[float | None], b: Sequence[float | None]) -> str:
    """Difference of means ± its standard error, with the counts."""
    sa, sb = stat(a), stat(b)
    if sa.n == 0 or sb.n == 0:
        return "–"
    error = (
        f" ± {fmt(math.sqrt(sa.std**2 / sa.n + sb.std**2 / sb.n))}" if sa.std is not None and sb.std is not None else ""
    )
    return f"{fmt(sa.mean - sb.mean)}{error} (n={sa.n} vs {sb.n})"


def _geometric_ratio(a: Sequence[float | None], b: Sequence[float | None]) -> str:
    la = [math.log(v) for v in a if v is not None and math.isfinite(v) and v > 0]
    lb = [math.log(v) for v in b if v is not None and math.isfinite(v) and v > 0]
    if not la or not lb:
        return "–"
    return f"×{fmt(math.exp(statistics.fmean(la) - statistics.fmean(lb)))}"


def soft_prompt(sweep: Sweep, target: Path, link: str, directions: list[str]) -> list[str]:
    """Soft prompt tuning: the prompt vs its unembedded tokens, over lengths and seeds."""
    spec, name = sweep.spec, sweep.metric_name
    columns: list[tuple[str, Getter]] = [
        (f"test {name}, soft", metric(keys.TASK_TEST)),
        (f"test {name}, unembedded", metric(keys.TASK_TEST_UNEMBEDDED)),
        ("soft − unembedded (test)", test_gap),
        (f"performance diff. (dev, {keys.PERFORMANCE_DIFF})", metric(keys.PERFORMANCE_DIFF)),
        ("distance (Euclidean)", metric(keys.DISTANCE_EUCLIDEAN)),
        ("distance (cosine)", metric(keys.DISTANCE_COSINE)),
        ("output MSE (vocabulary)", metric(keys.OUTPUT_MSE)),
        ("perplexity", metric(keys.PERPLEXITY)),
    ]
    lines = [
        "### Faithfulness by prompt length",
        "",
        "Mean ± standard deviation over seeds (n trials) of each trial's best soft prompt: its test "
        f"{name} and that of its unembedded (nearest-token) prompt, their difference, the distance "
        "differential (mean distance to the nearest token), the output differential (mean squared logit "
        f"difference over the vocabulary) and the perplexity of the unembedded prompt under `{spec.scorer}`.",
        "",
        *group_table(sweep, columns),
        "",
    ]
    by_length: dict[int, list[TrialRecord]] = {}
    for record in sweep.completed:
        by_length.setdefault(prompt_length(sweep, record), []).append(record)
    ordered = sorted(by_length.items())

    def series(get: Getter) -> list[Point]:
        return [stat([get(r) for r in rs]).point(L) for L, rs in ordered]

    plot_lengths(
        target / "faithfulness.png",
        {
            f"test {name}": {
                "soft prompt": series(metric(keys.TASK_TEST)),
                "unembedded": series(metric(keys.TASK_TEST_UNEMBEDDED)),
            },
            "distance to nearest token (Euclidean)": {"soft prompt": series(metric(keys.DISTANCE_EUCLIDEAN))},
            "output MSE (vocabulary)": {"soft prompt": series(metric(keys.OUTPUT_MSE))},
        },
        f"{spec.name}: mean ± std over seeds",
    )
    lines += [f"![soft prompt faithfulness]({link}/faithfulness.png)", ""]
    for length, records in ordered:
        soft = [r.metrics.get(keys.TASK_TEST) for r in records]
        hard = [r.metrics.get(keys.TASK_TEST_UNEMBEDDED) for r in records]
        directions.append(
            f"`{spec.name}`, L={length}: test {name} of the soft prompt minus its unembedded tokens: "
            f"{_difference(soft, hard)}."
        )
    return lines
