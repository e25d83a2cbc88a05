"""The interpretability card: everything the paper measures about one prompt.

For a prompt P (soft vectors, or the embeddings of hard tokens) on a task:
unembedded tokens with per-token distances, distance / output / performance
differentials, the task metric with P and with its unembedded tokens, and the
perplexity of the unembedded tokens under the scorer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from scrutable.metrics import keys
from scrutable.metrics.faithfulness import output_differential, performance_differential
from scrutable.metrics.perplexity import Scorer, score_request
from scrutable.metrics.unembed import Distance, nearest_tokens
from scrutable.models import LanguageModel
from scrutable.tasks.base import Split, Task, subset


@dataclass(frozen=True)
class TokenRow:
    token_id: int
    text: str
    distance: float


@dataclass(frozen=True)
class InterpretabilityCard:
    task: str
    model: str
    scorer: str
    split: str
    distance_kind: str
    is_soft: bool
    tokens: list[TokenRow]
    unembedded_text: str
    distance_differential: float
    output_mse: float
    top1_agreement: float
    metric_name: str
    metric_soft: float
    metric_unembedded: float
    performance_differential: float
    perplexity: float
    perplexity_tokens: int
    retokenized: bool
    examples: int
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def token_ids(self) -> list[int]:
        return [row.token_id for row in self.tokens]

    def metrics(self, split_prefix: str = "dev") -> dict[str, float]:
        """The card as namespaced metric keys (`keys.py`)."""
        on_dev = split_prefix == "dev"
        return {
            keys.TASK_DEV if on_dev else keys.TASK_TEST: self.metric_soft,
            keys.TASK_DEV_UNEMBEDDED if on_dev else keys.TASK_TEST_UNEMBEDDED: self.metric_unembedded,
            keys.PERPLEXITY: self.perplexity,
            keys.LOG_PERPLEXITY: math.log(self.perplexity) if self.perplexity > 0 else float("nan"),
            keys.DISTANCE: self.distance_differential,
            keys.OUTPUT_MSE: self.output_mse,
            keys.TOP1_AGREEMENT: self.top1_agreement,
            keys.PERFORMANCE_DIFF: self.performance_differential,
        }

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def render(self) -> str:
        lines = [
            f"Interpretability card — task {self.task} ({self.split}, {self.examples} examples), "
            f"model {self.model}, scorer {self.scorer}",
            f"prompt ({'soft' if self.is_soft else 'hard'}, {len(self.tokens)} vectors), "
            f"unembedded by {self.distance_kind} distance: {self.unembedded_text!r}",
            "",
            f"  {'#':>3}  {'token id':>8}  {'token':<20} {'distance':>9}",
        ]
        for index, row in enumerate(self.tokens):
            lines.append(f"  {index:>3}  {row.token_id:>8}  {row.text!r:<20} {row.distance:>9.4f}")
        retok = " (decoded and re-tokenised: vocabularies differ)" if self.retokenized else ""
        lines += [
            "",
            "faithfulness",
            f"  distance differential      {self.distance_differential:.4f}",
            f"  output differential (MSE)  {self.output_mse:.4f}",
            f"  top-1 agreement            {self.top1_agreement:.3f}",
            f"  performance differential   {self.performance_differential:.4f}",
            "scrutability",
            f"  perplexity                 {self.perplexity:.2f}  over {self.perplexity_tokens} scorer tokens{retok}",
            f"task {self.metric_name}",
            f"  with the prompt            {self.metric_soft:.4f}",
            f"  with its unembedded tokens {self.metric_unembedded:.4f}",
        ]
        lines += [f"  {name:<26} {value:.4f}" for name, value in self.extra.items()]
        return "\n".join(lines)


def build_card(
    task: Task,
    lm: LanguageModel,
    scorer: Scorer,
    prompt: torch.Tensor,
    *,
    is_soft: bool,
    split: Split | str = Split.DEV,
    limit: int | None = None,
    distance: Distance | str = Distance.EUCLIDEAN,
    output_examples: int = 32,
    batch_size: int = 16,
) -> InterpretabilityCard:
    """Measure `prompt` (L, D) on `task`; a hard prompt skips the duplicate evaluation."""
    prompt = prompt.detach()
    unembedded = nearest_tokens(prompt, lm.embedding_matrix, distance)
    ids = unembedded.token_ids
    hard_embeds = lm.embedding_matrix[ids]
    metric_unembedded = task.evaluate(lm, hard_embeds, split, limit=limit, batch_size=batch_size)
    if is_soft:
        metric_soft = task.evaluate(lm, prompt, split, limit=limit, batch_size=batch_size)
        probe = subset(task.examples(split), output_examples)
        output = output_differential(task, lm, prompt, ids, probe)
        output_mse, agreement = output.mse, output.top1_agreement
    else:
        metric_soft, output_mse, agreement = metric_unembedded, 0.0, 1.0
    ppl = scorer.perplexity([score_request(ids.tolist(), lm, scorer.vocab_signature)])[0]
    tokenizer = lm.tokenizer
    rows = [
        TokenRow(int(t), str(tokenizer.decode([int(t)])), float(d))
        for t, d in zip(ids.tolist(), unembedded.distances.tolist(), strict=True)
    ]
    return InterpretabilityCard(
        task=task.name,
        model=lm.name,
        scorer=scorer.name,
        split=str(Split(split)),
        distance_kind=str(Distance(distance)),
        is_soft=is_soft,
        tokens=rows,
        unembedded_text=str(tokenizer.decode(ids.tolist())),
        distance_differential=unembedded.distance_differential,
        output_mse=output_mse,
        top1_agreement=agreement,
        metric_name=task.metric_name,
        metric_soft=metric_soft,
        metric_unembedded=metric_unembedded,
        performance_differential=performance_differential(metric_soft, metric_unembedded),
        perplexity=ppl.perplexity,
        perplexity_tokens=ppl.num_tokens,
        retokenized=ppl.retokenized,
        examples=len(subset(task.examples(split), limit)),
    )
