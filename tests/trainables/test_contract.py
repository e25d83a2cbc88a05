"""The contract every registered method keeps: a few steps on tiny models report the
declared keys with finite values, every row describes one prompt, the best prompt is kept
whole, and a checkpoint round trip continues identically."""

import math

import pytest
import torch

from helpers import TINY_METHOD_EXTRA, TINY_METHOD_SETTINGS
from scrutable.config import from_mapping
from scrutable.metrics import keys
from scrutable.tasks import get_task
from scrutable.tasks.base import subset
from scrutable.trainables import METHODS, get_method
from scrutable.trainables.common import cached_model, load_state, save_state


def make_config(name, **changes):
    return from_mapping(get_method(name).config_cls, {**TINY_METHOD_SETTINGS, **TINY_METHOD_EXTRA[name], **changes})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_reports_declared_keys_with_finite_values(name):
    reports = []
    result = get_method(name).run(make_config(name), report=reports.append)
    assert [r.step for r in reports] == [2, 4] and [r.final for r in reports] == [False, True]
    for report in reports:
        for key in (
            keys.TASK_DEV,
            keys.TASK_DEV_UNEMBEDDED,
            keys.TASK_DEV_OBJECTIVE,
            keys.TASK_DEV_OBJECTIVE_UNEMBEDDED,
            keys.PERPLEXITY,
            *keys.FAITHFULNESS,
            keys.TRAIN_STEP,
            keys.PROMPT_STEP,
        ):
            assert math.isfinite(report.metrics[key]), (key, report.metrics[key])
        assert isinstance(report.metrics["prompt/text"], str)
        assert len(report.metrics["prompt/token_ids"]) == 3
    final = reports[-1].metrics
    assert 0 <= final[keys.TASK_TEST] <= 1 and final[keys.PERPLEXITY] > 1
    assert result.metrics[keys.TASK_TEST] == final[keys.TASK_TEST]
    assert result.card.split == "test"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_final_row_measures_the_empty_prompt(name):
    """The sweep's baseline (`frontier.task_baseline`): the task model on its dev sample with no
    prompt at all, here computed by hand from the task's own input text."""
    config = make_config(name)
    result = get_method(name).run(config)
    lm = cached_model(config.model, None)
    task = get_task(config.task, seed=config.data_seed)
    verbalizers = task.verbalizer_ids(lm)
    correct, log_prob = 0, 0.0
    for example in subset(task.examples("dev"), config.eval_limit):  # the sample prompts are kept by
        before, after = task.formatter(example, lm)
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([before + after])).logits[0, -1, verbalizers]
        correct += int(logits.argmax()) == example.label
        log_prob += float(torch.log_softmax(logits.float(), -1)[example.label])
    assert result.metrics[keys.BASELINE_EMPTY_DEV] == correct / config.eval_limit
    assert result.metrics[keys.BASELINE_EMPTY_DEV_OBJECTIVE] == pytest.approx(log_prob / config.eval_limit, abs=1e-5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_row_describes_one_prompt(name):
    """The final row is the best evaluated prompt, whole: its dev numbers are those of the
    evaluation that found it, its test numbers and card are the same prompt's, and no
    field is left over from another prompt (the last one, or the untrained start)."""
    reports = []
    config = make_config(name, steps=6, eval_interval=2)
    result = get_method(name).run(config, report=reports.append)
    evaluated, final = reports[:-1], reports[-1]
    row, card = final.metrics, final.card
    assert row[keys.PROMPT_IS_BEST] == 1.0 and row[keys.TRAIN_STEP] == 6
    # The best is the highest dev objective among the evaluations (ties: dev metric, then the
    # later step); the last step's evaluation is only reported when it wins.
    earlier = max((r.metrics[keys.TASK_DEV_OBJECTIVE], r.metrics[keys.TASK_DEV], r.step) for r in evaluated)
    chosen = (row[keys.TASK_DEV_OBJECTIVE], row[keys.TASK_DEV], row[keys.PROMPT_STEP])
    assert chosen == earlier if chosen[2] < 6 else chosen > earlier
    assert row[keys.PROMPT_STEP] >= 2  # never the untrained start
    if chosen[2] < 6:
        source = next(r.metrics for r in evaluated if r.step == chosen[2])
        for key in (keys.TASK_DEV, keys.TASK_DEV_OBJECTIVE, keys.PERPLEXITY, *keys.FAITHFULNESS, keys.PROMPT_TEXT):
            assert row[key] == source[key], key
        assert row[keys.PROMPT_TOKEN_IDS] == source[keys.PROMPT_TOKEN_IDS]
    assert final.state["best"]["token_ids"] == row[keys.PROMPT_TOKEN_IDS]
    # The card (written to card.json, MLflow's final card) is the same prompt's, on test.
    assert card.token_ids == row[keys.PROMPT_TOKEN_IDS] and card.unembedded_text == row[keys.PROMPT_TEXT]
    assert card.split == "test" and card.perplexity == row[keys.PERPLEXITY]
    assert row[keys.TASK_TEST] == card.metric_soft and row[keys.TASK_TEST_UNEMBEDDED] == card.metric_unembedded
    assert row[keys.PROMPT_IS_SOFT] == float(name == "soft_prompt") == float(card.is_soft)
    per_prompt = {k: v for k, v in row.items() if not k.startswith("train/")}
    assert {k: result.metrics[k] for k in per_prompt} == per_prompt


@pytest.mark.parametrize("name", sorted(METHODS))
def test_checkpoint_round_trip_continues_identically(name, tmp_path):
    straight = get_method(name).run(make_config(name))
    halfway = []
    get_method(name).run(make_config(name, steps=2, eval_interval=2), report=halfway.append)
    save_state(halfway[-1].state, tmp_path)
    resumed_reports = []
    resumed = get_method(name).run(make_config(name), state=load_state(tmp_path), report=resumed_reports.append)
    assert [r.step for r in resumed_reports] == [4]
    for key, value in straight.state.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(resumed.state[key], value, rtol=0, atol=1e-6, msg=key)
    assert resumed.metrics["prompt/token_ids"] == straight.metrics["prompt/token_ids"]
    assert resumed.metrics[keys.TASK_TEST] == straight.metrics[keys.TASK_TEST]


@pytest.mark.parametrize("learning_rate", [float("inf"), 1e38])
def test_divergence_fails_with_a_reason(learning_rate):
    """NaN and overflow alike end the run with one line naming the fix."""
    from scrutable.trainables.common import TrainingDiverged

    config = make_config("soft_prompt", learning_rate=learning_rate, optimizer="adam", steps=20, eval_interval=10)
    with pytest.raises(TrainingDiverged, match="training diverged: .* lower learning_rate"):
        get_method("soft_prompt").run(config)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"prompt_lenght": 3}, "did you mean 'prompt_length'"),
        ({"alpha": -1.0}, "alpha must be a finite number >= 0"),
        ({"steps": 0}, "steps must be positive"),
        ({"optimizer": "sgd"}, "optimizer must be one of"),
    ],
)
def test_config_errors_name_the_field(values, message):
    from scrutable.errors import UserError

    with pytest.raises(UserError, match=message):
        from_mapping(get_method("soft_prompt").config_cls, values)
