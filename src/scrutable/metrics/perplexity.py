"""Scrutability: perplexity of a prompt's tokens under a scorer LM.

Convention: the scorer's start token (BOS, else EOS: `<|endoftext|>` for GPT-2) is
prepended, so the first prompt token is scored too; the start token itself is not.
For a prompt x_1..x_L,

    perplexity = exp( -(1/L) * sum_i log p(x_i | <s>, x_<i) ).

When the scorer shares the task model's vocabulary (same token-to-id map: distilgpt2 with
gpt2-xl, SmolLM2 with itself) token ids are scored directly. Otherwise the prompt is
decoded to text and re-tokenised by the scorer, and the result says so (`retokenized`):
the number of scored tokens then differs from L.

PEZ's perplexity regulariser needs a gradient. `perplexity_gradients` returns, for each
sequence, d(mean NLL)/d(one-hot token choice) as an (L, V) matrix: both the path through
the input embedding of token i and the path through its use as the target at position i.
Only shared vocabularies can pass such a gradient back to a task model's prompt.

The scorer may run in bfloat16/float16 and on a GPU: ids are built on its device, and the
logsumexp and the mean NLL are taken in float32 (a bfloat16 log-probability of ~-10 is
off by up to 0.03 nats, 3% in perplexity per token).

The LM head is applied here, only at positions that have a target, a chunk of positions at
a time: a value is the target's logit against a logsumexp, with no (N, L, V) log-probability
tensor; a gradient backpropagates from the embedding rows, not from an (N, L, V) one-hot
product (issue 19; tests/metrics/test_scorer_fast.py holds the plain computation it replaced).

`Scorer` is the interface every trainable talks to; `LocalScorer` runs in process, and the
sweep engine puts the same interface in front of one shared Ray actor. Besides the blocking
calls, a scorer takes requests without blocking (`submit_perplexity`, `submit_gradients`)
and returns a `Pending` handle that the loop resolves with `.result()` once it needs the
answer: a loop issues its request first and runs its own task forward meanwhile, so a
shared actor sees the concurrent trials' requests together and batches them. In process
there is nothing to overlap with, so `LocalScorer` computes when the handle is resolved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np
import torch

from scrutable.models import LanguageModel


@dataclass(frozen=True)
class ScoreRequest:
    """A prompt to score: ids already in the scorer's vocabulary, or text to re-tokenise."""

    token_ids: tuple[int, ...] | None = None
    text: str | None = None


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float  # log perplexity
    num_tokens: int
    retokenized: bool


@dataclass(frozen=True)
class PerplexityGradient:
    result: PerplexityResult
    onehot_grad: np.ndarray  # (L, V) d mean_nll / d one-hot token choice


T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Pending(Protocol[T_co]):
    """An answer on its way: `.result()` blocks until it is there."""

    def result(self) -> T_co: ...


class Deferred(Generic[T]):
    """A `Pending` computed in this process on the first `.result()` (and kept)."""

    def __init__(self, compute: Callable[[], T]) -> None:
        self._compute: Callable[[], T] | None = compute
        self._value: T | None = None

    def result(self) -> T:
        if self._compute is not None:
            self._value, self._compute = self._compute(), None
        return self._value  # type: ignore[return-value]  # set above


class Scorer(Protocol):
    name: str
    vocab_signature: str

    def perplexity(self, requests: Sequence[ScoreRequest]) -> list[PerplexityResult]: ...

    def perplexity_gradients(self, token_ids: Sequence[Sequence[int]]) -> list[PerplexityGradient]: ...

    def submit_perplexity(self, requests: Sequence[ScoreRequest]) -> Pending[list[PerplexityResult]]: ...

    def submit_gradients(self, token_ids: Sequence[Sequence[int]]) -> Pending[list[PerplexityGradient]]: ...


def score_request(token_ids: Sequence[int], task_lm: LanguageModel, scorer_signature: str) -> ScoreRequest:
    """Ids pass through when the vocabularies match; otherwise decoded text."""
    if task_lm.vocab_signature == scorer_signature:
        return ScoreRequest(token_ids=tuple(int(t) for t in token_ids))
    return ScoreRequest(text=str(task_lm.tokenizer.decode(list(token_ids))))


def _start_and_pad(lm: LanguageModel, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1 + Lmax) ids with the start token in front, right-padded; (N, Lmax) target mask."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), 1 + longest), int(lm.tokenizer.pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.bool)
    ids[:, 0] = lm.start_token_id
    for row, seq in enumerate(sequences):
        ids[row, 1 : 1 + len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = True
    # Filled row by row on the CPU, then moved once (not one small copy per row).
    return ids.to(lm.device), mask.to(lm.device)


def _last_hidden(lm: LanguageModel, inputs_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, 1+L, D) the body's last hidden states (final norm included), before the LM head."""
    attention = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1).long()
    return lm.model.base_model(inputs_embeds=inputs_embeds, attention_mask=attention, use_cache=False).last_hidden_state


def _head(lm: LanguageModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's (V, D) weight and bias, restricted to the real vocabulary.

    The scorer applies the head itself, to the positions that have a target only (not the
    last one, not padding). Heads that rescale or cap logits are refused, not mis-scored."""
    config = lm.model.config
    for field in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, field, None) not in (None, 1, 1.0):
            raise NotImplementedError(f"{lm.name}: a head with {field} is not supported by the scorer")
    head = lm.model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    return head.weight[: lm.vocab_size], None if bias is None else bias[: lm.vocab_size]


# Positions whose (rows, V) logits are made at once. The head's weight (49,152 x 576 floats,
# 113 MB) is streamed from memory once per chunk, so small chunks starve the matmul (64 rows
# reached 0.58-0.66 of this CPU's matmul peak, 256 rows 0.67-0.84); 256 x 49,152 float32
# logits are 50 MB, which bounds the memory whatever N x L. The chunk buffers are allocated
# once per call and reused: a fresh 50 MB tensor per chunk comes from mmap and is paid again
# in page faults (a (256, V) log_softmax took 170 ms that way, 30 ms in a warm buffer).
HEAD_CHUNK = 256


def _logits_into(
    out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """(c, V) head logits of (c, D) hidden states, written into `out` (no allocation)."""
    if bias is None:
        return torch.mm(hidden, weight.T, out=out)
    return torch.addmm(bias, hidden, weight.T, out=out)


def _target_nll(lm: LanguageModel, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(M,) float32 NLL of each target given its (M, D) hidden state: logsumexp minus the
    target's logit, in place in each chunk's logits (no (M, V) log-probabilities)."""
    weight, bias = _head(lm)
    nll = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    buffer = hidden.new_empty(min(HEAD_CHUNK, len(targets)), len(weight))  # (c, V)
    for start in range(0, len(targets), HEAD_CHUNK):
        rows = slice(start, start + HEAD_CHUNK)
        logits = _logits_into(buffer[: len(targets[rows])], hidden[rows], weight, bias).float()  # (c, V)
        top = logits.amax(-1, keepdim=True)  # (c, 1) for a stable exp
        target = logits.gather(1, targets[rows, None])[:, 0] - top[:, 0]
        log_sum = logits.sub_(top).exp_().sum(-1).log_()  # logsumexp - top, overwriting the logits
        nll[rows] = log_sum - target
    return nll


@torch.no_grad()
def sequence_perplexities(lm: LanguageModel, sequences: Sequence[Sequence[int]]) -> list[tuple[float, int]]:
    """(perplexity, num_tokens) per id sequence under `lm`, with the start-token convention."""
    scored = [(i, s) for i, s in enumerate(sequences) if len(s) > 0]
    out: list[tuple[float, int]] = [(float("nan"), 0)] * len(sequences)
    if not scored:
        return out
    ids, mask = _start_and_pad(lm, [s for _, s in scored])
    hidden = _last_hidden(lm, lm.model.get_input_embeddings()(ids), mask)  # (N, 1+L, D)
    # Position i predicts ids[:, i+1]: only real targets reach the head (M = mask.sum()).
    nll = _target_nll(lm, hidden[:, :-1][mask], ids[:, 1:][mask])  # (M,)
    rows = torch.arange(len(scored), device=mask.device)[:, None].expand_as(mask)[mask]  # (M,) sequence of each
    mean_nll = torch.zeros(len(scored), device=nll.device).index_add_(0, rows, nll) / mask.sum(-1)
    for (index, seq), value in zip(scored, mean_nll.tolist(), strict=True):
        out[index] = (math.exp(value), len(seq))
    return out


class LocalScorer:
    """The scorer LM in this process: exact, unbatched across trials."""

    def __init__(self, lm: LanguageModel, max_batch: int = 32) -> None:
        self.lm = lm
        self.name = lm.name
        self.vocab_signature = lm.vocab_signature
        self.max_batch = max_batch

    def perplexity(self, requests: Sequence[ScoreRequest]) -> list[PerplexityResult]:
        sequences = [self._ids(r) for r in requests]
        results: list[PerplexityResult] = []
        for start in range(0, len(sequences), self.max_batch):
            chunk = sequences[start : start + self.max_batch]
            for (ppl, count), req in zip(sequence_perplexities(self.lm, chunk), requests[start:], strict=False):
                results.append(
                    PerplexityResult(ppl, math.log(ppl) if count else float("nan"), count, req.token_ids is None)
                )
        return results

    def perplexity_gradients(self, token_ids: Sequence[Sequence[int]]) -> list[PerplexityGradient]:
        results: list[PerplexityGradient] = []
        for start in range(0, len(token_ids), self.max_batch):
            results.extend(onehot_gradients(self.lm, token_ids[start : start + self.max_batch]))
        return results

    def submit_perplexity(self, requests: Sequence[ScoreRequest]) -> Pending[list[PerplexityResult]]:
        requests = list(requests)
        return Deferred(lambda: self.perplexity(requests))

    def submit_gradients(self, token_ids: Sequence[Sequence[int]]) -> Pending[list[PerplexityGradient]]:
        token_ids = [list(ids) for ids in token_ids]
        return Deferred(lambda: self.perplexity_gradients(token_ids))

    def _ids(self, request: ScoreRequest) -> list[int]:
        if request.token_ids is not None:
            return list(request.token_ids)
        return list(self.lm.tokenizer(request.text or "", add_special_tokens=False)["input_ids"])


def onehot_gradients(lm: LanguageModel, sequences: Sequence[Sequence[int]]) -> list[PerplexityGradient]:
    """Mean NLL of each sequence and its gradient w.r.t. the one-hot token choices (L, V).

    With one-hot rows o_j, inputs x_j = o_j E and NLL_i = -<o_{i+1}, log p_i>, the gradient
    has two paths (w = 1 / L per sequence):

        dNLL/do_j = E (dNLL/dx_j)  -  w log p_{j-1}
                    input path        target path

    so autograd runs from the embedding rows x (N, 1+L, D), not from an (N, 1+L, V) one-hot
    product; the head's backward is written out (dlogits = w (softmax - onehot(target))), so
    each chunk of logits is made once and its log-probabilities are the target path; and
    E dNLL/dx is only formed at the L scored positions, added onto it.
    """
    ids, mask = _start_and_pad(lm, sequences)
    embedding = lm.embedding_matrix  # (V, D)
    weight, bias = _head(lm)
    inputs = embedding[ids].detach().requires_grad_(True)  # (N, 1+L, D) the rows a one-hot choice picks
    hidden = _last_hidden(lm, inputs, mask)[:, :-1][mask]  # (M, D) positions with a target
    targets = ids[:, 1:][mask]  # (M,)
    rows = torch.arange(len(sequences), device=mask.device)[:, None].expand_as(mask)[mask]  # (M,)
    w = (1.0 / mask.sum(-1).float())[rows]  # (M,) each position's weight in its sequence's mean

    grad = torch.empty(len(targets), lm.vocab_size, dtype=torch.float32, device=hidden.device)  # (M, V)
    nll = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    d_hidden = torch.empty_like(hidden)  # (M, D)
    flat = hidden.detach()
    logits_buffer = flat.new_empty(min(HEAD_CHUNK, len(targets)), lm.vocab_size)  # (c, V) reused
    probs_buffer = torch.empty_like(logits_buffer, dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, len(targets), HEAD_CHUNK):
            chunk = slice(start, start + HEAD_CHUNK)
            size = len(targets[chunk])
            index = torch.arange(size, device=targets.device)
            logits = _logits_into(logits_buffer[:size], flat[chunk], weight, bias).float()  # (c, V)
            logits.sub_(logits.amax(-1, keepdim=True))  # stable exp
            probs = torch.exp(logits, out=probs_buffer[:size])
            total = probs.sum(-1, keepdim=True)  # (c, 1)
            log_probs = logits.sub_(total.log())  # in place: the log-softmax, an output (target path)
            nll[chunk] = -log_probs[index, targets[chunk]]
            d_logits = probs.mul_(w[chunk, None] / total)  # w (softmax - onehot(target))
            d_logits[index, targets[chunk]] -= w[chunk]
            d_hidden[chunk] = d_logits.to(weight.dtype) @ weight
            torch.mul(log_probs, -w[chunk, None], out=grad[chunk])  # the target path
    hidden.backward(d_hidden)
    assert inputs.grad is not None
    d_inputs = inputs.grad[:, 1:][mask]  # (M, D) the input path, scored positions only
    if embedding.dtype == grad.dtype:
        grad.addmm_(d_inputs, embedding.T)
    else:  # the one-hot product ran in the model's dtype: so does its gradient
        grad.add_((d_inputs @ embedding.T).float())
    mean_nll = torch.zeros(len(sequences), device=nll.device).index_add_(0, rows, nll) / mask.sum(-1)
    out = []
    offsets = [0, *np.cumsum([len(s) for s in sequences]).tolist()]
    grad_np = grad.cpu().numpy()
    for row, seq in enumerate(sequences):
        value = float(mean_nll[row])
        result = PerplexityResult(math.exp(value), value, len(seq), retokenized=False)
        out.append(PerplexityGradient(result, grad_np[offsets[row] : offsets[row + 1]]))
    return out
