"""The contract every registered method keeps: a few steps on tiny models report the
declared keys with finite values, and a checkpoint round trip continues identically."""

import math

import pytest
import torch

from scrutable.config import from_mapping
from scrutable.metrics import keys
from scrutable.trainables import METHODS, get_method
from scrutable.trainables.common import load_state, save_state

COMMON = {
    "task": "sst2",
    "model": "tiny-gpt2",
    "scorer": "tiny-gpt2",
    "prompt_length": 3,
    "steps": 4,
    "eval_interval": 2,
    "batch_size": 4,
    "eval_limit": 8,
    "test_limit": 8,
    "alpha": 0.5,
    "seed": 3,
}
EXTRA = {
    "soft_prompt": {"learning_rate": 0.3},
    "pez": {},
    "rlprompt": {"policy_model": "tiny-gpt2", "prompts_per_step": 4, "mlp_hidden_size": 32},
}


def make_config(name, **changes):
    return from_mapping(get_method(name).config_cls, {**COMMON, **EXTRA[name], **changes})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_reports_declared_keys_with_finite_values(name):
    reports = []
    result = get_method(name).run(make_config(name), report=reports.append)
    assert [r.step for r in reports] == [2, 4] and [r.final for r in reports] == [False, True]
    for report in reports:
        for key in (
            keys.TASK_DEV,
            keys.TASK_DEV_UNEMBEDDED,
            keys.PERPLEXITY,
            keys.DISTANCE,
            keys.OUTPUT_MSE,
            keys.TOP1_AGREEMENT,
            keys.PERFORMANCE_DIFF,
            keys.TRAIN_STEP,
        ):
            assert math.isfinite(report.metrics[key]), (key, report.metrics[key])
        assert isinstance(report.metrics["prompt/text"], str)
        assert len(report.metrics["prompt/token_ids"]) == 3
    final = reports[-1].metrics
    assert 0 <= final[keys.TASK_TEST] <= 1 and final[keys.PERPLEXITY] > 1
    assert result.metrics[keys.TASK_TEST] == final[keys.TASK_TEST]
    assert result.card.split == "test"


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


def test_nan_loss_fails_with_a_reason():
    from scrutable.trainables.common import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="lower learning_rate"):
        get_method("soft_prompt").run(make_config("soft_prompt", learning_rate=float("inf")))


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
