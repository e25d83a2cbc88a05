"""What every prompt optimizer shares: the common config, set-up, evaluation, checkpoints.

A method module (`soft_prompt.py`, `pez.py`, `rlprompt.py`) holds its own config (adding
its fields to `TrainConfig`) and a `run(config, ...)` loop that reads top to bottom. The
loop talks to the outside only through three callables, so the same loop runs in a test,
in `scrutable train` and inside a Ray Tune trial:

- `report(Evaluation)` at every evaluation: metrics, the checkpoint state, the card,
- `progress(step, values)` after every step (the CLI's progress bar; None elsewhere),
- a `Scorer` for perplexities (in process here; one shared Ray actor in a sweep).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from scrutable.card import InterpretabilityCard, build_card
from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.metrics.perplexity import LocalScorer, Scorer
from scrutable.metrics.unembed import Distance
from scrutable.models import LanguageModel, load_model
from scrutable.tasks import Task, get_task

Progress = Callable[[int, dict[str, float]], None]
STATE_FILE = "state.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Fields every method has. Method configs add theirs and may change defaults."""

    task: str = "sst2"
    model: str = "distilgpt2"
    scorer: str = "gpt2-xl"
    data_dir: str | None = None
    data_seed: int | None = None  # SST-2 few-shot split seed (13, 21, 42, 87, 100)
    prompt_length: int = 5
    alpha: float = 0.0  # weight of the perplexity term; 0 is the unconstrained baseline
    learning_rate: float = 1e-3
    steps: int = 100
    batch_size: int = 16
    eval_interval: int = 20
    eval_limit: int | None = None  # dev examples per evaluation; None = the whole split
    test_limit: int | None = None  # test examples in the final report; None = all
    seed: int = 0
    distance: Distance = Distance.EUCLIDEAN  # for unembedding in the reported metrics

    def __post_init__(self) -> None:
        positive = {
            "prompt_length": self.prompt_length,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "eval_interval": self.eval_interval,
            "learning_rate": self.learning_rate,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha}")
        for name in ("eval_limit", "test_limit"):
            limit = getattr(self, name)
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be at least 1 or null (all), got {limit}")


class TrainingDiverged(UserError):
    """The loss or reward became NaN/inf: a trial failure with a reason, not a crash."""


@dataclass
class Setup:
    task: Task
    lm: LanguageModel
    scorer: Scorer


@dataclass(frozen=True)
class Evaluation:
    step: int
    metrics: dict[str, Any]  # namespaced keys (`metrics/keys.py`) plus prompt text and ids
    state: dict[str, Any]  # everything needed to resume exactly (`save_state`)
    card: InterpretabilityCard  # the prompt's card (on test in the final evaluation)
    final: bool


Report = Callable[[Evaluation], None]


@dataclass
class TrainResult:
    metrics: dict[str, Any]  # the final report (dev and test)
    card: InterpretabilityCard  # the final prompt's card on the test split
    state: dict[str, Any] = field(repr=False)


@lru_cache(maxsize=4)
def cached_model(name: str, data_dir: str | None) -> LanguageModel:
    """Frozen models are read-only, so one copy per process serves every run in it."""
    return load_model(name, data_dir=data_dir)


def setup(config: TrainConfig, scorer: Scorer | None = None) -> Setup:
    task = get_task(config.task, data_dir=config.data_dir, seed=config.data_seed)
    lm = cached_model(config.model, config.data_dir)
    if scorer is None:
        scorer = LocalScorer(cached_model(config.scorer, config.data_dir))
    return Setup(task=task, lm=lm, scorer=scorer)


def check_finite(value: float, what: str, step: int, config: TrainConfig) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"{what} became {value} at step {step}: lower learning_rate (now {config.learning_rate}) "
            f"or alpha (now {config.alpha})"
        )


def evaluate(
    s: Setup, config: TrainConfig, prompt: torch.Tensor, *, is_soft: bool, split: str = "dev"
) -> tuple[dict[str, Any], InterpretabilityCard]:
    """Metrics of one prompt (L, D) under the namespaced keys, plus its card."""
    limit = config.eval_limit if split == "dev" else config.test_limit
    card = build_card(
        s.task,
        s.lm,
        s.scorer,
        prompt,
        is_soft=is_soft,
        split=split,
        limit=limit,
        distance=config.distance,
        batch_size=max(config.batch_size, 16),
    )
    metrics: dict[str, Any] = card.metrics(split_prefix=split)
    metrics.update(prompt_fields(card))
    return metrics, card


def prompt_fields(card: InterpretabilityCard) -> dict[str, Any]:
    return {"prompt/text": card.unembedded_text, "prompt/token_ids": card.token_ids}


def save_state(state: Mapping[str, Any], directory: str | Path) -> Path:
    path = Path(directory) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state), path)
    return path


def load_state(directory: str | Path) -> dict[str, Any]:
    """A checkpoint written by `save_state`; tensors and plain containers only."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: resume from a directory written by a trial")
    loaded: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return loaded


def init_from_tokens(lm: LanguageModel, ids: torch.Tensor) -> torch.Tensor:
    return lm.embedding_matrix[ids].detach().clone()


def initial_prompt(
    lm: LanguageModel, config: TrainConfig, init: str, init_text: str, generator: torch.Generator
) -> torch.Tensor:
    """(L, D) starting prompt.

    - "vocab": embeddings of L tokens sampled from the 5,000 lowest ids (Lester et al.
      sample from the most frequent tokens; low ids are the frequent ones in GPT-2's BPE and
      T5's SentencePiece vocabularies);
    - "text": the tokens of `init_text`, repeated or cut to length L;
    - "random": Gaussian with the embedding matrix's standard deviation.
    """
    length = config.prompt_length
    if init == "vocab":
        ids = torch.randint(0, min(5000, lm.vocab_size), (length,), generator=generator)
        return init_from_tokens(lm, ids)
    if init == "text":
        text_ids = lm.tokenizer(init_text, add_special_tokens=False)["input_ids"]
        if not text_ids:
            raise UserError("init is 'text' but init_text is empty: set init_text")
        repeated = (text_ids * (length // len(text_ids) + 1))[:length]
        return init_from_tokens(lm, torch.tensor(repeated))
    std = float(lm.embedding_matrix.std())
    return torch.randn(length, lm.hidden_size, generator=generator) * std


def with_train_values(metrics: dict[str, Any], step: int, **values: float) -> dict[str, Any]:
    metrics[keys.TRAIN_STEP] = step
    metrics.update(values)
    return metrics


BEST_DEV_KEYS = (keys.TASK_DEV, keys.TASK_DEV_UNEMBEDDED, keys.PERPLEXITY, keys.LOG_PERPLEXITY)


def best_hard_prompt_metrics(
    s: Setup, config: TrainConfig, best_ids: torch.Tensor, best_dev: Mapping[str, Any]
) -> tuple[dict[str, Any], InterpretabilityCard]:
    """Final numbers of the best hard prompt (PEZ, RLPrompt): its dev numbers, kept when it
    was found (`BEST_DEV_KEYS`), plus its test metric, text and test card."""
    test, card = evaluate(s, config, s.lm.embedding_matrix[best_ids], is_soft=False, split="test")
    out = dict(best_dev)
    out[keys.TASK_TEST] = out[keys.TASK_TEST_UNEMBEDDED] = test[keys.TASK_TEST]
    out.update(prompt_fields(card))
    return out, card
