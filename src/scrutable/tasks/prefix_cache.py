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
rows. Larger splits (test) are encoded per evaluation batch, and `BatchEncodings` keeps those
batches across evaluations within a memory budget (`EVALUATION_CACHE_BYTES`, 2 GiB per
process: SmolLM2-135M takes 45 KiB per token in float32, so SST-2's whole test split, 1,821
sentences in 43k tokens, takes 1.85 GiB; a larger model keeps the batches evaluated first,
as many as fit). The kept batches are the process's (`shared_batch_encodings`), not one task's: the trials a Ray
worker runs one after another (the sweep reuses actors) share the task model
(`trainables.common.cached_model`) and the test split, so a trial's final test reuses what
the trials before it encoded. Several prompts evaluated together share one encoding of each
batch (`run_on_prefixes` takes (P, L, D)).

    prefixes = encode_prefixes(lm, [token_ids(lm, s) for s in sentences])
    hidden = run_on_prefixes(lm, prefixes, [[] for _ in sentences], prompt_embeds)  # (P*B, D)
    logits = head_logits(lm, hidden, verbalizer_ids)  # (P*B, C)
"""

from __future__ import annotations

import itertools
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
# Bytes of encoded evaluation batches a process keeps across evaluations (`BatchEncodings`).
# 2 GiB: SmolLM2-135M's encoding of the whole SST-2 test split in float32 (1.85 GiB), so every
# trial after the first on a worker runs only the prompt positions of its final test; two or
# three trial workers of SmolLM2 and the scorer still fit a 24 GiB machine.
EVALUATION_CACHE_BYTES = 2 << 30
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


@dataclass
class _Kept:
    prefixes: EncodedPrefixes
    last_used: int  # a tick of `BatchEncodings._clock`: least recently used goes first
    last_pass: int  # the evaluation pass that last used it


class BatchEncodings:
    """Encoded evaluation batches kept across evaluations, at most `max_bytes` in all models.

    Keyed by the batch's token ids before the prompt (what `encode_prefixes` read), per
    model. When full, the least recently used batch goes first, but never one that the
    current pass (`start_pass`: one evaluation) put or used: a split larger than the budget
    then keeps its first batches for the next evaluation instead of cycling through the
    cache and keeping none of them, which is what plain LRU does on a repeated scan. The
    latest batch put is held whatever the budget until the next one comes, so that prompts of
    different lengths evaluated over one batch share its encoding."""

    def __init__(self, max_bytes: int = EVALUATION_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._held: weakref.WeakKeyDictionary[LanguageModel, dict[tuple[tuple[int, ...], ...], _Kept]] = (
            weakref.WeakKeyDictionary()
        )
        self._clock = itertools.count()
        self._pass = 0
        self._latest: tuple[weakref.ref[LanguageModel], tuple[tuple[int, ...], ...], EncodedPrefixes] | None = None

    def start_pass(self) -> None:
        """A new evaluation begins: batches of earlier ones may be evicted for its batches."""
        self._pass += 1
        self._latest = None

    def get(self, lm: LanguageModel, before: Sequence[Sequence[int]]) -> EncodedPrefixes | None:
        key = _batch_key(before)
        kept = self._held.get(lm, {}).get(key)
        if kept is None:
            if self._latest is not None and self._latest[0]() is lm and self._latest[1] == key:
                return self._latest[2]
            return None
        kept.last_used, kept.last_pass = next(self._clock), self._pass
        return kept.prefixes

    def put(self, lm: LanguageModel, before: Sequence[Sequence[int]], prefixes: EncodedPrefixes) -> None:
        """Keep `prefixes` if they fit, evicting batches of earlier passes if need be."""
        self._latest = (weakref.ref(lm), _batch_key(before), prefixes)
        size = prefixes.nbytes
        while self.nbytes() + size > self.max_bytes:
            older = [
                (kept.last_used, held, key)
                for held in self._held.values()
                for key, kept in held.items()
                if kept.last_pass < self._pass
            ]
            if not older:
                return  # full of this pass's batches: this one is encoded again next time
            _, held, key = min(older, key=lambda found: found[0])
            del held[key]
        self._held.setdefault(lm, {})[_batch_key(before)] = _Kept(prefixes, next(self._clock), self._pass)

    def nbytes(self) -> int:
        return sum(kept.prefixes.nbytes for held in self._held.values() for kept in held.values())

    def __len__(self) -> int:
        return sum(len(held) for held in self._held.values())


def _batch_key(before: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(ids) for ids in before)


_SHARED = BatchEncodings()


def shared_batch_encodings() -> BatchEncodings:
    """The process's kept evaluation batches, `EVALUATION_CACHE_BYTES` at most (the module
    docstring says why one per process)."""
    return _SHARED
