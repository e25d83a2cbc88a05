"""Faithfulness: does the unembedded prompt behave like the soft prompt P?

Three measures (the paper's definitions):
- distance differential: mean over i of the distance from P_i to its nearest token
  embedding (`Unembedding.distance_differential`);
- output differential: over a batch of task inputs, the mean squared difference between
  the output logits with P and with its unembedded tokens, and the share of inputs whose
  top-1 output agrees;
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
    mse: float
    top1_agreement: float


def output_differential_from_logits(soft: torch.Tensor, hard: torch.Tensor) -> OutputDifferential:
    """soft, hard: (B, C) logits for the same inputs."""
    mse = float((soft - hard).pow(2).mean())
    agreement = float((soft.argmax(-1) == hard.argmax(-1)).float().mean())
    return OutputDifferential(mse=mse, top1_agreement=agreement)


@torch.no_grad()
def output_differential(
    task: Task,
    lm: LanguageModel,
    soft_prompt: torch.Tensor,
    token_ids: torch.Tensor,
    batch: Sequence[Any],
) -> OutputDifferential:
    """Compare the task's output logits with `soft_prompt` (L, D) and with `token_ids` (L,)."""
    both = torch.stack([soft_prompt.detach(), lm.embedding_matrix[token_ids]])  # (2, L, D)
    logits = task.output_logits(lm, both, batch)  # (2, B, C)
    return output_differential_from_logits(logits[0], logits[1])


def performance_differential(metric_soft: float, metric_unembedded: float) -> float:
    return abs(metric_soft - metric_unembedded)
