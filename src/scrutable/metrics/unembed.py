"""Unembedding: map each prompt vector to its nearest vocabulary embedding.

For prompt vectors P (..., L, D) and the vocabulary embedding matrix E (V, D):
- Euclidean: argmin_v ||P_i - E_v||, computed as ||P_i||^2 - 2 P_i.E_v + ||E_v||^2, one
  matrix product over the vocabulary, never a Python loop;
- cosine: argmax_v (P_i . E_v) / (||P_i|| ||E_v||); the reported distance is 1 - cosine.
The mean of the per-token distances is the paper's *distance differential*.

Distances are computed in float32 when the embeddings are bfloat16/float16: the expanded
Euclidean form subtracts numbers of similar size, which 8 bits of mantissa cannot resolve.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scrutable.metrics.distance import Distance as Distance  # its home is torch-free: configs name it


@dataclass(frozen=True)
class Unembedding:
    token_ids: torch.Tensor  # (..., L) nearest token per prompt vector
    distances: torch.Tensor  # (..., L) distance to that token

    @property
    def distance_differential(self) -> float:
        return float(self.distances.mean())


@torch.no_grad()
def nearest_tokens(
    prompt: torch.Tensor, embeddings: torch.Tensor, distance: Distance | str = Distance.EUCLIDEAN
) -> Unembedding:
    """Nearest vocabulary token per prompt vector: prompt (..., L, D), embeddings (V, D)."""
    distance = Distance(distance)
    precision = torch.promote_types(embeddings.dtype, torch.float32)
    embeddings = embeddings.to(precision)
    prompt = prompt.detach().to(device=embeddings.device, dtype=precision)
    if distance is Distance.COSINE:
        similarity = F.normalize(prompt, dim=-1) @ F.normalize(embeddings, dim=-1).T  # (..., L, V)
        best, ids = similarity.max(dim=-1)
        return Unembedding(token_ids=ids, distances=1.0 - best)
    squared = (
        prompt.pow(2).sum(-1, keepdim=True)  # (..., L, 1)
        - 2.0 * prompt @ embeddings.T  # (..., L, V)
        + embeddings.pow(2).sum(-1)  # (V,)
    )
    ids = squared.argmin(dim=-1)
    # The expanded form cancels badly near zero; measure the winner's distance directly.
    exact = (prompt - embeddings[ids]).norm(dim=-1)
    return Unembedding(token_ids=ids, distances=exact)


def project_to_vocabulary(
    prompt: torch.Tensor, embeddings: torch.Tensor, distance: Distance | str = Distance.COSINE
) -> tuple[torch.Tensor, torch.Tensor]:
    """PEZ's projection with a straight-through gradient.

    Returns (token ids (..., L), projected embeddings (..., L, D)). The forward value is the
    nearest token's embedding; the backward pass hands the gradient taken at the projection
    straight to `prompt` (Wen et al. 2023, "Hard Prompts Made Easy", Algorithm 1).
    """
    ids = nearest_tokens(prompt, embeddings, distance).token_ids
    projected = embeddings[ids].to(prompt.dtype)
    return ids, prompt + (projected - prompt).detach()
