"""Faithfulness: does the unembedded prompt behave like the soft prompt P?

Three measures (the paper's definitions):
- distance differential: mean over i of the distance from P_i to its nearest token
  embedding (`Unembedding.distance_differential`);
- output differential: over a batch of task inputs, the mean squared difference between
  the output logits with P and with its unembedded tokens over the *whole vocabulary*,
  averaged over the output positions (one per input: where the answer is read); also the
  same restricted to the task's answer tokens (`mse_verbalizer`, equal to the full one for
  tasks whose answer is any token) and the share of inputs whose predicted answer agrees;
- performance differential: |metric(P) - metric(unembedded P)|.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scrutable.models import LanguageModel
from scrutable.tasks.base import Task


@dataclass(frozen=True)
class OutputDifferential:
    mse: float  # whole vocabulary
    mse_verbalizer: float  # the task's answer tokens only
    top1_agreement: float  # same predicted answer


def output_differential_from_logits(
    soft: torch.Tensor, hard: torch.Tensor, answer_ids: Sequence[int] | None = None
) -> OutputDifferential:
    """soft, hard: (B, V) logits for the same inputs; `answer_ids` the task's answer tokens
    (None: any token is an answer, as in generation)."""
    soft, hard = soft.float(), hard.float()
    mse = float((soft - hard).pow(2).mean())
    if answer_ids is not None:
        soft, hard = soft[:, list(answer_ids)], hard[:, list(answer_ids)]
    agreement = float((soft.argmax(-1) == hard.argmax(-1)).float().mean())
    return OutputDifferential(mse=mse, mse_verbalizer=float((soft - hard).pow(2).mean()), top1_agreement=agreement)


@torch.no_grad()
def output_differential(
    task: Task,
    lm: LanguageModel,
    soft_prompt: torch.Tensor,
    token_ids: torch.Tensor,
    batch: Sequence[Any],
) -> OutputDifferential:
    """Compare the outputs with `soft_prompt` (L, D) and with `token_ids` (L,)."""
    hard = lm.embedding_matrix[token_ids.to(lm.device)]  # (L, D)
    both = torch.stack([soft_prompt.detach().to(device=lm.device, dtype=hard.dtype), hard])  # (2, L, D)
    logits = task.vocab_logits(lm, both, batch)  # (2, B, V)
    answers = task.verbalizer_ids(lm) if hasattr(task, "verbalizer_ids") else None
    return output_differential_from_logits(logits[0], logits[1], answers)


def performance_differential(metric_soft: float, metric_unembedded: float) -> float:
    return abs(metric_soft - metric_unembedded)
