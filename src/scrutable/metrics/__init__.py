"""Interpretability metrics: unembedding, faithfulness, scrutability (perplexity).

Pure functions over tensors and models; nothing here imports Ray or MLflow.

The names below load on first use (PEP 562), so that `from scrutable.metrics import keys`,
which the sweep driver needs for metric names, does not import torch: the driver of a
local sweep never runs a model, and torch is its largest import (about 2 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scrutable.metrics import keys

if TYPE_CHECKING:
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

_HOMES = {
    "faithfulness": (
        "OutputDifferential",
        "output_differential",
        "output_differential_from_logits",
        "performance_differential",
    ),
    "perplexity": (
        "LocalScorer",
        "PerplexityGradient",
        "PerplexityResult",
        "Scorer",
        "ScoreRequest",
        "score_request",
        "sequence_perplexities",
    ),
    "unembed": ("Distance", "Unembedding", "nearest_tokens", "project_to_vocabulary"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

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


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
