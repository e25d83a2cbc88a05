import pytest
import torch

from scrutable.metrics import (
    nearest_tokens,
    output_differential,
    output_differential_from_logits,
    performance_differential,
)
from scrutable.models import ModelKind
from scrutable.tasks import get_task
from scrutable.tasks.base import subset


def test_output_differential_by_hand():
    soft = torch.tensor([[1.0, 2.0, 5.0], [0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    hard = torch.tensor([[1.0, 0.0, 5.0], [0.0, 1.0, 3.0], [2.0, 1.0, 0.0]])
    result = output_differential_from_logits(soft, hard, answer_ids=[0, 1])
    assert result.mse == pytest.approx((4 + 4 + 4 + 1) / 9)  # every vocabulary entry
    assert result.mse_verbalizer == pytest.approx((4 + 4 + 1) / 6)  # answer tokens 0 and 1 only
    assert result.top1_agreement == pytest.approx(2 / 3)  # argmax over the answers: 1/1, 1/1, 0/0
    anywhere = output_differential_from_logits(soft, hard)  # generation: every token is an answer
    assert anywhere.mse_verbalizer == anywhere.mse and anywhere.top1_agreement == pytest.approx(2 / 3)


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
    # By hand: one unpadded forward per example and prompt, whole-vocabulary logits where the
    # answer is read, squared differences summed in Python.
    total, count, verbal, verbal_count = 0.0, 0, 0.0, 0
    answers = task.verbalizer_ids(lm)
    with torch.no_grad():
        for example in batch:
            rows = [answer_logits(lm, task, example, p) for p in (soft, lm.embedding_matrix[unembedded])]
            for v in range(lm.vocab_size):
                total += (float(rows[0][v]) - float(rows[1][v])) ** 2
                count += 1
            for v in answers:
                verbal += (float(rows[0][v]) - float(rows[1][v])) ** 2
                verbal_count += 1
    assert result.mse == pytest.approx(total / count, rel=1e-4)
    assert result.mse_verbalizer == pytest.approx(verbal / verbal_count, rel=1e-4)
    assert result.mse > 0 and result.mse != pytest.approx(result.mse_verbalizer)


def answer_logits(lm, task, example, prompt):
    """(V,) logits for `before + prompt + after` with no padding, straight from the model."""
    before, after = task.formatter(example, lm)
    embed = lm.model.get_input_embeddings()
    ids = [torch.tensor(part, dtype=torch.long) for part in (before, after)]
    sequence = torch.cat([embed(ids[0]), prompt, embed(ids[1])]).unsqueeze(0)
    if lm.kind is ModelKind.SEQ2SEQ:
        start = torch.tensor([[lm.model.config.decoder_start_token_id]])
        return lm.model(inputs_embeds=sequence, decoder_input_ids=start).logits[0, 0, : lm.vocab_size]
    return lm.model(inputs_embeds=sequence).logits[0, -1, : lm.vocab_size]
