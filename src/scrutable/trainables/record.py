"""One evaluated prompt, as a typed record, and the rule that keeps the best one.

Every evaluation of a training loop measures exactly one prompt (its interpretability
card on dev) and turns it into a `PromptRecord`: which prompt (token ids, text, soft or
hard, the soft vectors), when (the step), and every metric measured for it. The best
record so far is kept whole and replaced whole, so the final report, MLflow's final card,
the Optuna values and the Pareto row of a trial all describe one prompt; the final
record adds the same prompt's test-split numbers (`with_test`).

Best = highest dev objective (continuous: mean log-probability of the correct answer, or
Yelp's joint score), ties broken by the dev metric, then by the later step, so the choice
is deterministic and a prompt that trained longer wins an exact tie. Only prompts
evaluated after at least one training step compete; the untrained start never does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from scrutable.card import InterpretabilityCard
from scrutable.metrics import keys

TEST_KEYS = (keys.TASK_TEST, keys.TASK_TEST_UNEMBEDDED, keys.TASK_TEST_OBJECTIVE)


@dataclass(frozen=True)
class PromptRecord:
    step: int  # the training step after which this prompt was evaluated
    is_soft: bool
    token_ids: tuple[int, ...]  # the hard tokens, or a soft prompt's unembedded tokens
    text: str  # `token_ids` decoded
    metrics: Mapping[str, float]  # namespaced keys, every one measured on this prompt
    vectors: torch.Tensor | None = field(default=None, repr=False)  # (L, D), soft prompts only

    @classmethod
    def from_card(cls, card: InterpretabilityCard, step: int, vectors: torch.Tensor | None) -> PromptRecord:
        if card.is_soft and vectors is None:
            raise ValueError("a soft prompt's record keeps its vectors")
        return cls(
            step=step,
            is_soft=card.is_soft,
            token_ids=tuple(card.token_ids),
            text=card.unembedded_text,
            metrics=card.metrics(split_prefix=card.split),
            vectors=None if vectors is None or not card.is_soft else vectors.detach().clone(),
        )

    def rank(self) -> tuple[float, float, int]:
        """Sort key, larger is better (NaN objectives rank last)."""

        def finite(value: float | None) -> float:
            return value if value is not None and math.isfinite(value) else -math.inf

        return finite(self.metrics.get(keys.TASK_DEV_OBJECTIVE)), finite(self.metrics.get(keys.TASK_DEV)), self.step

    def embeds(self, embedding_matrix: torch.Tensor) -> torch.Tensor:
        """(L, D): the soft vectors, or the hard tokens' embeddings."""
        if self.vectors is not None:
            return self.vectors
        return embedding_matrix[torch.tensor(self.token_ids, dtype=torch.long, device=embedding_matrix.device)]

    def with_test(self, card: InterpretabilityCard) -> PromptRecord:
        """This record plus the task numbers of the same prompt on the test split."""
        if card.split != "test" or tuple(card.token_ids) != self.token_ids or card.is_soft != self.is_soft:
            raise ValueError("with_test needs the test card of this record's own prompt")
        test = card.metrics(split_prefix="test")
        return replace(self, metrics={**self.metrics, **{k: test[k] for k in TEST_KEYS}})

    def row(self, *, is_best: bool) -> dict[str, Any]:
        """The record as one report row: its metrics and which prompt they describe."""
        return {
            **self.metrics,
            keys.PROMPT_TEXT: self.text,
            keys.PROMPT_TOKEN_IDS: list(self.token_ids),
            keys.PROMPT_IS_SOFT: float(self.is_soft),
            keys.PROMPT_STEP: self.step,
            keys.PROMPT_IS_BEST: float(is_best),
        }

    def to_state(self) -> dict[str, Any]:
        """Plain values and one tensor: loadable with `torch.load(weights_only=True)`."""
        return {
            "step": self.step,
            "is_soft": self.is_soft,
            "token_ids": list(self.token_ids),
            "text": self.text,
            "metrics": dict(self.metrics),
            "vectors": None if self.vectors is None else self.vectors.clone(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PromptRecord:
        return cls(
            step=int(state["step"]),
            is_soft=bool(state["is_soft"]),
            token_ids=tuple(int(t) for t in state["token_ids"]),
            text=str(state["text"]),
            metrics={str(k): float(v) for k, v in state["metrics"].items()},
            vectors=state["vectors"],
        )


def better(candidate: PromptRecord, incumbent: PromptRecord | None) -> bool:
    return incumbent is None or candidate.rank() > incumbent.rank()
