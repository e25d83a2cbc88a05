"""Generating Yelp rewrites: the reference template, a KV-cache sampling loop, the clean-up.

A causal LM reads `{prompt} "{sentence}" "` (RLPrompt, `examples/text-style-transfer/` in
mingkaid/rl-prompt) and its continuation up to the closing quote (or a newline) is the
rewrite. As in the reference, the text is cut after its first `.`, `!` or `?` and lowercased
(`postprocess`), and at most max(1.5 n, n + 10) tokens are generated for an n-token sentence
(capped by `max_new_tokens`). Generation is batched over prompts x examples x samples with a
KV-cache loop over left-padded input embeddings (see `tasks/inputs.py`).

    texts = generate(lm, prompt_embeds, batch, num_samples=4, top_k=10, max_new_tokens=48,
                     stop_masks={}, generator=torch.Generator().manual_seed(0))  # P * B * 4 strings
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from scrutable.errors import UserError
from scrutable.models import LanguageModel, ModelKind
from scrutable.tasks.inputs import SplicedBatch, splice_prompt, token_ids
from scrutable.tasks.yelp.data import TransferExample

# Yelp sentences are at most 15 words; the cap only guards against other data.
MAX_SENTENCE_TOKENS = 64


def splice(lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[TransferExample]) -> SplicedBatch:
    """The reference template with the prompt embeddings spliced in front of each sentence."""
    if lm.kind is not ModelKind.CAUSAL:
        raise UserError(
            f"yelp style transfer generates with a causal LM; {lm.name} is {lm.kind.value}: "
            "use a GPT-2 or Llama-style model (e.g. smollm2-135m)"
        )
    # The reference template `{prompt} "{sentence}" "`: the prompt opens the input.
    after = [token_ids(lm, f' "{_sentence(lm, ex.text)}" "') for ex in batch]
    return splice_prompt(lm, [[] for _ in batch], after, prompt_embeds)


def generate(
    lm: LanguageModel,
    prompt_embeds: torch.Tensor,
    batch: Sequence[TransferExample],
    *,
    num_samples: int,
    top_k: int | None,
    max_new_tokens: int,
    stop_masks: dict[str, torch.Tensor],
    generator: torch.Generator,
) -> list[str]:
    """Rewrites for every prompt, example and sample; row (p * B + b) * S + s. `top_k` None is
    greedy; `stop_masks` keeps each vocabulary's stop tokens between calls."""
    spliced = splice(lm, prompt_embeds, batch)
    device = lm.device
    budget = torch.tensor([_budget(lm, ex.text, max_new_tokens) for ex in batch], device=device)  # (B,)
    budget = budget.repeat_interleave(num_samples).repeat(spliced.num_prompts)  # (N,), N = P*B*S
    stop = stop_mask(lm, stop_masks).to(device)  # (V,)
    embedding = lm.model.get_input_embeddings()

    # Read the shared input once per (prompt, example), then copy its cache per sample;
    # logits_to_keep=1 spares a (P*B, T, V) logits tensor.
    out = lm.model(**spliced.model_kwargs(), use_cache=True, logits_to_keep=1)
    cache = out.cache  # transformers 5 name of past_key_values
    cache.batch_repeat_interleave(num_samples)
    logits = out.logits[:, -1, : lm.vocab_size].repeat_interleave(num_samples, 0)  # (N, V)
    mask = spliced.attention_mask.repeat_interleave(num_samples, 0)  # (N, T)

    tokens = torch.full((len(budget), int(budget.max())), -1, dtype=torch.long, device=device)  # (N, steps)
    active = torch.arange(len(budget), device=device)  # rows still generating, in cache order
    for step in range(tokens.shape[1]):
        next_ids = _pick(logits, top_k, generator)  # (A,)
        tokens[active, step] = next_ids
        finished = stop[next_ids] | (budget[active] <= step + 1)  # (A,)
        if bool(finished.all()):
            break
        if bool(finished.any()):  # drop finished rows from the batch and the cache
            keep = (~finished).nonzero().squeeze(-1)  # (A',)
            cache.batch_select_indices(keep)
            active, next_ids, mask = active[keep], next_ids[keep], mask[keep]
        # The new token's position counts the real tokens before it (left padding).
        positions = mask.sum(-1, keepdim=True)  # (A, 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (A, T + step + 1)
        out = lm.model(
            inputs_embeds=embedding(next_ids).unsqueeze(1),  # (A, 1, D)
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        cache = out.cache
        logits = out.logits[:, -1, : lm.vocab_size]  # (A, V)
    texts = []
    for row in tokens.tolist():
        row = [token for token in row if token >= 0]  # the last one may be a stop token
        texts.append(postprocess(str(lm.tokenizer.decode(row, skip_special_tokens=True))))
    return texts


def stop_mask(lm: LanguageModel, cache: dict[str, torch.Tensor]) -> torch.Tensor:
    """(V,) True for tokens that end a rewrite: any containing `"` or a newline, and
    special tokens (EOS). Kept in `cache` per vocabulary."""
    key = lm.vocab_signature
    if key not in cache:
        pieces = lm.tokenizer.batch_decode([[i] for i in range(lm.vocab_size)])
        mask = torch.tensor(['"' in p or "\n" in p for p in pieces], dtype=torch.bool)
        special = [i for i in lm.tokenizer.all_special_ids if i < lm.vocab_size]
        mask[special] = True
        cache[key] = mask
    return cache[key]


def postprocess(text: str) -> str:
    """The reference's clean-up: cut at the closing quote (or newline), keep the first
    sentence (through its `.`, `!` or `?`), lowercase."""
    for end in ('"', "\n"):
        text = text.split(end, 1)[0]
    text = text.strip()
    ends = [i for i in (text.find(p) for p in ".!?") if i >= 0]
    if ends:
        text = text[: min(ends) + 1]
    return text.strip().lower()


def _budget(lm: LanguageModel, text: str, max_new_tokens: int) -> int:
    # The reference's `max(1.5 n, n + 10)` new tokens for an n-token input.
    length = len(token_ids(lm, text))
    return min(max_new_tokens, max(math.ceil(1.5 * length), length + 10))


def _sentence(lm: LanguageModel, text: str) -> str:
    ids = token_ids(lm, text)
    return text if len(ids) <= MAX_SENTENCE_TOKENS else str(lm.tokenizer.decode(ids[:MAX_SENTENCE_TOKENS]))


def _pick(logits: torch.Tensor, top_k: int | None, generator: torch.Generator) -> torch.Tensor:
    """(N, V) logits -> (N,) token ids: greedy, or sampled among the top k."""
    if top_k is None:
        return logits.argmax(-1)
    values, indices = logits.topk(min(top_k, logits.shape[-1]), dim=-1)  # (N, k)
    # Drawn from the task's CPU generator (the same draws on any device), on its device.
    probs = values.float().softmax(-1).to(generator.device)
    choice = torch.multinomial(probs, 1, generator=generator).to(indices.device)  # (N, 1)
    return indices.gather(-1, choice).squeeze(-1)
