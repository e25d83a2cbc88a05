"""The interpretability card: everything the paper measures about one prompt.

For a prompt P (soft vectors, or the embeddings of hard tokens) on a task:
unembedded tokens with per-token distances, distance / output / performance
differentials, the task metric and objective with P and with its unembedded tokens, and
the perplexity of the unembedded tokens under the scorer.

The distance differential is reported in both distances (Euclidean and cosine), whatever
distance unembeds the prompt, so every method of a sweep reports the same numbers. Soft
vectors far outside the vocabulary's norms make every distance large and the nearest
token arbitrary: the card gives the prompt's mean norm next to the vocabulary's and says
when it lies outside the vocabulary's range.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from scrutable.metrics import keys
from scrutable.metrics.faithfulness import OutputDifferential, output_differential, performance_differential
from scrutable.metrics.perplexity import Scorer, score_request
from scrutable.metrics.unembed import Distance, Unembedding, nearest_tokens
from scrutable.models import LanguageModel
from scrutable.tasks.base import Split, Task, evaluate_prompts, subset


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
    distance_kind: str  # the distance that unembeds the prompt (and `tokens[].distance`)
    is_soft: bool
    tokens: list[TokenRow]
    unembedded_text: str
    distance_differential: float  # in `distance_kind`
    distance_euclidean: float
    distance_cosine: float
    output_mse: float  # whole vocabulary
    output_mse_verbalizer: float
    top1_agreement: float
    metric_name: str
    metric_soft: float  # the prompt as given (soft, or the hard tokens themselves)
    metric_unembedded: float
    objective_soft: float
    objective_unembedded: float
    performance_differential: float
    prompt_norm: float
    vocab_norm: float
    vocab_norm_range: tuple[float, float]
    perplexity: float
    perplexity_tokens: int
    retokenized: bool
    examples: int
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def token_ids(self) -> list[int]:
        return [row.token_id for row in self.tokens]

    @property
    def norm_in_range(self) -> bool:
        low, high = self.vocab_norm_range
        return low <= self.prompt_norm <= high

    def metrics(self, split_prefix: str = "dev") -> dict[str, float]:
        """The card as namespaced metric keys (`keys.py`); task keys on `split_prefix`."""
        on_dev = split_prefix == "dev"
        out = {
            keys.TASK_DEV if on_dev else keys.TASK_TEST: self.metric_soft,
            keys.TASK_DEV_UNEMBEDDED if on_dev else keys.TASK_TEST_UNEMBEDDED: self.metric_unembedded,
            keys.TASK_DEV_OBJECTIVE if on_dev else keys.TASK_TEST_OBJECTIVE: self.objective_soft,
            keys.PERPLEXITY: self.perplexity,
            keys.LOG_PERPLEXITY: math.log(self.perplexity) if self.perplexity > 0 else float("nan"),
            keys.DISTANCE_EUCLIDEAN: self.distance_euclidean,
            keys.DISTANCE_COSINE: self.distance_cosine,
            keys.OUTPUT_MSE: self.output_mse,
            keys.OUTPUT_MSE_VERBALIZER: self.output_mse_verbalizer,
            keys.TOP1_AGREEMENT: self.top1_agreement,
            keys.PERFORMANCE_DIFF: self.performance_differential,
            keys.PROMPT_NORM: self.prompt_norm,
            keys.VOCAB_NORM: self.vocab_norm,
        }
        if on_dev:
            out[keys.TASK_DEV_OBJECTIVE_UNEMBEDDED] = self.objective_unembedded
        return out

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
            f"  distance differential      {self.distance_euclidean:.4f} euclidean, {self.distance_cosine:.4f} cosine",
            f"  output differential (MSE)  {self.output_mse:.4f} whole vocabulary, "
            f"{self.output_mse_verbalizer:.4f} answer tokens",
            f"  top-1 agreement            {self.top1_agreement:.3f}",
            f"  performance differential   {self.performance_differential:.4f}",
            f"  prompt vector norm         {self.prompt_norm:.3f} (vocabulary mean {self.vocab_norm:.3f}, "
            f"range {self.vocab_norm_range[0]:.3f}-{self.vocab_norm_range[1]:.3f})",
            "scrutability",
            f"  perplexity                 {self.perplexity:.2f}  over {self.perplexity_tokens} scorer tokens{retok}",
            f"task {self.metric_name}",
            f"  with the prompt            {self.metric_soft:.4f}",
            f"  with its unembedded tokens {self.metric_unembedded:.4f}",
            "objective (mean log-probability of the answer, or the continuous score)",
            f"  with the prompt            {self.objective_soft:.4f}",
            f"  with its unembedded tokens {self.objective_unembedded:.4f}",
        ]
        if not self.norm_in_range:
            lines.append(
                "note: the prompt vectors' norm lies outside the vocabulary's range, so every token is far "
                "and the unembedding is arbitrary: lower learning_rate or add weight_decay"
            )
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
    token_ids: torch.Tensor | None = None,
) -> InterpretabilityCard:
    """Measure `prompt` (L, D) on `task`; a hard prompt skips the duplicate evaluation.

    `token_ids` (L,) names a hard prompt's tokens (PEZ's projection, RLPrompt's samples), so
    the card describes exactly those tokens even where two vocabulary rows are identical."""
    embeddings = lm.embedding_matrix
    prompt = prompt.detach().to(embeddings.device)  # a prompt restored from a checkpoint is on the CPU
    # One vocabulary-wide search per distance: both differentials are reported, one unembeds.
    searched = {kind: nearest_tokens(prompt, embeddings, kind) for kind in Distance}
    by_distance = {kind: found.distance_differential for kind, found in searched.items()}
    unembedded = searched[Distance(distance)]
    if token_ids is not None:
        if is_soft:
            raise ValueError("token_ids names a hard prompt's tokens: pass is_soft=False")
        token_ids = token_ids.to(embeddings.device)
        unembedded = Unembedding(token_ids=token_ids, distances=torch.zeros(len(token_ids), device=embeddings.device))
    ids = unembedded.token_ids
    perplexity = scorer.submit_perplexity([score_request(ids.tolist(), lm, scorer.vocab_signature)])  # runs meanwhile
    if is_soft:  # both prompts in one pass over the split: each input is encoded once for the two
        soft, hard = evaluate_prompts(task, lm, [prompt, embeddings[ids]], split, limit=limit, batch_size=batch_size)
        probe = subset(task.examples(split), output_examples)
        output = output_differential(task, lm, prompt, ids, probe)
    else:  # the prompt is its own unembedding: evaluated once
        hard = task.evaluate(lm, embeddings[ids], split, limit=limit, batch_size=batch_size)
        soft, output = hard, OutputDifferential(mse=0.0, mse_verbalizer=0.0, top1_agreement=1.0)
    ppl = perplexity.result()[0]
    tokenizer = lm.tokenizer
    rows = [
        TokenRow(int(t), str(tokenizer.decode([int(t)])), float(d))
        for t, d in zip(ids.tolist(), unembedded.distances.tolist(), strict=True)
    ]
    vocab_norms = embeddings.float().norm(dim=-1)  # (V,)
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
        distance_euclidean=by_distance[Distance.EUCLIDEAN],
        distance_cosine=by_distance[Distance.COSINE],
        output_mse=output.mse,
        output_mse_verbalizer=output.mse_verbalizer,
        top1_agreement=output.top1_agreement,
        metric_name=task.metric_name,
        metric_soft=soft.metric,
        metric_unembedded=hard.metric,
        objective_soft=soft.objective,
        objective_unembedded=hard.objective,
        performance_differential=performance_differential(soft.metric, hard.metric),
        prompt_norm=float(prompt.float().norm(dim=-1).mean()),
        vocab_norm=float(vocab_norms.mean()),
        vocab_norm_range=(float(vocab_norms.min()), float(vocab_norms.max())),
        perplexity=ppl.perplexity,
        perplexity_tokens=ppl.num_tokens,
        retokenized=ppl.retokenized,
        examples=len(subset(task.examples(split), limit)),
    )
