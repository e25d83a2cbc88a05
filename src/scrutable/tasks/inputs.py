"""Splice prompt vectors into a batch of token sequences, vectorised over prompts.

Every task builds each example as `before + [PROMPT] + after` (token ids). Given P prompts
as embeddings (P, L, D) and B examples, `splice_prompt` returns the (P*B, T, D) input
embeddings, left-padded so that position T-1 is every row's last real token (causal
tasks read their answer there), with the attention mask and position ids that padding
needs. A hard prompt is the same call with `embedding[prompt_ids]`: the model cannot tell
a soft prompt that equals token embeddings from the tokens themselves.

The index tensors are filled row by row on the CPU and moved to the model's device once;
the prompt is cast to the model's dtype there, so a float32 prompt trains in front of a
bfloat16 model and its gradient comes back in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from scrutable.models import LanguageModel, ModelKind


@dataclass
class SplicedBatch:
    inputs_embeds: torch.Tensor  # (P*B, T, D), row p*B + b is prompt p on example b
    attention_mask: torch.Tensor  # (P*B, T)
    position_ids: torch.Tensor | None  # (P*B, T); None for relative-position models (T5)
    num_prompts: int
    batch_size: int

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        kwargs = {"inputs_embeds": self.inputs_embeds, "attention_mask": self.attention_mask}
        if self.position_ids is not None:
            kwargs["position_ids"] = self.position_ids
        return kwargs


def splice_prompt(
    lm: LanguageModel,
    before: Sequence[Sequence[int]],
    after: Sequence[Sequence[int]],
    prompt_embeds: torch.Tensor,
) -> SplicedBatch:
    """Build `[pad..., before_b, prompt_p, after_b]` for every prompt p and example b."""
    if prompt_embeds.dim() == 2:
        prompt_embeds = prompt_embeds.unsqueeze(0)
    num_prompts, prompt_len, _ = prompt_embeds.shape
    batch_size = len(before)
    lengths = [len(b) + prompt_len + len(a) for b, a in zip(before, after, strict=True)]
    total = max(lengths)
    pad_id = int(lm.tokenizer.pad_token_id)

    token_ids = torch.full((batch_size, total), pad_id, dtype=torch.long)
    # slot[b, t] = j when position t of example b holds prompt vector j, else -1.
    slot = torch.full((batch_size, total), -1, dtype=torch.long)
    attention = torch.zeros((batch_size, total), dtype=torch.long)
    for row, (pre, post) in enumerate(zip(before, after, strict=True)):
        start = total - lengths[row]
        prompt_at = start + len(pre)
        token_ids[row, start:prompt_at] = torch.tensor(pre, dtype=torch.long)
        token_ids[row, prompt_at + prompt_len :] = torch.tensor(post, dtype=torch.long)
        slot[row, prompt_at : prompt_at + prompt_len] = torch.arange(prompt_len)
        attention[row, start:] = 1

    token_ids, slot, attention = token_ids.to(lm.device), slot.to(lm.device), attention.to(lm.device)
    token_embeds = lm.model.get_input_embeddings()(token_ids)  # (B, T, D)
    prompt_embeds = prompt_embeds.to(device=lm.device, dtype=token_embeds.dtype)
    if prompt_len:
        from_prompt = prompt_embeds[:, slot.clamp(min=0)]  # (P, B, T, D)
        is_prompt = (slot >= 0).unsqueeze(-1)  # (B, T, 1)
        embeds = torch.where(is_prompt, from_prompt, token_embeds.unsqueeze(0))  # (P, B, T, D)
    else:  # the empty prompt: the task's input alone (the sweep's no-prompt baseline)
        embeds = token_embeds.unsqueeze(0).expand(num_prompts, -1, -1, -1)
    embeds = embeds.reshape(num_prompts * batch_size, total, -1)
    attention = attention.repeat(num_prompts, 1)
    positions = None
    if lm.kind is ModelKind.CAUSAL:
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return SplicedBatch(embeds, attention, positions, num_prompts, batch_size)


def token_ids(lm: LanguageModel, text: str) -> list[int]:
    """Token ids of `text` without special tokens (T5 would otherwise append </s>)."""
    return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
