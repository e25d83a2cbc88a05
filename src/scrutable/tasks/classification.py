"""Verbalizer classification: read the answer from the logits of one token per class.

Used by SST-2 (" terrible" / " great") and BoolQ (" yes" / " no"). A causal LM is read at
the last input position; a seq2seq LM (T5) at the first decoder step, with the prompt in
front of (or inside) the encoder input only. The loss is cross-entropy over the class
logits; the RLPrompt reward is the reference's piecewise "gap" reward on class
probabilities: gap = p(label) - max p(other), scaled by 200 when correct (gap > 0) and
by 180 when not (Deng et al. 2022, `PromptedClassificationReward`).

With a causal LM and the input before the prompt (SST-2), `output_logits` encodes each
input once and runs only the prompt positions over its keys and values
(`tasks/prefix_cache.py`): the few-shot pools are encoded once per task, other splits per
evaluation batch, in batches of similar length, kept across evaluations (and tasks) up to
a memory budget. `evaluate_prompts` scores several prompts in one pass over each
batch (the card's prompt and its unembedded tokens), so each input is encoded once for all of
them. `prefix_cache=False` keeps the plain path (the two agree to float error).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from scrutable.errors import UserError
from scrutable.models import LanguageModel, ModelKind
from scrutable.tasks.base import Evaluated, RewardResult, Split, subset
from scrutable.tasks.data import LabeledExample as LabeledExample  # its home is torch-free
from scrutable.tasks.inputs import splice_prompt, token_ids
from scrutable.tasks.prefix_cache import (
    BatchEncodings,
    PrefixPools,
    can_reuse,
    encode_prefixes,
    head_logits,
    run_on_prefixes,
    shared_batch_encodings,
)

GAP_CORRECT_COEFF = 200.0
GAP_INCORRECT_COEFF = 180.0


# A formatter turns an example into (text before the prompt, text after it) for a model kind.
Formatter = Callable[[LabeledExample, LanguageModel], tuple[list[int], list[int]]]


@dataclass(eq=False)
class ClassificationTask:
    name: str
    verbalizers: dict[ModelKind, tuple[str, ...]]
    formatter: Formatter
    loaders: Mapping[Split, Callable[[], list[LabeledExample]]]
    metric_name: str = "accuracy"
    supports_loss: bool = True
    prefix_cache: bool = True  # reuse the input's keys/values (`tasks/prefix_cache.py`); False: plain path
    _cache: dict[Split, list[LabeledExample]] = field(default_factory=dict)
    _prefixes: PrefixPools = field(default_factory=PrefixPools, repr=False)
    # The evaluated samples of non-test splits (`subset(split, limit)`), kept as cache pools.
    _evaluated: dict[str, list[LabeledExample]] = field(default_factory=dict, repr=False)
    # Encoded evaluation batches of other splits (test), kept within a budget; the process's.
    kept_batches: BatchEncodings = field(default_factory=shared_batch_encodings, repr=False)

    def examples(self, split: Split | str) -> list[LabeledExample]:
        key = Split(split)
        if key not in self._cache:
            self._cache[key] = self.loaders[key]()
        return self._cache[key]

    def verbalizer_ids(self, lm: LanguageModel) -> list[int]:
        ids = []
        for word in self.verbalizers[lm.kind]:
            pieces = token_ids(lm, word)
            if len(pieces) != 1:
                raise UserError(
                    f"verbalizer {word!r} is {len(pieces)} tokens for {lm.name}'s tokenizer: "
                    "task verbalizers must be single tokens; use a model with a GPT-2/T5 vocabulary"
                )
            ids.append(pieces[0])
        return ids

    def vocab_logits(self, lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        """(P, B, V) logits over the vocabulary where the answer is read: a causal LM's last
        input position, a seq2seq LM's first decoder step."""
        hidden = self._cached_hidden(lm, prompt_embeds, batch)  # (P, B, D) or None
        if hidden is not None:
            return head_logits(lm, hidden, None)
        parts = [self.formatter(example, lm) for example in batch]
        spliced = splice_prompt(lm, [p[0] for p in parts], [p[1] for p in parts], prompt_embeds)
        if lm.kind is ModelKind.SEQ2SEQ:
            start = lm.model.config.decoder_start_token_id
            decoder_ids = torch.full((spliced.inputs_embeds.shape[0], 1), start, dtype=torch.long, device=lm.device)
            logits = lm.model(**spliced.model_kwargs(), decoder_input_ids=decoder_ids).logits
        else:
            logits = lm.model(**spliced.model_kwargs(), logits_to_keep=1).logits
        last = logits[:, -1, : lm.vocab_size]  # (P*B, V)
        return last.reshape(spliced.num_prompts, spliced.batch_size, -1)

    def output_logits(self, lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        """(P, B, C) verbalizer logits."""
        hidden = self._cached_hidden(lm, prompt_embeds, batch)  # (P, B, D) or None
        if hidden is not None:  # C rows of the output head, not all V
            return head_logits(lm, hidden, self.verbalizer_ids(lm))
        return self.vocab_logits(lm, prompt_embeds, batch)[..., self.verbalizer_ids(lm)]

    def _cached_hidden(
        self, lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[Any]
    ) -> torch.Tensor | None:
        """(P, B, D) final hidden states at the answer position via the prefix cache, or None
        where it does not apply (plain path)."""
        parts = [self.formatter(example, lm) for example in batch]
        before = [p[0] for p in parts]
        if not (self.prefix_cache and can_reuse(lm, before)):
            return None
        if prompt_embeds.shape[-2] == 0 and not any(p[1] for p in parts):
            return None  # an empty prompt and no suffix: nothing to run over the cache
        num_prompts = 1 if prompt_embeds.dim() == 2 else prompt_embeds.shape[0]
        pools = {split.value: self._cache[split] for split in (Split.TRAIN, Split.DEV) if split in self._cache}
        pools.update(self._evaluated)
        prefixes = self._prefixes.lookup(lm, batch, pools, lambda example: self.formatter(example, lm)[0])
        if prefixes is None:  # not from a kept pool (test, a large dev pool): a kept batch, or encode it
            prefixes = self.kept_batches.get(lm, before)
            if prefixes is None:
                prefixes = encode_prefixes(lm, before)
                self.kept_batches.put(lm, before, prefixes)
        hidden = run_on_prefixes(lm, prefixes, [p[1] for p in parts], prompt_embeds)  # (P*B, D)
        return hidden.reshape(num_prompts, len(batch), -1)

    def loss(self, lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        logits = self.output_logits(lm, prompt_embeds, batch)[0]  # (B, C)
        return F.cross_entropy(logits.float(), _labels(batch, logits.device))  # float32 whatever the model's dtype

    @torch.no_grad()
    def evaluate(
        self,
        lm: LanguageModel,
        prompt_embeds: torch.Tensor,
        split: Split | str,
        *,
        limit: int | None = None,
        batch_size: int = 16,
    ) -> Evaluated:
        """Accuracy, and as the objective the mean log-probability of the correct verbalizer
        (softmax over the verbalizers: minus the cross-entropy the prompt is trained on)."""
        return self.evaluate_prompts(lm, [prompt_embeds], split, limit=limit, batch_size=batch_size)[0]

    @torch.no_grad()
    def evaluate_prompts(
        self,
        lm: LanguageModel,
        prompts: Sequence[torch.Tensor] | torch.Tensor,
        split: Split | str,
        *,
        limit: int | None = None,
        batch_size: int = 16,
    ) -> list[Evaluated]:
        """`evaluate` for several prompts, each (L, D) (or a stack (P, L, D)): one result per
        prompt, in order. Prompts of one length are scored in one pass over each batch, so on
        the prefix cache each input is encoded once for all of them."""
        examples = subset(self.examples(split), limit)
        if not examples:
            raise UserError(f"split {split} of task {self.name} is empty")
        if Split(split) is not Split.TEST:  # a fixed sample of a large dev pool is evaluated again and again
            self._evaluated.setdefault(f"{Split(split).value}:{limit}", examples)
        self.kept_batches.start_pass()
        by_length: dict[int, list[int]] = {}  # prompt length -> positions in `prompts`
        for index, prompt in enumerate(prompts):
            by_length.setdefault(prompt.shape[0], []).append(index)
        stacks = {length: _stack([prompts[i] for i in indices]) for length, indices in by_length.items()}
        correct, log_prob = [0] * len(prompts), [0.0] * len(prompts)
        for batch in self._batches(lm, examples, batch_size):
            for length, indices in by_length.items():
                logits = self.output_logits(lm, stacks[length], batch)  # (P, B, C)
                labels = _labels(batch, logits.device)
                for row, index in enumerate(indices):
                    correct[index] += int((logits[row].argmax(-1) == labels).sum())
                    chosen = F.log_softmax(logits[row].float(), -1).gather(-1, labels.unsqueeze(-1))
                    log_prob[index] += float(chosen.sum())
        return [
            Evaluated(metric=hits / len(examples), objective=total / len(examples))
            for hits, total in zip(correct, log_prob, strict=True)
        ]

    def _batches(
        self, lm: LanguageModel, examples: list[LabeledExample], batch_size: int
    ) -> list[list[LabeledExample]]:
        """Evaluation batches; with the prefix cache, of inputs of similar length, so that
        encoding them wastes little on padding (the metric does not depend on the order)."""
        if self.prefix_cache and lm.kind is ModelKind.CAUSAL:
            examples = sorted(examples, key=lambda example: len(self.formatter(example, lm)[0]))
        return [examples[start : start + batch_size] for start in range(0, len(examples), batch_size)]

    def prefix_cache_bytes(self) -> int:
        """Memory held by the kept input encodings (the few-shot pools), over all models."""
        return self._prefixes.nbytes()

    def evaluation_batches_bytes(self) -> int:
        """Memory held by the encoded evaluation batches kept across evaluations, over all
        models (and, with the shared `kept_batches`, over all tasks of this process)."""
        return self.kept_batches.nbytes()

    @torch.no_grad()
    def reward(self, lm: LanguageModel, prompt_ids: torch.Tensor, batch: Sequence[Any]) -> RewardResult:
        prompt_embeds = lm.embedding_matrix[prompt_ids]  # (P, L, D)
        probs = self.output_logits(lm, prompt_embeds, batch).float().softmax(-1)  # (P, B, C)
        labels = _labels(batch, probs.device).expand(probs.shape[0], -1)  # (P, B)
        label_probs = probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        others = probs.scatter(-1, labels.unsqueeze(-1), -1.0)
        gap = label_probs - others.max(-1).values
        correct = gap > 0
        coeff = torch.where(correct, GAP_CORRECT_COEFF, GAP_INCORRECT_COEFF)
        return RewardResult(rewards=(gap * coeff).mean(-1), metric=correct.float().mean(-1))


def _stack(prompts: Sequence[torch.Tensor]) -> torch.Tensor:
    """(P, L, D) from P prompts (L, D) of one length, in their common dtype on the first one's
    device (a float32 soft prompt next to bfloat16 token embeddings: both are cast to the
    model's dtype where they enter it, the tokens' rows unchanged)."""
    dtype = prompts[0].dtype
    for prompt in prompts[1:]:
        dtype = torch.promote_types(dtype, prompt.dtype)
    return torch.stack([prompt.detach().to(device=prompts[0].device, dtype=dtype) for prompt in prompts])


def _labels(batch: Sequence[LabeledExample], device: torch.device | None = None) -> torch.Tensor:
    return torch.tensor([example.label for example in batch], dtype=torch.long, device=device)


def load_hub_dataset(dataset: str) -> Any:
    """All splits of a Hugging Face hub dataset, or a UserError saying how to work offline."""
    import datasets

    try:
        return datasets.load_dataset(dataset)
    except Exception as exc:  # datasets raises many types for "no network"
        raise hub_error(dataset, exc) from None


def hub_error(dataset: str, exc: Exception) -> UserError:
    return UserError(
        f"could not load {dataset} from the Hugging Face hub ({type(exc).__name__}): offline, "
        "pass --data-dir DIR (or set SCRUTABLE_DATA_DIR) to a folder laid out like ../shared/data"
    )
