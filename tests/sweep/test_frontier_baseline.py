"""The sweep's task baseline (`frontier.task_baseline`): prompts that do not beat a uniform
guess stay in trials.csv but off the frontier, and the default reference point's task
coordinate is the baseline, so the hypervolume counts only what beats it."""

import csv
import json
import math
from dataclasses import replace

import pytest

from scrutable.metrics import keys
from scrutable.sweep.frontier import export_pareto, render_summary, task_baseline
from scrutable.sweep.pareto import hypervolume
from scrutable.sweep.results import TrialRecord
from scrutable.sweep.spec import Dimension, Mode, Objective, SweepSpec

OBJ, PPL = keys.TASK_DEV_OBJECTIVE, keys.PERPLEXITY


def spec(**changes):
    base = SweepSpec(
        name="baseline-test",
        method="pez",
        task="sst2",
        model="tiny-gpt2",
        scorer="tiny-gpt2",
        search={"alpha": Dimension(low=0.01, high=10.0, log=True, zero=True)},
        objectives=[Objective(OBJ, Mode.MAX), Objective(PPL, Mode.MIN)],
    )
    return replace(base, **changes)


def record(trial_id, objective, perplexity, alpha):
    values = {OBJ: objective, PPL: perplexity}
    return TrialRecord(
        trial_id=trial_id,
        status="TERMINATED",
        params={"alpha": alpha, "seed": 7},
        objectives=values,
        metrics=dict(values),
        prompt_text=f"prompt {trial_id}",
    )


def test_the_baseline_is_a_uniform_guess_in_the_task_objective():
    assert task_baseline(spec()).value == pytest.approx(-math.log(2))
    accuracy = spec(objectives=[Objective(keys.TASK_DEV, Mode.MAX), Objective(PPL, Mode.MIN)])
    assert task_baseline(accuracy).value == 0.5 and task_baseline(accuracy).metric == keys.TASK_DEV
    assert task_baseline(spec(objectives=[Objective(PPL, Mode.MIN)])) is None  # no task objective
    assert task_baseline(spec(task="yelp", method="rlprompt")) is None  # a joint score: no labels


def test_prompts_that_do_not_beat_a_coin_stay_off_the_frontier(tmp_path):
    """The results grid of issue 18: readable alpha = 10 prompts worse than 50/50."""
    records = [
        record("zero", -0.60, 4e5, 0.0),
        record("mid", -0.66, 2e4, 1.0),
        record("coin1", -1.27, 90.0, 10.0),  # readable and useless
        record("coin2", -0.73, 120.0, 10.0),
    ]
    summary = export_pareto(records, spec(), tmp_path)
    assert [r.trial_id for r in summary.frontier] == ["zero", "mid"]  # coin1 and coin2 would be non-dominated
    assert summary.n_below_baseline == 2 and summary.n_excluded == 0
    baseline = -math.log(2)
    assert summary.reference[0] == pytest.approx(baseline)  # the task coordinate is the baseline
    points = [[-0.60, 4e5], [-0.66, 2e4]]
    assert summary.hypervolume == pytest.approx(hypervolume(points, ["maximize", "minimize"], summary.reference))

    rows = {row["trial_id"]: row for row in csv.DictReader((tmp_path / "trials.csv").open())}
    assert set(rows) == {"zero", "mid", "coin1", "coin2"} and rows["coin1"]["on_frontier"] == "False"
    assert "does not beat the baseline" in rows["coin2"]["excluded"] and rows["mid"]["excluded"] == ""
    assert rows["mid"]["seed"] == "7"  # the trial's own seed is a column
    saved = json.loads((tmp_path / "pareto.json").read_text())
    assert saved["baseline"]["value"] == pytest.approx(baseline) and saved["baseline"]["trials_not_beating_it"] == 2
    text = " ".join(render_summary(summary).split())
    assert "baseline task/dev_objective -0.6931 (uniform guess over 2 labels): 2 completed trial(s)" in text


def test_no_prompt_beats_the_baseline(tmp_path):
    summary = export_pareto([record("a", -0.9, 100.0, 10.0)], spec(), tmp_path)
    assert summary.frontier == [] and summary.hypervolume is None
    assert any("no trial beats the baseline" in note for note in summary.notes)
    assert (tmp_path / "pareto.png").is_file()  # the trials are still plotted


def measured(trial_id, objective, perplexity, alpha, empty):
    r = record(trial_id, objective, perplexity, alpha)
    return replace(r, metrics={**r.metrics, keys.BASELINE_EMPTY_DEV_OBJECTIVE: empty})


def test_an_empty_prompt_that_beats_a_coin_raises_the_bar(tmp_path):
    """The trials' measured empty prompt (-0.65) is above -log 2: prompts between the two beat a
    coin but not the task model's own guess, so they leave the frontier and the reference."""
    records = [
        measured("zero", -0.60, 4e5, 0.0, -0.65),
        measured("mid", -0.66, 2e4, 1.0, -0.65),  # beats a coin, not the empty prompt
        record("running", -0.5, 9e5, 0.3),  # no baseline value: it does not lower the bar either
    ]
    baseline = task_baseline(spec(), records)
    assert baseline.value == pytest.approx(-0.65) and baseline.source.startswith("the empty prompt")
    summary = export_pareto(records, spec(), tmp_path)
    assert {r.trial_id for r in summary.frontier} == {"zero", "running"} and summary.n_below_baseline == 1
    assert summary.reference[0] == pytest.approx(-0.65)
    assert json.loads((tmp_path / "pareto.json").read_text())["baseline"]["value"] == pytest.approx(-0.65)


def test_an_empty_prompt_below_a_coin_leaves_the_coin_as_the_bar():
    records = [measured("a", -0.6, 4e5, 0.0, -0.9), measured("b", -0.6, 4e5, 0.0, -0.8)]
    baseline = task_baseline(spec(), records)
    assert baseline.value == pytest.approx(-math.log(2))
    assert baseline.source == "uniform guess over 2 labels; the empty prompt scores -0.8"
