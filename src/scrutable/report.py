"""`scrutable report`: sweep folders in, `docs/results.md` (tables, plots, commands) out.

    scrutable report runs/results/sst2_pez runs/results/sst2_soft_prompt \\
        runs/results/sst2_rlprompt --out docs/results.md

Every number in the document is read from the folders: each trial's final row
(`sweep/results.py`; the best prompt on the dev objective with its dev and test numbers),
its `result.json` history for the training curves, and, for the English-phrase reference
line, perplexities computed once with the sweep's own scorer and cached in the folder
(`reference_phrases.py`). Nothing depends on the clock or on dict order: rerunning on the
same folders writes the same bytes (markdown and PNGs).

Per folder, by the spec's method:
- pez / rlprompt: alpha x prompt length -> perplexity, test metric, dev objective as
  mean ± standard deviation over seeds (n), a plot of both against alpha with error bars
  and the reference line, the Pareto frontier with its prompts, and the dev-objective
  curves (RLPrompt: also the reward curves).
- soft_prompt: the soft prompt's test metric vs its unembedded tokens' (performance
  differential), the distance and output differentials, over prompt lengths and seeds.
- A sweep on tiny random models (`--smoke`) says so at its top.
The folder's exported Pareto files (pareto.csv/json/png) are copied to
`<out without .md>/<sweep name>/`; the closing "Comparison with the paper" section lists
measured directions only, for the prose to build on. Figures: `report_plots.py`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.paths import check_writable, write_atomically
from scrutable.reference_phrases import Reference, reference_perplexities
from scrutable.report_plots import Curve, Point, plot_alpha_tradeoff, plot_curves, plot_lengths
from scrutable.sweep.frontier import task_baseline
from scrutable.sweep.pareto import non_dominated
from scrutable.sweep.results import TrialRecord, collect_trials
from scrutable.sweep.search_space import Dimension
from scrutable.sweep.spec import SweepSpec, load_spec, spec_from_config

PARETO_FILES = ("pareto.csv", "pareto.json", "pareto.png")
METRIC_NAME = {"sst2": "accuracy", "boolq": "accuracy", "yelp": "joint score"}
SHORT = {"prompt_length": "L", "learning_rate": "lr"}
TASK_TITLE = {"sst2": "SST-2", "boolq": "BoolQ", "yelp": "Yelp"}
OFFLINE_MODELS = {"smollm2-135m", "minilm", "tiny-gpt2", "tiny-t5"}
COMPARISON_HEADER = "## Comparison with the paper"
PROSE_MARKER = "<!-- The comparison with the paper's numbers goes below this line; `scrutable report` keeps it. -->"


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    folder: Path
    spec: SweepSpec
    records: list[TrialRecord]

    @property
    def completed(self) -> list[TrialRecord]:
        return [r for r in self.records if r.completed]

    @property
    def smoke(self) -> bool:
        return self.spec.model.startswith("tiny-") or self.spec.scorer.startswith("tiny-")

    @property
    def metric_name(self) -> str:
        return METRIC_NAME.get(self.spec.task, "metric")


def load_sweep(folder: Path) -> Sweep:
    folder = Path(folder)
    spec_file = folder / "spec.yaml"
    if not spec_file.is_file():
        raise UserError(f"{folder} is not a sweep folder (no spec.yaml): pass folders made by `scrutable sweep`")
    try:
        raw = yaml.safe_load(spec_file.read_text())
    except yaml.YAMLError:
        raise UserError(f"{spec_file} is not valid YAML: pass folders made by `scrutable sweep`") from None
    if not isinstance(raw, dict):
        raise UserError(f"{spec_file} is not a sweep spec: pass folders made by `scrutable sweep`")
    spec = spec_from_config(raw)
    return Sweep(folder.resolve(), spec, collect_trials(folder.resolve(), spec))


def history(record: TrialRecord) -> list[dict[str, Any]]:
    """Every report of a trial (Tune's result.json), one per step, in step order."""
    path = None if record.path is None else record.path / "result.json"
    if path is None or not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a killed trial's half line
        if isinstance(row, dict) and isinstance(row.get(keys.TRAIN_STEP), int | float):
            by_step[int(row[keys.TRAIN_STEP])] = row  # a resumed trial's repeat: the later wins
    return [by_step[step] for step in sorted(by_step)]


# --- statistics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    n: int  # finite values
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for n < 2

    def cell(self) -> str:
        if self.n == 0:
            return "–"
        return fmt(self.mean) if self.std is None else f"{fmt(self.mean)} ± {fmt(self.std)}"

    def point(self, x: float) -> Point:
        return Point(x, self.mean, self.std or 0.0)


def stat(values: Sequence[float | None]) -> Stat:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return Stat(0, math.nan, None)
    return Stat(len(finite), statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else None)


def fmt(value: float | None) -> str:
    """4 significant digits; scientific from 10,000 up (perplexities span decades)."""
    if value is None or not math.isfinite(value):
        return "–" if value is None or math.isnan(value) else str(value)
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.4g}"


Getter = Callable[[TrialRecord], float | None]


def metric(key: str) -> Getter:
    return lambda r: r.metrics.get(key)


def test_gap(record: TrialRecord) -> float | None:
    """Test metric of the prompt minus that of its unembedded tokens (performance differential)."""
    soft, hard = record.metrics.get(keys.TASK_TEST), record.metrics.get(keys.TASK_TEST_UNEMBEDDED)
    return None if soft is None or hard is None else soft - hard


def setting_names(spec: SweepSpec) -> list[str]:
    """The searched values that define a setting; seeds repeat a setting."""
    return [name for name in spec.search if name != "seed"]


def groups(sweep: Sweep) -> dict[tuple[Any, ...], list[TrialRecord]]:
    """Completed trials by setting, settings in ascending order."""
    names = setting_names(sweep.spec)
    grouped: dict[tuple[Any, ...], list[TrialRecord]] = {}
    for record in sweep.completed:
        grouped.setdefault(tuple(record.params.get(n) for n in names), []).append(record)
    return {k: grouped[k] for k in sorted(grouped, key=lambda k: tuple(_sortable(v) for v in k))}


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


# --- markdown -----------------------------------------------------------------------------


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
                *(stat([get(r) for r in records]).cell() for _, get in columns),
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


def frontier_rows(sweep: Sweep) -> list[TrialRecord]:
    """Completed trials with finite objectives that beat the sweep's baseline (a uniform guess,
    `frontier.task_baseline`) and that no other such trial dominates, best first: pareto.csv."""
    spec = sweep.spec
    baseline = task_baseline(spec)
    eligible = [
        r
        for r in sweep.completed
        if all(math.isfinite(r.objectives.get(m, math.nan)) for m in spec.metric_names)
        and (baseline is None or baseline.beaten_by(r))
    ]
    if not eligible:
        return []
    directions = ["maximize" if d == "max" else "minimize" for d in spec.directions]
    points = np.array([[r.objectives[m] for m in spec.metric_names] for r in eligible], dtype=float)
    keep = non_dominated(points, directions)  # type: ignore[arg-type]
    sign = -1.0 if spec.directions[0] == "max" else 1.0
    chosen = [(r, i) for i, (r, k) in enumerate(zip(eligible, keep, strict=True)) if k]
    return [r for r, _ in sorted(chosen, key=lambda ri: (sign * ri[0].objectives[spec.metric_names[0]], ri[1]))]


def frontier_table(sweep: Sweep) -> list[str]:
    names = list(sweep.spec.search)
    rows = [
        [
            *(param_cell(r.params.get(n)) for n in names),
            *(fmt(r.objectives[m]) for m in sweep.spec.metric_names),
            fmt(r.metrics.get(keys.TASK_TEST)),
            code(r.prompt_text),
        ]
        for r in frontier_rows(sweep)
    ]
    if not rows:
        baseline = task_baseline(sweep.spec)
        if baseline is not None and sweep.completed:
            beat = f"{baseline.metric} {baseline.value:.4g}, {baseline.source}"
            return [f"No trial beats the baseline ({beat}): no frontier."]
        return ["No completed trial with finite objectives: no frontier."]
    header = [*(param_header(n) for n in names), *sweep.spec.metric_names, f"test {sweep.metric_name}", "prompt"]
    return table(header, rows)


# --- commands -----------------------------------------------------------------------------


def shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def commands(sweep: Sweep) -> list[str]:
    """How the folder was made: its sweep file with the overrides that differ, and the exact replay."""
    lines = ["```bash"]
    source = _source_file(sweep.spec.name)
    if source is not None:
        found = [(o, smoke) for smoke in (False, True) if (o := _overrides(source, sweep.spec, smoke)) is not None]
        if found:
            overrides, smoke = min(found, key=lambda item: len(item[0]))  # the fewest --set: plain or --smoke
            sets = "".join(f" \\\n    --set {o}" for o in overrides)
            lines.append(f"scrutable sweep {shown_path(source)}{' --smoke' if smoke else ''}{sets}")
    lines.append(f"# exact replay: scrutable sweep {shown_path(sweep.folder / 'spec.yaml')} --set storage=NEW_FOLDER")
    return [*lines, "```"]


def _source_file(name: str) -> Path | None:
    found = sorted(Path("sweeps").rglob(f"{name}.yaml")) if Path("sweeps").is_dir() else []
    return found[0] if found else None


def _overrides(source: Path, recorded: SweepSpec, smoke: bool) -> list[str] | None:
    """`--set` arguments that turn `source` into `recorded` (None when it does not load)."""
    try:
        spec = load_spec(source, smoke=smoke)
    except UserError:
        return None
    ignore = {"storage", "local_dir", "data_dir", "search"}  # machine-specific; search below
    a, b = _flat(spec.to_dict()), _flat(recorded.to_dict())
    changed = [f"{k}={_yaml(b[k])}" for k in b if k.split(".")[0] not in ignore and a.get(k) != b[k]]
    searched = [f"search.{name}={_yaml(_dimension(dim))}" for name, dim in recorded.search.items()]
    if set(spec.search) != set(recorded.search):  # a dimension added or removed: the whole search
        return [f"search={_yaml({n: _dimension(d) for n, d in recorded.search.items()})}", *changed]
    return [
        s for s, name in zip(searched, recorded.search, strict=True) if spec.search[name] != recorded.search[name]
    ] + changed


def _dimension(dim: Dimension) -> dict[str, Any]:
    """A dimension as a sweep file writes it: the fields that differ from their defaults."""
    return {f.name: getattr(dim, f.name) for f in fields(dim) if getattr(dim, f.name) != f.default}


def _flat(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict) and item and key != "smoke":
            out.update(_flat(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = item
    return out


def _yaml(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("\n...").strip()
    return f"'{text}'" if any(c in text for c in " {}[],") else text


# --- sections -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    lines: list[str]
    directions: list[str]  # measured directions for the comparison section


def render_sweep(sweep: Sweep, assets: Path, out_dir: Path) -> Section:
    spec = sweep.spec
    target = assets / spec.name
    target.mkdir(parents=True, exist_ok=True)
    link = shown_relative(target, out_dir)
    title = {"pez": "PEZ", "rlprompt": "RLPrompt", "soft_prompt": "soft prompt"}.get(spec.method, spec.method)
    lines = [f"## {TASK_TITLE.get(spec.task, spec.task)}, {title}: `{spec.name}`", ""]
    if sweep.smoke:
        lines += [
            f"> **Smoke scale: tiny random models** ({spec.model}, scorer {spec.scorer}): these numbers test",
            "> the pipeline, not the method.",
            "",
        ]
        full = _full_scale(spec.name)
        if full:
            lines += [full, ""]
    failed = len(sweep.records) - len(sweep.completed)
    training = ", ".join(f"{k}={v}" for k, v in spec.training.items())
    lines += [
        f"Task model `{spec.model}`, scorer `{spec.scorer}`, sampler `{spec.sampler.value}`; "
        f"{len(sweep.completed)} completed trial(s) of {len(sweep.records)}"
        + (f" ({failed} not completed)" if failed else "")
        + f". Training: {training or 'defaults'}.",
        "",
        "Made by:",
        "",
        *commands(sweep),
        "",
    ]
    directions: list[str] = []
    if not sweep.completed:
        return Section([*lines, "No completed trials.", ""], directions)

    if spec.method == "soft_prompt":
        lines += _soft_prompt(sweep, target, link, directions)
    else:
        lines += _tradeoff(sweep, target, link, directions)

    lines += ["### Training curves", ""]
    curves = _curves(sweep)
    if any(curves.values()):
        plot_curves(target / "curves.png", curves, f"{spec.name}: every trial's evaluations")
        lines += [
            "The dev objective of the prompt evaluated at each step (one line per trial, coloured by setting; "
            "the last step's prompt shows only where it became the best, since the final report carries the best)"
            + (" and the mean reward of the steps since the previous report" if keys.TRAIN_REWARD in curves else "")
            + ": flat ends mean training has converged at this budget.",
            "",
            f"![curves of {spec.name}]({link}/curves.png)",
            "",
        ]
    else:
        lines += ["No result.json histories in the trial folders: no curves.", ""]

    copied = [name for name in PARETO_FILES if (sweep.folder / "pareto" / name).is_file()]
    for name in copied:
        shutil.copyfile(sweep.folder / "pareto" / name, target / name)
    lines += ["### Pareto frontier", "", *frontier_table(sweep), ""]
    if copied:
        lines += ["Exported by the sweep: " + ", ".join(f"[{n}]({link}/{n})" for n in copied) + ".", ""]
    lines += ["<details><summary>Every trial</summary>", "", *trial_table(sweep), "", "</details>", ""]
    return Section(lines, directions)


def shown_relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _full_scale(name: str) -> str:
    source = _source_file(name)
    if source is None:
        return ""
    try:
        full = load_spec(source)
    except UserError:
        return ""
    steps = full.training.get("steps", "the default")
    hub = sorted({full.model, full.scorer} - OFFLINE_MODELS)
    return (
        f"At full scale `scrutable sweep {shown_path(source)}` runs task model `{full.model}` with scorer "
        f"`{full.scorer}`, {full.trials} trials of {steps} steps"
        + (f" ({', '.join(hub)} from the hub: a GPU job)" if hub else " (offline models)")
        + ", filling these same sections with real models."
    )


def _tradeoff(sweep: Sweep, target: Path, link: str, directions: list[str]) -> list[str]:
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
    lengths = sorted({int(spec.trial_config(r.params).prompt_length) for r in sweep.completed})
    references = reference_perplexities(sweep.folder, spec, lengths)
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
        length = int(sweep.spec.trial_config(record.params).prompt_length)
        alpha = float(record.params.get("alpha", 0.0))
        out.setdefault(length, {}).setdefault(alpha, []).append(record)
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


def _soft_prompt(sweep: Sweep, target: Path, link: str, directions: list[str]) -> list[str]:
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
        by_length.setdefault(int(spec.trial_config(record.params).prompt_length), []).append(record)
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


def _curves(sweep: Sweep) -> dict[str, list[Curve]]:
    """Dev objective of each evaluated prompt (rows whose prompt was evaluated at that step:
    the final row repeats the best earlier prompt) and, where reported, the reward."""
    names = setting_names(sweep.spec)
    panels: dict[str, list[Curve]] = {keys.TASK_DEV_OBJECTIVE: []}
    for record in sweep.completed:
        rows = history(record)
        group = ", ".join(f"{param_header(n)}={param_cell(record.params.get(n))}" for n in names)
        label = f"{group}, seed={record.params.get('seed', sweep.spec.seed)}"
        evaluated = [
            r for r in rows if r.get(keys.PROMPT_STEP) == r[keys.TRAIN_STEP] and _finite(r.get(keys.TASK_DEV_OBJECTIVE))
        ]
        panels[keys.TASK_DEV_OBJECTIVE].append(
            Curve(
                label,
                group,
                [int(r[keys.TRAIN_STEP]) for r in evaluated],
                [float(r[keys.TASK_DEV_OBJECTIVE]) for r in evaluated],
            )
        )
        rewarded = [r for r in rows if _finite(r.get(keys.TRAIN_REWARD))]
        if rewarded:
            panels.setdefault(keys.TRAIN_REWARD, []).append(
                Curve(
                    label,
                    group,
                    [int(r[keys.TRAIN_STEP]) for r in rewarded],
                    [float(r[keys.TRAIN_REWARD]) for r in rewarded],
                )
            )
    return {k: [c for c in v if c.steps] for k, v in panels.items() if any(c.steps for c in v)}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


# --- the document -------------------------------------------------------------------------


def write_report(folders: Sequence[Path], out: Path) -> Path:
    """Read every folder, write `out` and its figures under `out` without `.md`; return `out`."""
    if not folders:
        raise UserError("no sweep folders given: pass one or more folders made by `scrutable sweep`")
    if out.suffix != ".md":
        raise UserError(f"--out {out} must name a markdown file ending in .md")
    check_writable(out, "--out", folder=False)  # before reading every sweep's results
    sweeps = [load_sweep(folder) for folder in folders]
    names = [s.spec.name for s in sweeps]
    if len(set(names)) != len(names):
        raise UserError(
            f"two folders hold sweeps of the same name ({', '.join(sorted(names))}): their figures would clash"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    assets = out.with_suffix("")
    sections = [render_sweep(sweep, assets, out.parent) for sweep in sweeps]
    lines = [
        "# Results",
        "",
        "<!-- Generated by `scrutable report`; edit the sweeps or the script, not this file "
        "(except the prose under the comparison header). -->",
        "",
        "Generated by:",
        "",
        "```bash",
        "scrutable report " + " ".join(shown_path(s.folder) for s in sweeps) + f" --out {shown_path(out)}",
        "```",
        "",
        "Every number below is read from these sweep folders. Each trial reports one prompt: the best on "
        "the dev objective (mean log-probability of the correct answer; Yelp: the joint score) over its "
        "evaluations, with that "
        "prompt's dev and test numbers. Means and standard deviations are over training seeds.",
        "",
    ]
    for section in sections:
        lines += section.lines
    lines += [
        COMPARISON_HEADER,
        "",
        "Measured directions (difference of means ± its standard error; written by `scrutable report`):",
        "",
        *[f"- {d}" for s in sections for d in s.directions],
        "",
        PROSE_MARKER,
    ]
    prose = ""  # the lead's prose under the marker survives a rerun
    if out.is_file() and PROSE_MARKER in (previous := out.read_text()):
        prose = previous.split(PROSE_MARKER, 1)[1].lstrip("\n")
    write_atomically(out, "\n".join(lines) + "\n" + ("\n" + prose if prose else ""))
    return out
