"""PEZ's step-size schedule and its step-0 evaluation (issue 18, item 5)."""

import pytest
import torch

from helpers import TINY_METHOD_SETTINGS
from scrutable.config import from_mapping
from scrutable.metrics import keys
from scrutable.trainables.common import load_state, save_state
from scrutable.trainables.pez import PezConfig, run


def config(**changes):
    return from_mapping(PezConfig, {**TINY_METHOD_SETTINGS, "alpha": 0.0, **changes})


def test_eval_at_start_reports_the_initial_prompt_as_a_candidate():
    reports = []
    run(config(eval_at_start=True), report=reports.append)
    assert [r.step for r in reports] == [0, 2, 4]
    start = reports[0].metrics
    assert start[keys.PROMPT_STEP] == 0 and start[keys.PROMPT_IS_BEST] == 1.0  # the first candidate
    # The same initial prompt, seen by a run that does not evaluate it: its first update moves it.
    plain = []
    run(config(), report=plain.append)
    assert [r.step for r in plain] == [2, 4]
    assert plain[0].metrics[keys.PROMPT_TEXT] == reports[1].metrics[keys.PROMPT_TEXT]  # evaluating draws nothing


def test_cosine_decays_the_step_to_zero_and_constant_keeps_it():
    cosine = run(config(lr_schedule="cosine", learning_rate=0.1))
    assert cosine.state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert cosine.state["schedule"]["last_epoch"] == 4
    constant = run(config(learning_rate=0.1))
    assert constant.state["optimizer"]["param_groups"][0]["lr"] == 0.1
    assert "schedule" not in constant.state  # checkpoints from before schedules existed still resume
    assert not torch.equal(cosine.state["prompt"], constant.state["prompt"])


def test_a_cosine_run_resumes_on_its_schedule(tmp_path):
    straight = run(config(lr_schedule="cosine", steps=6))
    halfway = []
    run(config(lr_schedule="cosine", steps=6), report=halfway.append)
    save_state(halfway[0].state, tmp_path)  # step 2 of 6
    resumed = run(config(lr_schedule="cosine", steps=6), state=load_state(tmp_path))
    torch.testing.assert_close(resumed.state["prompt"], straight.state["prompt"], rtol=0, atol=1e-6)
    assert resumed.state["schedule"]["last_epoch"] == 6
