"""Yelp sentiment style transfer: rewrite a review sentence in the opposite sentiment.

The text style transfer task of RLPrompt (Deng et al. 2022, "RLPrompt: Optimizing Discrete
Text Prompts with Reinforcement Learning", `examples/text-style-transfer/` in
mingkaid/rl-prompt). A causal LM reads

    {prompt} "{sentence}" "

and its continuation up to the closing quote (or a newline) is the rewrite. As in the
reference, the text is cut after its first `.`, `!` or `?` and lowercased, and at most
max(1.5 n, n + 10) tokens are generated for an n-token sentence (capped at 48 here).
Generation is batched over prompts x examples x samples with a KV-cache loop over
left-padded input embeddings (see `tasks/inputs.py`).

Scores, each in [0, 1] per output (an empty rewrite scores 0 on both):
- content = max(0, cosine) of all-MiniLM-L6-v2 sentence embeddings of input and output
  (the reference uses BERTScore F1 of roberta-large, which is not available offline);
- style = probability of the target sentiment under a logistic regression on MiniLM
  embeddings, trained on the Yelp dev sentences and cached under
  `cache_dir()/yelp-style/` (the reference fine-tunes a BERT classifier);
- joint = (content + style) / 2, the task metric `joint_score` (RLPrompt's reward / 100);
- BLEU (sacrebleu, 0-100) against the human rewrites where an example has them (test).

Reward (RLPrompt's `PromptedTextStyleTransferReward`): for each prompt and input, sample
`num_samples` rewrites with top-k sampling, split them into `num_bootstraps` groups, take
the best 100 * joint of each group and average; the prompt's reward is the mean over inputs.
The reference then z-scores rewards per input across prompts; here the optimizer z-scores
the per-prompt rewards across the prompts of a step (`trainables/rlprompt.py`).

Data (`{data_dir}/yelp/`, the files of the rl-prompt repository): no train split is
available offline, so the dev files `sentiment.dev.{0,1}` (25,278 negative / 38,205
positive lines; 57,759 unique sentences with a single label) are the pool. Split `dev` is
a seeded, class-balanced sample of `dev_size` sentences held out of it, and `train` is the
rest. `test` is `sentiment.test.{0,1}` (500 + 500) with the line-aligned human rewrites
`reference.{0,1}` (Li et al. 2018). Labels: 0 = negative, 1 = positive; the target is
always the other label. No hub dataset holds these splits with their references (searched:
only the document-level `yelp_polarity` / `yelp_review_full` and unrelated uploads), so the
task needs a local data directory.

    task = get_task("yelp", data_dir="../shared/data")
    task.evaluate(lm, lm.embedding_matrix[prompt_ids], "dev", limit=50)
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sacrebleu
import torch

from scrutable.errors import UserError
from scrutable.models import LanguageModel, ModelKind, SentenceEncoder, load_encoder
from scrutable.paths import DATA_DIR_ENV, cache_dir, require_file
from scrutable.tasks.base import Evaluated, RewardResult, Split, subset
from scrutable.tasks.inputs import SplicedBatch, splice_prompt, token_ids

DATA_HINT = "point --data-dir at a folder laid out like ../shared/data"
# Yelp sentences are at most 15 words; the cap only guards against other data.
MAX_SENTENCE_TOKENS = 64
# The style classifier: 2,000 sentences per class reach ~93% test accuracy; more gains ~1
# point and costs a minute of encoding on 2 CPU cores.
STYLE_TRAIN_PER_CLASS = 2000
STYLE_SEED = 0
STYLE_CACHE_VERSION = 1  # bump when the classifier recipe changes


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TransferExample:
    text: str
    label: int  # sentiment of `text`: 0 negative, 1 positive
    references: tuple[str, ...] = ()  # human rewrites in the target sentiment

    @property
    def target_label(self) -> int:
        return 1 - self.label


def make_yelp(data_dir: Path | None, seed: int = 0) -> YelpTask:
    if data_dir is None:
        raise UserError(
            "the Yelp style-transfer splits (Shen et al. 2017, with Li et al. 2018 references) "
            f"are not on the Hugging Face hub: pass --data-dir DIR (or set {DATA_DIR_ENV}) to a "
            "folder laid out like ../shared/data"
        )
    return YelpTask(data_dir=data_dir, seed=seed)


def read_lines(path: Path) -> list[str]:
    require_file(path, DATA_HINT)
    with path.open(encoding="utf-8") as handle:
        return [line.strip() for line in handle]


def _require_data_files(root: Path) -> None:
    names = [f"sentiment.{part}.{label}" for part in ("dev", "test") for label in (0, 1)]
    for name in [*names, "reference.0", "reference.1"]:
        require_file(root / name, DATA_HINT)


# ------------------------------------------------------------------ style classifier


@dataclass(frozen=True)
class StyleClassifier:
    """Logistic regression on unit-norm MiniLM embeddings: p(positive) = sigmoid(e . w + b)."""

    weights: np.ndarray  # (H,)
    bias: float
    test_accuracy: float  # on sentiment.test.{0,1}
    train_size: int

    def positive_probability(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, H) embeddings -> (N,) probabilities of the positive class."""
        weights = torch.as_tensor(self.weights, dtype=embeddings.dtype)
        return torch.sigmoid(embeddings @ weights + self.bias)


def load_style_classifier(encoder: SentenceEncoder, yelp_dir: Path, encoder_name: str = "minilm") -> StyleClassifier:
    """The cached classifier for these data files and this encoder, trained on a miss."""
    path = cache_dir() / "yelp-style" / f"{_style_cache_key(yelp_dir, encoder_name)}.npz"
    hidden = int(encoder.model.config.hidden_size)
    if path.exists():
        try:
            # allow_pickle=False: the cache holds plain arrays only, never code.
            with np.load(path, allow_pickle=False) as stored:
                classifier = StyleClassifier(
                    weights=stored["weights"].astype(np.float32),
                    bias=float(stored["bias"]),
                    test_accuracy=float(stored["test_accuracy"]),
                    train_size=int(stored["train_size"]),
                )
            if classifier.weights.shape == (hidden,):
                return classifier
        except (OSError, KeyError, ValueError):
            pass  # unreadable or stale: retrain and overwrite below
    classifier = train_style_classifier(encoder, yelp_dir)
    _save_npz_atomically(
        path,
        weights=classifier.weights,
        bias=np.asarray(classifier.bias),
        test_accuracy=np.asarray(classifier.test_accuracy),
        train_size=np.asarray(classifier.train_size),
    )
    return classifier


def train_style_classifier(encoder: SentenceEncoder, yelp_dir: Path) -> StyleClassifier:
    """Fit on a balanced sample of the dev pool; measure accuracy on the 1,000 test sentences."""
    from sklearn.linear_model import LogisticRegression

    rng = random.Random(STYLE_SEED)
    texts: list[str] = []
    labels: list[int] = []
    for label in (0, 1):
        pool = [t for t in read_lines(yelp_dir / f"sentiment.dev.{label}") if t]
        chosen = rng.sample(pool, min(STYLE_TRAIN_PER_CLASS, len(pool)))
        texts += chosen
        labels += [label] * len(chosen)
    model = LogisticRegression(max_iter=2000)
    model.fit(encoder.encode(texts).numpy(), labels)

    test_texts: list[str] = []
    test_labels: list[int] = []
    for label in (0, 1):
        lines = [t for t in read_lines(yelp_dir / f"sentiment.test.{label}") if t]
        test_texts += lines
        test_labels += [label] * len(lines)
    accuracy = float(model.score(encoder.encode(test_texts).numpy(), test_labels))
    return StyleClassifier(
        weights=model.coef_[0].astype(np.float32),
        bias=float(model.intercept_[0]),
        test_accuracy=accuracy,
        train_size=len(texts),
    )


def _style_cache_key(yelp_dir: Path, encoder_name: str) -> str:
    digest = hashlib.sha256()
    recipe = f"v{STYLE_CACHE_VERSION}|{encoder_name}|{STYLE_TRAIN_PER_CLASS}|{STYLE_SEED}"
    digest.update(recipe.encode())
    for name in ("sentiment.dev.0", "sentiment.dev.1", "sentiment.test.0", "sentiment.test.1"):
        content = require_file(yelp_dir / name, DATA_HINT).read_bytes()
        digest.update(f"|{name}|{len(content)}|".encode())
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()[:20]


def _save_npz_atomically(path: Path, **arrays: np.ndarray) -> None:
    # Several Ray workers may train at once: each writes a private file and renames it,
    # so a reader never sees half a file (the copies are identical).
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, allow_pickle=False, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ------------------------------------------------------------------------- the task


@dataclass
class TransferReport:
    """What `evaluate_detailed` measured: means over examples, each in [0, 1] but BLEU."""

    joint: float
    content: float
    style: float
    bleu: float | None  # sacrebleu corpus BLEU (0-100) on examples with references
    samples: list[tuple[str, str]]  # the first few (input, rewrite) pairs


@dataclass(eq=False)
class YelpTask:
    data_dir: Path
    seed: int = 0
    dev_size: int = 100  # held out of the dev pool, half per class
    num_samples: int = 4  # rewrites sampled per prompt and input for the reward
    num_bootstraps: int = 1  # groups the samples are split into; best of each is averaged
    top_k: int = 10  # the reference's `task_top_k`
    max_new_tokens: int = 48
    encoder_name: str = "minilm"
    name: str = "yelp"
    metric_name: str = "joint_score"
    supports_loss: bool = False
    # Loaded lazily and kept: splits, scorers, per-vocabulary stop tokens, reward calls made.
    _cache: dict[Split, list[TransferExample]] = field(default_factory=dict, repr=False)
    _encoder: SentenceEncoder | None = field(default=None, repr=False)
    _classifier: StyleClassifier | None = field(default=None, repr=False)
    _stop_masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _reward_calls: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.num_bootstraps < 1:
            raise UserError("yelp: num_samples and num_bootstraps must be at least 1")
        if self.num_samples % self.num_bootstraps:
            raise UserError(
                f"yelp: num_samples ({self.num_samples}) must be a multiple of num_bootstraps ({self.num_bootstraps})"
            )
        if self.top_k < 1 or self.max_new_tokens < 1:
            raise UserError("yelp: top_k and max_new_tokens must be at least 1")
        _require_data_files(self.yelp_dir)  # fail now, not in the middle of a sweep

    @property
    def yelp_dir(self) -> Path:
        return self.data_dir / "yelp"

    # -- data

    def examples(self, split: Split | str) -> list[TransferExample]:
        key = Split(split)
        if key not in self._cache:
            if key is Split.TEST:
                self._cache[key] = self._load_test()
            else:
                train, dev = self._split_dev_pool()
                self._cache[Split.TRAIN], self._cache[Split.DEV] = train, dev
        return self._cache[key]

    def _split_dev_pool(self) -> tuple[list[TransferExample], list[TransferExample]]:
        # Unique sentences per class (the files repeat short ones such as "great food!"), minus
        # the few found in both files, so that no dev sentence is also a train sentence.
        pools = [
            list(dict.fromkeys(t for t in read_lines(self.yelp_dir / f"sentiment.dev.{label}") if t))
            for label in (0, 1)
        ]
        ambiguous = set(pools[0]) & set(pools[1])
        rng = random.Random(self.seed)
        train: list[TransferExample] = []
        dev: list[TransferExample] = []
        for label, pool in enumerate(pools):
            pool = [text for text in pool if text not in ambiguous]
            held_out = set(rng.sample(range(len(pool)), self.dev_size // 2))
            for index, text in enumerate(pool):
                (dev if index in held_out else train).append(TransferExample(text, label))
        return train, dev

    def _load_test(self) -> list[TransferExample]:
        examples = []
        for label in (0, 1):
            sources = read_lines(self.yelp_dir / f"sentiment.test.{label}")
            references = read_lines(self.yelp_dir / f"reference.{label}")
            if len(sources) != len(references):
                raise UserError(
                    f"{self.yelp_dir}/reference.{label} has {len(references)} lines but "
                    f"sentiment.test.{label} has {len(sources)}: they must be line-aligned"
                )
            examples += [
                TransferExample(text, label, (ref,)) for text, ref in zip(sources, references, strict=True) if text
            ]
        return examples

    # -- scorers

    @property
    def encoder(self) -> SentenceEncoder:
        if self._encoder is None:
            self._encoder = load_encoder(self.encoder_name)
        return self._encoder

    @property
    def style_classifier(self) -> StyleClassifier:
        if self._classifier is None:
            self._classifier = load_style_classifier(self.encoder, self.yelp_dir, self.encoder_name)
        return self._classifier

    @property
    def style_classifier_accuracy(self) -> float:
        """Test accuracy of the style classifier on sentiment.test.{0,1}."""
        return self.style_classifier.test_accuracy

    def content_scores(self, sources: Sequence[str], outputs: Sequence[str]) -> torch.Tensor:
        """(N,) content preservation in [0, 1] of outputs[i] with respect to sources[i]."""
        return self._score(sources, outputs, [0] * len(outputs))[0]

    def style_scores(self, outputs: Sequence[str], target_labels: Sequence[int]) -> torch.Tensor:
        """(N,) probability that outputs[i] has sentiment target_labels[i]."""
        return self._score(outputs, outputs, target_labels)[1]

    @torch.no_grad()
    def _score(
        self, sources: Sequence[str], outputs: Sequence[str], target_labels: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(content, style), each (N,), for aligned sources, outputs and target labels."""
        unique = list(dict.fromkeys(sources))  # the reward repeats each input P * S times
        row = {text: i for i, text in enumerate(unique)}
        source_embeds = self.encoder.encode(unique)[[row[s] for s in sources]]  # (N, H)
        output_embeds = self.encoder.encode(list(outputs))  # (N, H)
        content = (source_embeds * output_embeds).sum(-1).clamp(min=0.0, max=1.0)
        positive = self.style_classifier.positive_probability(output_embeds)
        targets = torch.tensor(list(target_labels), dtype=torch.bool)
        style = torch.where(targets, positive, 1.0 - positive)
        empty = torch.tensor([not text for text in outputs], dtype=torch.bool)
        return content.masked_fill(empty, 0.0), style.masked_fill(empty, 0.0)

    # -- the Task protocol

    def loss(self, lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[TransferExample]) -> torch.Tensor:
        raise UserError("style transfer has no differentiable loss; use method rlprompt")

    def output_logits(
        self, lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[TransferExample]
    ) -> torch.Tensor:
        """(P, B, V): the answer of a rewrite is its first token, over the whole vocabulary."""
        return self.vocab_logits(lm, prompt_embeds, batch)

    def vocab_logits(
        self, lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[TransferExample]
    ) -> torch.Tensor:
        """(P, B, V) next-token logits at the first generated position."""
        spliced = self._splice(lm, prompt_embeds, batch)
        out = lm.model(**spliced.model_kwargs(), logits_to_keep=1)
        logits = out.logits[:, -1, : lm.vocab_size]  # (P*B, V)
        return logits.reshape(spliced.num_prompts, spliced.batch_size, -1)

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
        """Mean joint score of greedy rewrites; already continuous, so it is the objective too."""
        report = self.evaluate_detailed(lm, prompt_embeds, split, limit=limit, batch_size=batch_size)
        return Evaluated(metric=report.joint, objective=report.joint)

    @torch.no_grad()
    def evaluate_detailed(
        self,
        lm: LanguageModel,
        prompt_embeds: torch.Tensor,
        split: Split | str,
        *,
        limit: int | None = None,
        batch_size: int = 16,
        num_samples: int = 1,
        num_shown: int = 5,
    ) -> TransferReport:
        """Scores of one prompt (L, D): greedy rewrites, or with `num_samples` > 1 the best
        of that many top-k samples by joint score (the reference's output selection)."""
        examples = subset(self.examples(split), limit)
        if not examples:
            raise UserError(f"split {split} of task {self.name} is empty")
        generator = torch.Generator().manual_seed(self.seed)
        sample = num_samples > 1
        outputs: list[str] = []
        contents, styles = [], []
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            texts = self._generate(lm, prompt_embeds, batch, num_samples, sample, generator)
            content, style = self._score_grid(batch, texts, 1, num_samples)  # (1, B, S) each
            best = ((content + style) / 2).argmax(-1, keepdim=True)  # (1, B, 1)
            contents.append(content.gather(-1, best).flatten())
            styles.append(style.gather(-1, best).flatten())
            outputs += [texts[b * num_samples + int(best[0, b, 0])] for b in range(len(batch))]
        content_all, style_all = torch.cat(contents), torch.cat(styles)
        return TransferReport(
            joint=float(((content_all + style_all) / 2).mean()),
            content=float(content_all.mean()),
            style=float(style_all.mean()),
            bleu=_bleu(examples, outputs),
            samples=[(ex.text, out) for ex, out in zip(examples, outputs, strict=True)][:num_shown],
        )

    @torch.no_grad()
    def reward(
        self,
        lm: LanguageModel,
        prompt_ids: torch.Tensor,
        batch: Sequence[TransferExample],
        *,
        seed: int | None = None,
    ) -> RewardResult:
        """Best-of-samples reward (0-100) per prompt; metric = mean joint score of all samples.

        Sampling uses a generator seeded by `seed`, or else by the task seed and a call count,
        so a fixed seed (or the same sequence of calls) gives the same rewards."""
        if seed is None:
            seed = self.seed * 1_000_003 + self._reward_calls
            self._reward_calls += 1
        generator = torch.Generator().manual_seed(seed)
        prompt_embeds = lm.embedding_matrix[prompt_ids]  # (P, L, D)
        num_prompts, samples = prompt_ids.shape[0], self.num_samples
        texts = self._generate(lm, prompt_embeds, batch, samples, True, generator)
        content, style = self._score_grid(batch, texts, num_prompts, samples)  # (P, B, S) each
        joint = (content + style) / 2
        groups = joint.reshape(num_prompts, len(batch), self.num_bootstraps, -1)  # (P, B, K, S/K)
        per_input = 100.0 * groups.amax(-1).mean(-1)  # (P, B)
        return RewardResult(rewards=per_input.mean(-1), metric=joint.mean((-1, -2)))

    # -- generation

    def _splice(self, lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[TransferExample]) -> SplicedBatch:
        if lm.kind is not ModelKind.CAUSAL:
            raise UserError(
                f"yelp style transfer generates with a causal LM; {lm.name} is {lm.kind.value}: "
                "use a GPT-2 or Llama-style model (e.g. smollm2-135m)"
            )
        # The reference template `{prompt} "{sentence}" "`: the prompt opens the input.
        after = [token_ids(lm, f' "{_sentence(lm, ex.text)}" "') for ex in batch]
        return splice_prompt(lm, [[] for _ in batch], after, prompt_embeds)

    def _generate(
        self,
        lm: LanguageModel,
        prompt_embeds: torch.Tensor,
        batch: Sequence[TransferExample],
        num_samples: int,
        sample: bool,
        generator: torch.Generator,
    ) -> list[str]:
        """Rewrites for every prompt, example and sample; row (p * B + b) * S + s."""
        spliced = self._splice(lm, prompt_embeds, batch)
        device = lm.device
        budget = torch.tensor([self._budget(lm, ex.text) for ex in batch], device=device)  # (B,)
        budget = budget.repeat_interleave(num_samples).repeat(spliced.num_prompts)  # (N,), N = P*B*S
        stop = self._stop_mask(lm).to(device)  # (V,)
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
            next_ids = _pick(logits, self.top_k if sample else None, generator)  # (A,)
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

    def _budget(self, lm: LanguageModel, text: str) -> int:
        # The reference's `max(1.5 n, n + 10)` new tokens for an n-token input.
        length = len(token_ids(lm, text))
        return min(self.max_new_tokens, max(math.ceil(1.5 * length), length + 10))

    def _stop_mask(self, lm: LanguageModel) -> torch.Tensor:
        """(V,) True for tokens that end a rewrite: any containing `"` or a newline, and
        special tokens (EOS)."""
        key = lm.vocab_signature
        if key not in self._stop_masks:
            pieces = lm.tokenizer.batch_decode([[i] for i in range(lm.vocab_size)])
            mask = torch.tensor(['"' in p or "\n" in p for p in pieces], dtype=torch.bool)
            special = [i for i in lm.tokenizer.all_special_ids if i < lm.vocab_size]
            mask[special] = True
            self._stop_masks[key] = mask
        return self._stop_masks[key]

    def _score_grid(
        self, batch: Sequence[TransferExample], texts: list[str], num_prompts: int, num_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Content and style of generated texts, each reshaped to (P, B, S)."""
        # Text row (p * B + b) * S + s belongs to example b.
        sources = [ex.text for ex in batch for _ in range(num_samples)] * num_prompts
        targets = [ex.target_label for ex in batch for _ in range(num_samples)] * num_prompts
        content, style = self._score(sources, texts, targets)
        shape = (num_prompts, len(batch), num_samples)
        return content.reshape(shape), style.reshape(shape)


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


def _bleu(examples: Sequence[TransferExample], outputs: Sequence[str]) -> float | None:
    pairs = [(out, ex.references) for ex, out in zip(examples, outputs, strict=True) if ex.references]
    if not pairs:
        return None
    streams = max(len(refs) for _, refs in pairs)
    # sacrebleu wants one stream per reference position; repeat the last reference where an
    # example has fewer (duplicates do not change BLEU's clipped counts).
    references = [[refs[min(i, len(refs) - 1)] for _, refs in pairs] for i in range(streams)]
    return float(sacrebleu.corpus_bleu([out for out, _ in pairs], references).score)
