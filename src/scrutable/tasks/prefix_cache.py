"""Shared-prefix reuse: encode each example's input once, run only the prompt on top of it.

In a causal LM the key/value states of the positions before the prompt do not depend on
the prompt, and the task model is frozen. For a template `{input} {prompt} {suffix}` (SST-2:
`"{sentence} {prompt}"`) the input's keys and values are therefore computed once, without
gradients, and every step runs only the prompt (and suffix) positions over them, forward and
backward: 5 positions per example instead of ~30-60.

Layout (P prompts, B examples, rows p*B + b as in `tasks/inputs.py`):

    cached:   [pad ... pad, input_b]                  (B, T) left-padded, ends aligned
    per step: [pad ... pad, prompt_p, suffix_b]       (P*B, S) pads only where suffixes differ

The attention mask is the two masks joined; position ids count the real tokens before each
position (mask cumsum), so rotary (SmolLM2/Llama) and learned (GPT-2) positions both equal
the plain path's, and the last position is every row's last real token. Padded positions'
keys and values are zeroed so that a masked-out NaN can never leak into a softmax (0 * NaN).

Not used where it cannot be exact or cannot help:
- seq2seq (T5): the encoder is bidirectional, so every input position attends to the prompt
  and nothing before it is prompt-independent: the plain path runs;
- prompt-first templates (BoolQ with a causal LM, Yelp): the input follows the prompt and
  depends on it; only the prompt's own L positions could be shared across the B inputs, a
  few percent of the sequence, so the plain path runs there too.

`PrefixPools` keeps the encodings of the small fixed pools (the few-shot train and dev
splits) for the task's lifetime, keyed by example, so a random training batch gathers its
rows; larger splits (test) are encoded per evaluation batch.

    prefixes = encode_prefixes(lm, [token_ids(lm, s) for s in sentences])
    hidden = run_on_prefixes(lm, prefixes, [[] for _ in sentences], prompt_embeds)  # (P*B, D)
    logits = head_logits(lm, hidden, verbalizer_ids)  # (P*B, C)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from transformers import DynamicCache

from scrutable.models import LanguageModel, ModelKind

# Pools up to this many examples are encoded whole and kept (SST-2 few-shot: 32 each; BoolQ:
# 32 / 50); a larger split is encoded batch by batch as it is used.
MAX_POOL_EXAMPLES = 512
ENCODE_CHUNK = 64  # rows per forward pass when encoding, to bound activation memory


def can_reuse(lm: LanguageModel, before: Sequence[Sequence[int]]) -> bool:
    """Causal model and some input before the prompt (see the module docstring)."""
    return lm.kind is ModelKind.CAUSAL and any(len(ids) > 0 for ids in before)


@dataclass
class EncodedPrefixes:
    """Keys and values of N left-padded token sequences, per layer (N, H, T, d)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    attention_mask: torch.Tensor  # (N, T), 1 on real tokens

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def rows(self, index: torch.Tensor) -> EncodedPrefixes:
        """Rows `index` (B,), without the left padding that all of them share."""
        index = index.to(self.attention_mask.device)
        mask = self.attention_mask[index]  # (B, T)
        real = mask.any(0).nonzero()
        start = int(real[0]) if len(real) else mask.shape[1]
        return EncodedPrefixes(
            keys=[k[index, :, start:] for k in self.keys],
            values=[v[index, :, start:] for v in self.values],
            attention_mask=mask[:, start:],
        )

    def cache_for(self, num_prompts: int) -> DynamicCache:
        """A fresh cache whose row p*B + b holds example b (tiled over prompts). Fresh because
        a forward pass appends to the cache it is given; the stored tensors stay untouched."""
        if num_prompts == 1:  # DynamicCache copies what it is given anyway
            return DynamicCache(ddp_cache_data=list(zip(self.keys, self.values, strict=True)))
        return DynamicCache(
            ddp_cache_data=[
                (k.repeat(num_prompts, 1, 1, 1), v.repeat(num_prompts, 1, 1, 1))
                for k, v in zip(self.keys, self.values, strict=True)
            ]
        )


@torch.no_grad()
def encode_prefixes(lm: LanguageModel, before: Sequence[Sequence[int]]) -> EncodedPrefixes:
    """Run the frozen model once over the inputs, left-padded so that they end together."""
    total = max(len(ids) for ids in before)
    ids = torch.full((len(before), total), int(lm.tokenizer.pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(before), total), dtype=torch.long)
    for row, tokens in enumerate(before):
        if tokens:
            ids[row, total - len(tokens) :] = torch.tensor(list(tokens), dtype=torch.long)
            mask[row, total - len(tokens) :] = 1
    ids, mask = ids.to(lm.device), mask.to(lm.device)  # filled on the CPU, moved once
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    chunks: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    for start in range(0, len(before), ENCODE_CHUNK):
        rows = slice(start, start + ENCODE_CHUNK)
        # The base model without its output head: only the cache is wanted, not logits.
        out = lm.model.base_model(
            input_ids=ids[rows], attention_mask=mask[rows], position_ids=positions[rows], use_cache=True
        )
        keep = mask[rows].bool()[:, None, :, None]  # (b, 1, T, 1)
        chunks.append([(torch.where(keep, k, 0.0), torch.where(keep, v, 0.0)) for k, v, *_ in out.cache])
    layers = list(zip(*chunks, strict=True))  # per layer, the chunks' (keys, values)
    return EncodedPrefixes(
        keys=[torch.cat([k for k, _ in layer]) for layer in layers],  # (B, H, T, d) each
        values=[torch.cat([v for _, v in layer]) for layer in layers],
        attention_mask=mask,
    )


def run_on_prefixes(
    lm: LanguageModel,
    prefixes: EncodedPrefixes,
    after: Sequence[Sequence[int]],
    prompt_embeds: torch.Tensor,
) -> torch.Tensor:
    """(P*B, D) final hidden states at the last position of `[input_b, prompt_p, after_b]`,
    running only the prompt and `after` positions; differentiable in `prompt_embeds`. Read
    logits from them with `head_logits`."""
    if prompt_embeds.dim() == 2:
        prompt_embeds = prompt_embeds.unsqueeze(0)
    num_prompts, prompt_len, _ = prompt_embeds.shape
    batch_size = len(after)
    suffix_len = max((len(a) for a in after), default=0)
    span = prompt_len + suffix_len

    # Per example: [pad..., prompt slots, after_b]; the prompt slots are filled per prompt.
    token_ids = torch.full((batch_size, span), int(lm.tokenizer.pad_token_id), dtype=torch.long)
    slot = torch.full((batch_size, span), -1, dtype=torch.long)  # prompt vector j at slot j
    new_mask = torch.zeros((batch_size, span), dtype=torch.long)
    for row, post in enumerate(after):
        start = span - prompt_len - len(post)
        slot[row, start : start + prompt_len] = torch.arange(prompt_len)
        if post:
            token_ids[row, start + prompt_len :] = torch.tensor(list(post), dtype=torch.long)
        new_mask[row, start:] = 1
    token_ids, slot, new_mask = token_ids.to(lm.device), slot.to(lm.device), new_mask.to(lm.device)
    token_embeds = lm.model.get_input_embeddings()(token_ids)  # (B, S, D)
    prompt_embeds = prompt_embeds.to(device=lm.device, dtype=token_embeds.dtype)  # a float32 prompt, a bf16 model
    from_prompt = prompt_embeds[:, slot.clamp(min=0)]  # (P, B, S, D)
    embeds = torch.where((slot >= 0).unsqueeze(-1), from_prompt, token_embeds.unsqueeze(0))  # (P, B, S, D)
    embeds = embeds.reshape(num_prompts * batch_size, span, -1)

    mask = torch.cat([prefixes.attention_mask, new_mask], dim=1).repeat(num_prompts, 1)  # (P*B, T+S)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -span:]  # (P*B, S)
    out = lm.model.base_model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        cache=prefixes.cache_for(num_prompts),
        use_cache=True,
    )
    return out.last_hidden_state[:, -1]  # (P*B, D)


def head_logits(lm: LanguageModel, hidden: torch.Tensor, token_ids: Sequence[int] | None) -> torch.Tensor:
    """(..., D) final hidden states -> (..., C) logits of `token_ids` only (the rows of the
    output head that are read, e.g. 2 verbalizers instead of SmolLM2's 49,152 tokens), or with
    None (..., V) logits over the tokenizer's real tokens."""
    head = lm.model.get_output_embeddings()
    assert isinstance(head, torch.nn.Linear), f"{lm.name}: the output head is not a linear layer"
    rows: slice | torch.Tensor = slice(0, lm.vocab_size)
    if token_ids is not None:
        rows = torch.tensor(list(token_ids), dtype=torch.long, device=hidden.device)
    bias = None if head.bias is None else head.bias[rows]
    flat = hidden.reshape(-1, hidden.shape[-1])  # 2-D: a plain matmul (a 3-D input took a slow bmm)
    return torch.nn.functional.linear(flat, head.weight[rows], bias).reshape(*hidden.shape[:-1], -1)


Key = TypeVar("Key", bound=Hashable)  # an example; equal examples share their encoding


@dataclass
class PrefixPools:
    """Encodings of small fixed example pools, per model, kept for as long as the task.

    `lookup` answers a batch from a pool that holds all of its examples (gathering rows), or
    None, in which case the caller encodes the batch itself."""

    _encoded: weakref.WeakKeyDictionary[LanguageModel, dict[str, EncodedPrefixes]] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    _rows: dict[str, dict[Hashable, int]] = field(default_factory=dict)  # pool name -> example -> row

    def lookup(
        self,
        lm: LanguageModel,
        batch: Sequence[Key],
        pools: Mapping[str, Sequence[Key]],
        prefix_of: Callable[[Key], Sequence[int]],
    ) -> EncodedPrefixes | None:
        for name, pool in pools.items():
            if not 0 < len(pool) <= MAX_POOL_EXAMPLES:
                continue
            if name not in self._rows:
                self._rows[name] = {example: row for row, example in enumerate(pool)}
            rows = [self._rows[name].get(example) for example in batch]
            if any(row is None for row in rows):
                continue
            held = self._encoded.setdefault(lm, {})
            if name not in held:
                held[name] = encode_prefixes(lm, [prefix_of(example) for example in pool])
            return held[name].rows(torch.tensor(rows, dtype=torch.long))
        return None

    def nbytes(self) -> int:
        """Memory the kept encodings take, over all models."""
        return sum(encoded.nbytes for held in self._encoded.values() for encoded in held.values())
