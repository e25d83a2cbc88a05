"""The scorer's fast path against the plain computation it replaced (issue 19, item 2).

`sequence_perplexities` gathers the target logit and a logsumexp at the scored positions
only, and `onehot_gradients` backpropagates from the embedding rows with the head's
backward written out. The plain path below is the code they replaced (commit 801cefb),
written out here: the full logits, a float32 log-softmax and a gather for values; a float32
one-hot leaf times the embedding matrix, autograd through the whole vocabulary, for
gradients. Both run on the same float32 weights.

Tolerances: perplexities and mean NLLs to 1e-4 relative, as the other perplexity tests;
gradients to 1e-4 of the largest |entry| of each (L, V) matrix. Float32 throughout: the two
paths sum the same terms in another order (other matmul shapes, logsumexp against
log-softmax). Measured (`-s` prints them): tiny-gpt2 <= 9.5e-7 and 3.7e-7, SmolLM2 6.7e-6
and 5.8e-6.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scrutable.metrics.perplexity import LocalScorer, onehot_gradients, sequence_perplexities

PPL_RTOL = 1e-4
GRAD_TOL = 1e-4  # relative to the largest |entry| of each sequence's gradient


def plain_ids(lm, sequences):
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), 1 + longest), int(lm.tokenizer.pad_token_id))
    mask = torch.zeros((len(sequences), longest), dtype=torch.bool)
    ids[:, 0] = lm.start_token_id
    for row, seq in enumerate(sequences):
        ids[row, 1 : 1 + len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = True
    return ids, mask


def plain_perplexities(lm, sequences):
    ids, mask = plain_ids(lm, sequences)
    attention = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1).long()
    with torch.no_grad():
        logits = lm.model(input_ids=ids, attention_mask=attention).logits  # (N, 1+L, V)
    log_probs = F.log_softmax(logits[:, :-1, : lm.vocab_size].float(), dim=-1)
    nll = -log_probs.gather(-1, ids[:, 1:, None])[..., 0] * mask
    return [math.exp(v) for v in (nll.sum(-1) / mask.sum(-1)).tolist()]


def plain_gradients(lm, sequences):
    """(mean NLL, (L, V) gradient) per sequence: one-hot leaf, autograd through everything."""
    ids, mask = plain_ids(lm, sequences)
    onehot = F.one_hot(ids, lm.vocab_size).float().requires_grad_(True)  # (N, 1+L, V)
    inputs = onehot @ lm.embedding_matrix
    attention = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1).long()
    logits = lm.model(inputs_embeds=inputs, attention_mask=attention).logits
    log_probs = F.log_softmax(logits[:, :-1, : lm.vocab_size].float(), dim=-1)
    nll = -(onehot[:, 1:] * log_probs).sum(-1) * mask
    mean_nll = nll.sum(-1) / mask.sum(-1)
    (grad,) = torch.autograd.grad(mean_nll.sum(), onehot)
    return [(mean_nll[r].item(), grad[r, 1 : 1 + len(s)].numpy()) for r, s in enumerate(sequences)]


def check_against_plain(lm, sequences):
    """The largest relative perplexity and gradient differences, after asserting both."""
    fast = sequence_perplexities(lm, sequences)
    plain = plain_perplexities(lm, sequences)
    ppl_diff = max(abs(f - p) / p for (f, _), p in zip(fast, plain, strict=True))
    assert ppl_diff < PPL_RTOL
    grad_diff = 0.0
    for got, (mean_nll, expected) in zip(onehot_gradients(lm, sequences), plain_gradients(lm, sequences), strict=True):
        assert got.result.mean_nll == pytest.approx(mean_nll, rel=PPL_RTOL)
        assert got.onehot_grad.shape == expected.shape and got.onehot_grad.dtype == np.float32
        diff = float(np.abs(got.onehot_grad - expected).max() / np.abs(expected).max())
        assert diff < GRAD_TOL
        grad_diff = max(grad_diff, diff)
    print(f"{lm.name}: max relative perplexity difference {ppl_diff:.2e}, gradient {grad_diff:.2e}")
    return ppl_diff, grad_diff


# Unequal lengths (padding), a length-1 prompt, repeated tokens.
GPT2_PROMPTS = [[15496, 995, 318], [464], [40, 588, 257, 3797, 13, 1318, 1318], [50256, 0, 50000]]


def test_fast_scorer_matches_the_plain_path_on_tiny_gpt2(tiny_gpt2):
    check_against_plain(tiny_gpt2, GPT2_PROMPTS)


def test_fast_scorer_matches_across_head_chunks(tiny_gpt2, monkeypatch):
    """More scored positions than one chunk of logits: chunk boundaries inside a sequence."""
    import scrutable.metrics.perplexity as perplexity

    monkeypatch.setattr(perplexity, "HEAD_CHUNK", 3)
    check_against_plain(tiny_gpt2, GPT2_PROMPTS)


def test_empty_sequences_keep_their_place(tiny_gpt2):
    got = sequence_perplexities(tiny_gpt2, [[], [15496, 995], []])
    assert math.isnan(got[0][0]) and got[0][1] == 0 and math.isnan(got[2][0])
    assert got[1][0] == pytest.approx(plain_perplexities(tiny_gpt2, [[15496, 995]])[0], rel=PPL_RTOL)


def test_local_scorer_batches_give_the_unbatched_answers(tiny_gpt2):
    """max_batch splits a request; each piece is one padded batch through the fast path."""
    batched = LocalScorer(tiny_gpt2, max_batch=2).perplexity_gradients(GPT2_PROMPTS)
    for got, seq in zip(batched, GPT2_PROMPTS, strict=True):
        ((mean_nll, expected),) = plain_gradients(tiny_gpt2, [seq])
        assert got.result.mean_nll == pytest.approx(mean_nll, rel=PPL_RTOL)
        assert np.abs(got.onehot_grad - expected).max() < GRAD_TOL * np.abs(expected).max()


@pytest.mark.slow
@pytest.mark.smollm
def test_fast_scorer_matches_the_plain_path_on_smollm(smollm):
    prompts = [
        smollm.tokenizer(text, add_special_tokens=False)["input_ids"]
        for text in ("The movie was great", "Classify the sentiment of this review:", "x")
    ]
    prompts.append([(7 * j + 13) % 1000 + 2 for j in range(20)])  # arbitrary ids, as PEZ projects
    check_against_plain(smollm, prompts)
