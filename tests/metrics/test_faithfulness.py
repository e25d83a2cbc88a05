import pytest
import torch

from scrutable.metrics import (
    nearest_tokens,
    output_differential,
    output_differential_from_logits,
    performance_differential,
)
from scrutable.tasks import get_task
from scrutable.tasks.base import subset


def test_output_differential_by_hand():
    soft = torch.tensor([[1.0, 2.0], [0.0, 3.0], [2.0, 0.0]])
    hard = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    result = output_differential_from_logits(soft, hard)
    assert result.mse == pytest.approx((4 + 4 + 1) / 6)
    assert result.top1_agreement == pytest.approx(2 / 3)


def test_performance_differential_is_absolute():
    assert performance_differential(0.5, 0.75) == performance_differential(0.75, 0.5) == 0.25


@pytest.mark.parametrize("model", ["tiny_gpt2", "tiny_t5"])
def test_output_differential_on_a_task(model, request, data_dir):
    lm = request.getfixturevalue(model)
    task = get_task("sst2", data_dir=data_dir)
    batch = subset(task.examples("dev"), 8)
    ids = torch.tensor([1169, 3807, 373]) if model == "tiny_gpt2" else torch.tensor([37, 1974, 47])
    hard = lm.embedding_matrix[ids]
    same = output_differential(task, lm, hard, ids, batch)
    assert same.mse == pytest.approx(0.0, abs=1e-10) and same.top1_agreement == 1.0

    soft = hard + 0.5 * torch.randn_like(hard)
    unembedded = nearest_tokens(soft, lm.embedding_matrix).token_ids
    result = output_differential(task, lm, soft, unembedded, batch)
    with torch.no_grad():
        a = task.output_logits(lm, soft, batch)[0]
        b = task.output_logits(lm, lm.embedding_matrix[unembedded], batch)[0]
    assert result.mse == pytest.approx(float((a - b).pow(2).mean()), rel=1e-5)
    assert result.mse > 0
