"""The task protocol: what an optimizer or metric may ask of a task.

A task owns its data splits and knows where the prompt goes in a model input. Prompts
arrive as embeddings, (L, D) or a batch (P, L, D); hard prompts are passed as the
embeddings of their tokens (`LanguageModel.embedding_matrix[ids]`), so one code path
serves soft prompts, PEZ projections and RLPrompt samples.

`evaluate_prompts(task, lm, prompts, split)` evaluates several prompts: in one pass over each
batch where the task can (`EvaluatesTogether`, the classification tasks), one by one where it
cannot (Yelp's generation).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from scrutable.models import LanguageModel
from scrutable.tasks.data import Split as Split  # its home is torch-free


@dataclass(frozen=True)
class Evaluated:
    """One prompt's score on (part of) a split."""

    metric: float  # the task metric (accuracy, joint score): what the task is judged by
    objective: float  # a continuous score of the same outputs, higher is better (`metrics/keys.py`)


@dataclass(frozen=True)
class RewardResult:
    rewards: torch.Tensor  # (P,) one scalar per prompt, higher is better
    metric: torch.Tensor  # (P,) the task metric on the same examples


class Task(Protocol):
    name: str
    metric_name: str  # e.g. "accuracy"; reported as `task/<metric_name>`
    supports_loss: bool  # False where no differentiable loss exists (style transfer)

    def examples(self, split: Split | str) -> Sequence[Any]:
        """All examples of a split, loaded once."""
        ...

    def loss(self, lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        """Differentiable mean task loss for one prompt (L, D) on a batch."""
        ...

    def output_logits(self, lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        """(P, B, C) logits the task reads its answer from (C answer tokens, or the vocabulary)."""
        ...

    def vocab_logits(self, lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        """(P, B, V) logits over the whole vocabulary at the output position (the output differential)."""
        ...

    def evaluate(
        self,
        lm: LanguageModel,
        prompt_embeds: torch.Tensor,
        split: Split | str,
        *,
        limit: int | None = None,
        batch_size: int = 16,
    ) -> Evaluated:
        """The task metric and objective of one prompt (L, D) on (the first `limit` examples of) a split."""
        ...

    def reward(self, lm: LanguageModel, prompt_ids: torch.Tensor, batch: Sequence[Any]) -> RewardResult:
        """RLPrompt's reward for P hard prompts (P, L) on a batch, all scored at once."""
        ...


@runtime_checkable
class EvaluatesTogether(Protocol):
    """A task that scores several prompts in one pass over each batch of a split."""

    def evaluate_prompts(
        self,
        lm: LanguageModel,
        prompts: Sequence[torch.Tensor],
        split: Split | str,
        *,
        limit: int | None = None,
        batch_size: int = 16,
    ) -> list[Evaluated]:
        """`Task.evaluate` of each prompt (L, D), in order."""
        ...


def evaluate_prompts(
    task: Task,
    lm: LanguageModel,
    prompts: Sequence[torch.Tensor],
    split: Split | str,
    *,
    limit: int | None = None,
    batch_size: int = 16,
) -> list[Evaluated]:
    """`task.evaluate` of each prompt (L, D), in order: together where the task can, else
    one by one. The results are the same either way (to float error)."""
    if isinstance(task, EvaluatesTogether):
        return task.evaluate_prompts(lm, prompts, split, limit=limit, batch_size=batch_size)
    return [task.evaluate(lm, prompt, split, limit=limit, batch_size=batch_size) for prompt in prompts]


def sample_batch(examples: Sequence[Any], batch_size: int, generator: torch.Generator) -> list[Any]:
    """A random batch without replacement (the whole split if it is smaller)."""
    order = torch.randperm(len(examples), generator=generator)[:batch_size]
    return [examples[int(i)] for i in order]


def subset(examples: Sequence[Any], limit: int | None) -> list[Any]:
    """The first `limit` examples of a fixed shuffle: files are often sorted by label, so a
    plain prefix would be one class only. The same `limit` always gives the same subset."""
    if limit is None or limit >= len(examples):
        return list(examples)
    chosen = sorted(random.Random(0).sample(range(len(examples)), limit))
    return [examples[i] for i in chosen]
