"""What a prompt must be before it reaches a model: its length fits, its file holds a prompt.

The length rule: a prompt of L tokens (or vectors) may take at most half the model's
positions, L <= n_positions // 2, because the task input needs the rest of the context.
It is checked in two ways that must agree: on a loaded model (`check_prompt_fits`, used by
`scrutable evaluate` and `scrutable train`), and from the model's config.json without
loading any weights (`max_prompt_length`, used when a sweep spec is loaded, so a searched
prompt_length too long for the model is one error line before Ray starts). T5's relative
positions have no hard limit.

A soft prompt file (`scrutable train --out` writes `prompt.pt`) is a (L, D) float tensor
saved with `torch.save`, or a dict holding one under "prompt"; `load_soft_prompt` refuses
anything else in one line:

    prompt = load_soft_prompt(Path("runs/one/prompt.pt"), lm.hidden_size)  # (L, D) float32
    check_prompt_fits(lm, prompt.shape[0], "runs/one/prompt.pt")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrutable.errors import UserError

if TYPE_CHECKING:
    import torch

    from scrutable.models import LanguageModel


def check_prompt_fits(lm: LanguageModel, length: int, what: str) -> None:
    """A prompt may take at most half the model's context: the task input needs the rest."""
    from scrutable.models import max_positions

    positions = max_positions(lm)
    if positions is not None and length > positions // 2:
        raise UserError(
            f"{what} is {length} tokens, too long for {lm.name}'s {positions}-position context (the task input "
            f"needs room too): use at most {positions // 2} tokens"
        )


def max_prompt_length(model: str, data_dir: str | None) -> int | None:
    """Half the model's positions (the rule of `check_prompt_fits`), read from its
    config.json without loading weights; None when the model has no limit or none can be read."""
    import json

    from scrutable.paths import cache_dir

    if model == "tiny-gpt2":
        positions: Any = 512  # n_positions of scrutable.models.tiny_gpt2 (tests check they agree)
    else:
        if model == "smollm2-135m":
            config_file: Any = cache_dir() / "models" / "smollm2-135m" / "config.json"
        elif Path(model).expanduser().is_dir():
            config_file = Path(model).expanduser() / "config.json"
        elif model == "tiny-t5":
            return None  # relative positions: no hard limit
        else:
            from huggingface_hub import try_to_load_from_cache

            config_file = try_to_load_from_cache(model, "config.json")
        try:
            config = json.loads(Path(config_file).read_text())
        except (OSError, TypeError, ValueError):
            return None  # not cached yet: the trial checks it when the model is loaded
        positions = config.get("n_positions") or config.get("max_position_embeddings")
    return positions // 2 if isinstance(positions, int) and positions > 0 else None


def load_soft_prompt(path: Path, hidden_size: int) -> torch.Tensor:
    """A soft prompt file: a (L, D) tensor, or a dict holding one under 'prompt'."""
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler raises many types on a foreign file
        raise UserError(
            f"{path} is not a torch tensor file ({type(exc).__name__}): save the prompt with torch.save"
        ) from None
    if isinstance(loaded, dict):
        loaded = loaded.get("prompt")
    if not isinstance(loaded, torch.Tensor) or loaded.dim() != 2:
        raise UserError(f"{path} holds no (L, D) prompt tensor: save a 2-D tensor or {{'prompt': tensor}}")
    if loaded.shape[0] == 0:
        raise UserError(f"{path} holds a prompt of 0 vectors: save at least one row")
    if not loaded.is_floating_point() or not bool(torch.isfinite(loaded).all()):
        raise UserError(f"{path} holds NaN, infinite or non-float values: save a finite float prompt")
    # Distances and logits square and sum the values in float32: 3e38 is finite but its
    # square is not, and every metric would come out inf/NaN.
    if not bool(torch.isfinite(loaded.float().pow(2).sum(dim=-1)).all()):
        raise UserError(
            f"{path} holds values too large for float32 arithmetic (largest {loaded.abs().max().item():.3g}): "
            "save the prompt the model was trained with"
        )
    if loaded.shape[1] != hidden_size:
        raise UserError(
            f"{path} has vectors of width {loaded.shape[1]} but the model's embeddings are {hidden_size} wide: "
            "evaluate it with the model it was trained on"
        )
    return loaded.float()
