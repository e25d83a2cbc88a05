import math

import pytest
import torch
import torch.nn.functional as F

from scrutable.metrics import LocalScorer, ScoreRequest, score_request, sequence_perplexities
from scrutable.metrics.perplexity import onehot_gradients


def independent_perplexity(lm, ids):
    """exp(mean NLL) of ids after the start token, one sequence, one token at a time."""
    full = torch.tensor([[lm.start_token_id, *ids]])
    with torch.no_grad():
        logits = lm.model(full).logits[0]
    nll = [-F.log_softmax(logits[i], -1)[full[0, i + 1]].item() for i in range(len(ids))]
    return math.exp(sum(nll) / len(nll))


def test_perplexity_is_exp_mean_nll_with_the_start_token(tiny_gpt2):
    sequences = [[15496, 995, 318], [464], [40, 588, 257, 3797, 13, 1318]]
    got = sequence_perplexities(tiny_gpt2, sequences)  # padded batch of unequal lengths
    for (ppl, count), seq in zip(got, sequences, strict=True):
        assert count == len(seq)
        assert ppl == pytest.approx(independent_perplexity(tiny_gpt2, seq), rel=1e-4)


def test_shared_vocabulary_scores_ids_directly(tiny_gpt2, data_dir):
    from scrutable.models import tiny_gpt2 as build

    scorer = LocalScorer(build(data_dir, seed=1))  # same vocabulary, other weights
    request = score_request([15496, 995], tiny_gpt2, scorer.vocab_signature)
    assert request == ScoreRequest(token_ids=(15496, 995))
    result = scorer.perplexity([request])[0]
    assert not result.retokenized and result.num_tokens == 2
    assert result.perplexity == pytest.approx(independent_perplexity(scorer.lm, [15496, 995]), rel=1e-4)
    assert result.mean_nll == pytest.approx(math.log(result.perplexity))


def test_other_vocabulary_decodes_and_retokenizes(tiny_gpt2, tiny_t5):
    scorer = LocalScorer(tiny_gpt2)
    ids = tiny_t5.tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    request = score_request(ids, tiny_t5, scorer.vocab_signature)
    assert request.token_ids is None and request.text == "Hello world"
    result = scorer.perplexity([request])[0]
    assert result.retokenized and result.num_tokens == 2  # GPT-2: "Hello", " world"
    assert result.perplexity == pytest.approx(independent_perplexity(tiny_gpt2, [15496, 995]), rel=1e-4)


def test_onehot_gradient_matches_finite_differences(data_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    from scrutable.models import LanguageModel, ModelKind, tiny_gpt2

    # A small-vocabulary float64 copy so finite differences are exact enough.
    base = tiny_gpt2(data_dir)
    config = GPT2Config(vocab_size=60, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(3)
    model = GPT2LMHeadModel(config).double().eval().requires_grad_(False)
    base.tokenizer.pad_token = base.tokenizer.eos_token
    lm = LanguageModel("toy", model, base.tokenizer, ModelKind.CAUSAL, start_token_override=59)
    lm.tokenizer = _SixtyTokenView(base.tokenizer)
    seq = [5, 17, 42, 8]
    (result,) = onehot_gradients(lm, [seq])
    assert result.onehot_grad.shape == (4, 60)

    def mean_nll(onehot):  # (L, V) relaxed token choice, independent of the code under test
        start = F.one_hot(torch.tensor([59]), 60).double()
        x = torch.cat([start, onehot]) @ model.get_input_embeddings().weight
        logp = F.log_softmax(model(inputs_embeds=x[None]).logits[0, :-1], -1)
        return -(onehot * logp).sum(-1).mean()

    onehot = F.one_hot(torch.tensor(seq), 60).double()
    assert result.result.mean_nll == pytest.approx(mean_nll(onehot).item(), rel=1e-6)
    direction = torch.randn(4, 60, dtype=torch.float64)
    eps = 1e-5
    numeric = (mean_nll(onehot + eps * direction) - mean_nll(onehot - eps * direction)) / (2 * eps)
    analytic = (torch.from_numpy(result.onehot_grad).double() * direction).sum()
    assert analytic.item() == pytest.approx(numeric.item(), rel=1e-4)


class _SixtyTokenView:
    """The GPT-2 tokenizer narrowed to a 60-token toy vocabulary (only len and pad used)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.pad_token_id = 0

    def __len__(self):
        return 60

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_local_submit_gives_the_blocking_answers(tiny_gpt2):
    scorer = LocalScorer(tiny_gpt2)
    requests = [ScoreRequest(token_ids=(15496, 995)), ScoreRequest(text="Hello world")]
    pending_values = scorer.submit_perplexity(requests)
    pending_gradients = scorer.submit_gradients([[15496, 995, 318]])
    assert pending_values.result() == scorer.perplexity(requests)
    (got,) = pending_gradients.result()
    (expected,) = scorer.perplexity_gradients([[15496, 995, 318]])
    assert got.result == expected.result and (got.onehot_grad == expected.onehot_grad).all()
