"""One sweep's section of the report: what ran, how to rerun it, its method's results, its
training curves, its Pareto frontier and every trial.

    section = render_sweep(load_sweep(Path("runs/quickstart")), Path("docs/results"), Path("docs"))
    print("\\n".join(section.lines))

The method's own part comes from `methods.py` (PEZ and RLPrompt: the alpha trade-off;
soft prompt: faithfulness). Figures and the sweep's exported Pareto files (pareto.csv,
.json, .png, copied as they are) go to `<assets>/<sweep name>/`, linked relative to the
document's folder. A sweep on tiny random models (`--smoke`) says so at its top.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scrutable.metrics import keys
from scrutable.report import methods
from scrutable.report.commands import commands, full_scale, shown_relative
from scrutable.report.markdown import frontier_table, param_cell, param_header, trial_table
from scrutable.report.plots import Curve, plot_curves
from scrutable.report.read import Sweep, setting_names
from scrutable.sweep.folder import PARETO_CSV, PARETO_JSON, PARETO_PNG, RESULT_FILE

PARETO_FILES = (PARETO_CSV, PARETO_JSON, PARETO_PNG)  # the exported files copied beside the report
TASK_TITLE = {"sst2": "SST-2", "boolq": "BoolQ", "yelp": "Yelp"}
METHOD_TITLE = {"pez": "PEZ", "rlprompt": "RLPrompt", "soft_prompt": "soft prompt"}


@dataclass(frozen=True)
class Section:
    lines: list[str]
    directions: list[str]  # measured directions for the comparison section


def render_sweep(sweep: Sweep, assets: Path, out_dir: Path) -> Section:
    spec = sweep.spec
    target = assets / spec.name
    target.mkdir(parents=True, exist_ok=True)
    link = shown_relative(target, out_dir)
    title = METHOD_TITLE.get(spec.method, spec.method)
    lines = [f"## {TASK_TITLE.get(spec.task, spec.task)}, {title}: `{spec.name}`", ""]
    if sweep.smoke:
        lines += [
            f"> **Smoke scale: tiny random models** ({spec.model}, scorer {spec.scorer}): these numbers test",
            "> the pipeline, not the method.",
            "",
        ]
        full = full_scale(spec.name)
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
        lines += methods.soft_prompt(sweep, target, link, directions)
    else:
        lines += methods.tradeoff(sweep, target, link, directions)

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
        lines += [f"No {RESULT_FILE} histories in the trial folders: no curves.", ""]

    copied = [name for name in PARETO_FILES if (sweep.folder.pareto_dir / name).is_file()]
    for name in copied:
        shutil.copyfile(sweep.folder.pareto_dir / name, target / name)
    lines += ["### Pareto frontier", "", *frontier_table(sweep), ""]
    if copied:
        lines += ["Exported by the sweep: " + ", ".join(f"[{n}]({link}/{n})" for n in copied) + ".", ""]
    lines += ["<details><summary>Every trial</summary>", "", *trial_table(sweep), "", "</details>", ""]
    return Section(lines, directions)


def _curves(sweep: Sweep) -> dict[str, list[Curve]]:
    """Dev objective of each evaluated prompt (rows whose prompt was evaluated at that step:
    the final row repeats the best earlier prompt) and, where reported, the reward."""
    names = setting_names(sweep.spec)
    panels: dict[str, list[Curve]] = {keys.TASK_DEV_OBJECTIVE: []}
    for record in sweep.completed:
        rows = sweep.folder.history(record)
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
