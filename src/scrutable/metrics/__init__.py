"""Interpretability metrics: unembedding, faithfulness, scrutability (perplexity).

Pure functions over tensors and models; nothing here imports Ray or MLflow.
"""

from scrutable.metrics import keys
from scrutable.metrics.faithfulness import (
    OutputDifferential,
    output_differential,
    output_differential_from_logits,
    performance_differential,
)
from scrutable.metrics.perplexity import (
    LocalScorer,
    PerplexityGradient,
    PerplexityResult,
    Scorer,
    ScoreRequest,
    score_request,
    sequence_perplexities,
)
from scrutable.metrics.unembed import Distance, Unembedding, nearest_tokens, project_to_vocabulary

__all__ = [
    "Distance",
    "LocalScorer",
    "OutputDifferential",
    "PerplexityGradient",
    "PerplexityResult",
    "ScoreRequest",
    "Scorer",
    "Unembedding",
    "keys",
    "nearest_tokens",
    "output_differential",
    "output_differential_from_logits",
    "performance_differential",
    "project_to_vocabulary",
    "score_request",
    "sequence_perplexities",
]
