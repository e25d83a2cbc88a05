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
log-softmax and the mean NLL are taken in float32 (a bfloat16 log-probability of ~-10 is
off by up to 0.03 nats, 3% in perplexity per token).

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
import torch.nn.functional as F

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


def _token_nll(lm: LanguageModel, inputs_embeds: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, Lmax) NLL of ids[:, 1:] given their prefix; zero where masked."""
    attention = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1).long()
    logits = lm.model(inputs_embeds=inputs_embeds, attention_mask=attention).logits  # (N, 1+L, V)
    log_probs = F.log_softmax(logits[:, :-1, : lm.vocab_size].float(), dim=-1)  # (N, L, V)
    nll = -log_probs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return nll * mask


@torch.no_grad()
def sequence_perplexities(lm: LanguageModel, sequences: Sequence[Sequence[int]]) -> list[tuple[float, int]]:
    """(perplexity, num_tokens) per id sequence under `lm`, with the start-token convention."""
    scored = [(i, s) for i, s in enumerate(sequences) if len(s) > 0]
    out: list[tuple[float, int]] = [(float("nan"), 0)] * len(sequences)
    if not scored:
        return out
    ids, mask = _start_and_pad(lm, [s for _, s in scored])
    nll = _token_nll(lm, lm.model.get_input_embeddings()(ids), ids, mask)
    mean_nll = nll.sum(-1) / mask.sum(-1)
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
    """Mean NLL of each sequence and its gradient w.r.t. the one-hot token choices (L, V)."""
    ids, mask = _start_and_pad(lm, sequences)
    embedding = lm.embedding_matrix  # (V, D)
    # The one-hot leaf is float32 so G comes back in float32; the model sees its own dtype.
    onehot = F.one_hot(ids, num_classes=lm.vocab_size).float().requires_grad_(True)
    inputs_embeds = onehot.to(embedding.dtype) @ embedding  # (N, 1+L, D), the input path
    logits = lm.model(
        inputs_embeds=inputs_embeds, attention_mask=torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1).long()
    ).logits
    log_probs = F.log_softmax(logits[:, :-1, : lm.vocab_size].float(), dim=-1)  # (N, L, V)
    # The target path: NLL_i = -<onehot_i, log_probs_i>, differentiable in onehot_i as well.
    nll = -(onehot[:, 1:] * log_probs).sum(-1) * mask  # (N, L)
    mean_nll = nll.sum(-1) / mask.sum(-1)  # (N,)
    (grad,) = torch.autograd.grad(mean_nll.sum(), onehot)
    out = []
    for row, seq in enumerate(sequences):
        value = float(mean_nll[row].detach())
        result = PerplexityResult(math.exp(value), value, len(seq), retokenized=False)
        out.append(PerplexityGradient(result, grad[row, 1 : 1 + len(seq)].cpu().numpy()))
    return out
