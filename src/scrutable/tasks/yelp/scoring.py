"""Scores of Yelp rewrites: content, style, their joint score, and BLEU.

Each in [0, 1] per output (an empty rewrite scores 0 on both):
- content = max(0, cosine) of all-MiniLM-L6-v2 sentence embeddings of input and output
  (the reference uses BERTScore F1 of roberta-large, which is not available offline);
- style = probability of the target sentiment under the style classifier (`yelp/style.py`);
- joint = (content + style) / 2, the task metric `joint_score` (RLPrompt's reward / 100);
- BLEU (sacrebleu, 0-100) against the human rewrites where an example has them (test).

    content, style = score_texts(encoder, classifier, sources, outputs, target_labels)  # (N,) each
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sacrebleu
import torch

from scrutable.models import SentenceEncoder
from scrutable.tasks.yelp.data import TransferExample
from scrutable.tasks.yelp.style import StyleClassifier


@dataclass
class TransferReport:
    """What `evaluate_detailed` measured: means over examples, each in [0, 1] but BLEU."""

    joint: float
    content: float
    style: float
    bleu: float | None  # sacrebleu corpus BLEU (0-100) on examples with references
    samples: list[tuple[str, str]]  # the first few (input, rewrite) pairs


@torch.no_grad()
def score_texts(
    encoder: SentenceEncoder,
    classifier: StyleClassifier,
    sources: Sequence[str],
    outputs: Sequence[str],
    target_labels: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(content, style), each (N,), for aligned sources, outputs and target labels."""
    unique = list(dict.fromkeys(sources))  # the reward repeats each input P * S times
    row = {text: i for i, text in enumerate(unique)}
    source_embeds = encoder.encode(unique)[[row[s] for s in sources]]  # (N, H)
    output_embeds = encoder.encode(list(outputs))  # (N, H)
    content = (source_embeds * output_embeds).sum(-1).clamp(min=0.0, max=1.0)
    positive = classifier.positive_probability(output_embeds)
    targets = torch.tensor(list(target_labels), dtype=torch.bool)
    style = torch.where(targets, positive, 1.0 - positive)
    empty = torch.tensor([not text for text in outputs], dtype=torch.bool)
    return content.masked_fill(empty, 0.0), style.masked_fill(empty, 0.0)


def score_grid(
    encoder: SentenceEncoder,
    classifier: StyleClassifier,
    batch: Sequence[TransferExample],
    texts: list[str],
    num_prompts: int,
    num_samples: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Content and style of generated texts, each reshaped to (P, B, S)."""
    # Text row (p * B + b) * S + s belongs to example b.
    sources = [ex.text for ex in batch for _ in range(num_samples)] * num_prompts
    targets = [ex.target_label for ex in batch for _ in range(num_samples)] * num_prompts
    content, style = score_texts(encoder, classifier, sources, texts, targets)
    shape = (num_prompts, len(batch), num_samples)
    return content.reshape(shape), style.reshape(shape)


def bleu(examples: Sequence[TransferExample], outputs: Sequence[str]) -> float | None:
    """sacrebleu corpus BLEU (0-100) of outputs against the references of the examples that
    have them; None where none has."""
    pairs = [(out, ex.references) for ex, out in zip(examples, outputs, strict=True) if ex.references]
    if not pairs:
        return None
    streams = max(len(refs) for _, refs in pairs)
    # sacrebleu wants one stream per reference position; repeat the last reference where an
    # example has fewer (duplicates do not change BLEU's clipped counts).
    references = [[refs[min(i, len(refs) - 1)] for _, refs in pairs] for i in range(streams)]
    return float(sacrebleu.corpus_bleu([out for out, _ in pairs], references).score)
