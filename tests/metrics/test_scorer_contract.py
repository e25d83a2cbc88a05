"""The contract both scorer implementations keep (`metrics/perplexity.py`'s `Scorer`).

`LocalScorer` (in process) and `ActorScorer` (the sweep's shared Ray actor,
`sweep/scorer_actor.py`) serve the same tiny random GPT-2 (`tiny-gpt2`, with the real GPT-2
tokenizer). Every method of the protocol, blocking and submitted, is run on both with the
same requests: token ids of several lengths (1 included), text to re-tokenise, and an empty
text. Each must give perplexities equal to one computed by hand, token by token, and the two
must agree with each other to 1e-5 on values and one-hot gradients, with the same types,
shapes and dtypes. One Ray for the whole module (the fixture of tests/sweep/test_scorer_actor.py).

Run: python -m pytest tests/metrics/test_scorer_contract.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import ray
import torch
import torch.nn.functional as F

from scrutable.metrics.perplexity import LocalScorer, PerplexityGradient, PerplexityResult, ScoreRequest
from scrutable.sweep.scorer_actor import ActorScorer
from sweep.test_scorer_actor import _ray, actor  # noqa: F401  (_ray: Ray started once for this module)

pytestmark = pytest.mark.slow  # Ray and its actor
IDS = [(15496, 995, 318), (464,), (40, 588, 257, 3797, 13, 1318)]  # lengths 3, 1, 6
REQUESTS = [
    *(ScoreRequest(token_ids=ids) for ids in IDS),
    ScoreRequest(text="Hello world"),  # re-tokenised: GPT-2's "Hello", " world"
    ScoreRequest(text=""),  # nothing to score: NaN, zero tokens
]
IMPLEMENTATIONS = ["local", "actor"]


@pytest.fixture(scope="module")
def scorers(tiny_gpt2):
    handle = actor("contract")
    yield {"local": LocalScorer(tiny_gpt2), "actor": ActorScorer("contract", "trial-0")}
    ray.kill(handle, no_restart=True)


def perplexity_by_hand(lm, ids):
    """exp of the mean NLL of each token given the start token and the tokens before it."""
    nll = []
    for i, token in enumerate(ids):
        with torch.no_grad():
            logits = lm.model(torch.tensor([[lm.start_token_id, *ids[:i]]])).logits[0, -1]
        nll.append(-F.log_softmax(logits.double(), -1)[token].item())
    return math.exp(sum(nll) / len(nll))


def check_results(results, tiny_gpt2):
    assert isinstance(results, list) and len(results) == len(REQUESTS)
    assert all(isinstance(r, PerplexityResult) for r in results)
    expected_ids = [*IDS, (15496, 995)]
    for result, ids in zip(results, expected_ids, strict=False):
        assert isinstance(result.perplexity, float) and isinstance(result.num_tokens, int)
        assert result.num_tokens == len(ids)
        assert result.perplexity == pytest.approx(perplexity_by_hand(tiny_gpt2, ids), rel=1e-5)
        assert result.mean_nll == pytest.approx(math.log(result.perplexity), rel=1e-6)
    assert [r.retokenized for r in results] == [False, False, False, True, True]
    empty = results[-1]
    assert empty.num_tokens == 0 and math.isnan(empty.perplexity) and math.isnan(empty.mean_nll)


def check_gradients(gradients, tiny_gpt2):
    assert isinstance(gradients, list) and len(gradients) == len(IDS)
    for gradient, ids in zip(gradients, IDS, strict=True):
        assert isinstance(gradient, PerplexityGradient)
        assert isinstance(gradient.onehot_grad, np.ndarray) and gradient.onehot_grad.dtype == np.float32
        assert gradient.onehot_grad.shape == (len(ids), tiny_gpt2.vocab_size)
        assert np.isfinite(gradient.onehot_grad).all() and np.abs(gradient.onehot_grad).sum() > 0
        assert gradient.result.num_tokens == len(ids) and not gradient.result.retokenized
        assert gradient.result.perplexity == pytest.approx(perplexity_by_hand(tiny_gpt2, ids), rel=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_identity_is_the_scorer_models(scorers, implementation, tiny_gpt2):
    scorer = scorers[implementation]
    assert (scorer.name, scorer.vocab_signature) == (tiny_gpt2.name, tiny_gpt2.vocab_signature)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_perplexity_blocking_and_submitted(scorers, implementation, tiny_gpt2):
    scorer = scorers[implementation]
    blocking = scorer.perplexity(REQUESTS)
    check_results(blocking, tiny_gpt2)
    submitted = scorer.submit_perplexity(REQUESTS).result()
    check_results(submitted, tiny_gpt2)
    assert [r.num_tokens for r in submitted] == [r.num_tokens for r in blocking]
    np.testing.assert_allclose([r.perplexity for r in submitted], [r.perplexity for r in blocking], rtol=1e-6)
    assert scorer.perplexity([]) == []


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gradients_blocking_and_submitted(scorers, implementation, tiny_gpt2):
    scorer = scorers[implementation]
    blocking = scorer.perplexity_gradients([list(ids) for ids in IDS])
    check_gradients(blocking, tiny_gpt2)
    submitted = scorer.submit_gradients([list(ids) for ids in IDS]).result()
    check_gradients(submitted, tiny_gpt2)
    for one, other in zip(blocking, submitted, strict=True):
        np.testing.assert_allclose(one.onehot_grad, other.onehot_grad, atol=1e-6)


def test_both_give_the_same_numbers(scorers):
    local, remote = scorers["local"], scorers["actor"]
    values = [scorer.perplexity(REQUESTS) for scorer in (local, remote)]
    assert [(r.num_tokens, r.retokenized) for r in values[0]] == [(r.num_tokens, r.retokenized) for r in values[1]]
    np.testing.assert_allclose(
        [r.perplexity for r in values[0]], [r.perplexity for r in values[1]], rtol=1e-5, equal_nan=True
    )
    gradients = [scorer.perplexity_gradients([list(ids) for ids in IDS]) for scorer in (local, remote)]
    for one, other in zip(*gradients, strict=True):
        assert one.result.perplexity == pytest.approx(other.result.perplexity, rel=1e-5)
        np.testing.assert_allclose(one.onehot_grad, other.onehot_grad, atol=1e-5)
