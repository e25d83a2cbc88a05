"""The Yelp style-transfer task object: the Task protocol over data, scorers and generation.

`YelpTask` holds the splits (`yelp/data.py`), the lazily loaded MiniLM encoder and style
classifier (`yelp/style.py`, `yelp/scoring.py`) and each vocabulary's stop tokens
(`yelp/generation.py`). It has no differentiable loss (`supports_loss = False`).

Reward (RLPrompt's `PromptedTextStyleTransferReward`): for each prompt and input, sample
`num_samples` rewrites with top-k sampling, split them into `num_bootstraps` groups, take
the best 100 * joint of each group and average; the prompt's reward is the mean over inputs.
The reference then z-scores rewards per input across prompts; here the optimizer z-scores
the per-prompt rewards across the prompts of a step (`trainables/rlprompt.py`).

    task = make_yelp(Path("../shared/data"), seed=0)
    task.reward(lm, prompt_ids, task.examples("train")[:8], seed=0).rewards  # (P,)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from scrutable.errors import UserError
from scrutable.models import LanguageModel, SentenceEncoder, load_encoder
from scrutable.paths import DATA_DIR_ENV
from scrutable.tasks.base import Evaluated, RewardResult, Split, subset
from scrutable.tasks.yelp.data import DEV_SIZE, TransferExample, load_test, require_data_files, split_dev_pool
from scrutable.tasks.yelp.generation import generate, splice
from scrutable.tasks.yelp.scoring import TransferReport, bleu, score_grid, score_texts
from scrutable.tasks.yelp.style import StyleClassifier, load_style_classifier


def make_yelp(data_dir: Path | None, seed: int = 0) -> YelpTask:
    if data_dir is None:
        raise UserError(
            "the Yelp style-transfer splits (Shen et al. 2017, with Li et al. 2018 references) "
            f"are not on the Hugging Face hub: pass --data-dir DIR (or set {DATA_DIR_ENV}) to a "
            "folder laid out like ../shared/data"
        )
    return YelpTask(data_dir=data_dir, seed=seed)


@dataclass(eq=False)
class YelpTask:
    data_dir: Path
    seed: int = 0
    dev_size: int = DEV_SIZE  # held out of the dev pool, half per class
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
        require_data_files(self.yelp_dir)  # fail now, not in the middle of a sweep

    @property
    def yelp_dir(self) -> Path:
        return self.data_dir / "yelp"

    def examples(self, split: Split | str) -> list[TransferExample]:
        key = Split(split)
        if key not in self._cache:
            if key is Split.TEST:
                self._cache[key] = load_test(self.yelp_dir)
            else:
                train, dev = split_dev_pool(self.yelp_dir, self.seed, self.dev_size)
                self._cache[Split.TRAIN], self._cache[Split.DEV] = train, dev
        return self._cache[key]

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
        return score_texts(self.encoder, self.style_classifier, sources, outputs, [0] * len(outputs))[0]

    def style_scores(self, outputs: Sequence[str], target_labels: Sequence[int]) -> torch.Tensor:
        """(N,) probability that outputs[i] has sentiment target_labels[i]."""
        return score_texts(self.encoder, self.style_classifier, outputs, outputs, target_labels)[1]

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
        spliced = splice(lm, prompt_embeds, batch)
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
            bleu=bleu(examples, outputs),
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

    def _generate(
        self,
        lm: LanguageModel,
        prompt_embeds: torch.Tensor,
        batch: Sequence[TransferExample],
        num_samples: int,
        sample: bool,
        generator: torch.Generator,
    ) -> list[str]:
        """Rewrites with this task's settings; row (p * B + b) * S + s (`yelp/generation.py`)."""
        top_k = self.top_k if sample else None
        return generate(
            lm,
            prompt_embeds,
            batch,
            num_samples=num_samples,
            top_k=top_k,
            max_new_tokens=self.max_new_tokens,
            stop_masks=self._stop_masks,
            generator=generator,
        )

    def _score_grid(
        self, batch: Sequence[TransferExample], texts: list[str], num_prompts: int, num_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Content and style of generated texts, each (P, B, S)."""
        return score_grid(self.encoder, self.style_classifier, batch, texts, num_prompts, num_samples)
