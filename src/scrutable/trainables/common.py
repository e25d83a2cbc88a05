"""What every prompt optimizer shares: the common config, the loop's set-up, evaluation,
resume and checkpoints.

A method module (`soft_prompt.py`, `pez.py`, `rlprompt.py`) holds its own config (adding
its fields to `TrainConfig`), its own step, and a `run(config, **io)` loop that reads top
to bottom. The loop talks to the outside only through the keywords of `RunIO`, so the same
loop runs in a test, in `scrutable train` and inside a Ray Tune trial:

- `report(Evaluation)` at every evaluation: one prompt's row, the checkpoint state, its card,
- `progress(step, values)` after every step (the CLI's progress bar; None elsewhere),
- a `Scorer` for perplexities (in process here; one shared Ray actor in a sweep),
- `state`, a checkpoint to resume from (`load_state`).

`Loop` is what every run shares: set-up, seeding, the schedule, resume and the result.

    loop = Loop(config, **io)
    prompt = ...; optimizer = ...   # may draw from loop.generator
    loop.start(prompt=prompt, optimizer=optimizer)
    while not loop.done:
        ... one step on loop.batch() ...
        if loop.step_finished({keys.TRAIN_LOSS: loss}):
            loop.evaluate(prompt, is_soft=True)
    return loop.result()
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, TypedDict

import torch

from scrutable.card import InterpretabilityCard, build_card
from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.metrics.perplexity import LocalScorer, Scorer
from scrutable.models import (
    DEFAULT_DTYPE,
    LanguageModel,
    accumulation_dtype,
    load_model,
    resolve_device,
)
from scrutable.tasks import Task, get_task, sample_batch
from scrutable.trainables.configs import TrainConfig as TrainConfig  # its home is torch-free
from scrutable.trainables.record import PromptRecord, better

Progress = Callable[[int, dict[str, float]], None]
STATE_FILE = "state.pt"
DIVERGED = 1e30  # |loss| or |reward| beyond this is an overflow on its way to inf


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
    metrics: dict[str, Any]  # one prompt's row (`PromptRecord.row`) plus the train/* means
    state: dict[str, Any]  # everything needed to resume exactly (`save_state`)
    card: InterpretabilityCard  # that prompt's card (the best prompt's on test in the final one)
    final: bool


Report = Callable[[Evaluation], None]


@dataclass
class TrainResult:
    metrics: dict[str, Any]  # the final row: the best prompt's dev and test numbers
    card: InterpretabilityCard  # the best prompt's card on the test split
    state: dict[str, Any] = field(repr=False)


def cached_model(name: str, data_dir: str | None, device: str = "cpu", dtype: str = DEFAULT_DTYPE) -> LanguageModel:
    """Frozen models are read-only, so one copy per process (and device and dtype) serves
    every run in it. `auto` is resolved first, so it shares the copy of what it resolves to."""
    return _cached_model(name, data_dir, str(resolve_device(device)), dtype)


@lru_cache(maxsize=4)
def _cached_model(name: str, data_dir: str | None, device: str, dtype: str) -> LanguageModel:
    return load_model(name, data_dir=data_dir, device=device, dtype=dtype)


def clear_model_cache() -> None:
    """Let go of the cached models (e.g. before loading another dtype onto a GPU)."""
    _cached_model.cache_clear()


def config_model(config: TrainConfig, name: str) -> LanguageModel:
    """One of the run's frozen models (task model, scorer, policy) on its device and dtype."""
    return cached_model(name, config.data_dir, config.device, config.dtype)


def setup(config: TrainConfig, scorer: Scorer | None = None) -> Setup:
    task = get_task(
        config.task,
        data_dir=config.data_dir,
        seed=config.data_seed,
        dev_pool=config.dev_pool,
        prefix_cache=config.prefix_cache,
    )
    lm = config_model(config, config.model)
    if scorer is None:
        scorer = LocalScorer(config_model(config, config.scorer))
    return Setup(task=task, lm=lm, scorer=scorer)


def empty_prompt_dev(config: TrainConfig, lm: LanguageModel) -> dict[str, float]:
    """The task model's dev metric and objective with no prompt at all, on the dev sample
    prompts are kept by (`baseline/*` keys): the score a trained prompt must beat to be worth
    reading (`sweep/frontier.py`). Measured once per process and setting (the trials of a
    sweep on one worker share it); empty for tasks without labels (Yelp's generation)."""
    setting = (config.task, config.model, config.data_dir, config.data_seed, config.dev_pool, config.eval_limit)
    key = (*setting, config.device, config.dtype)
    if key not in _EMPTY_PROMPT:
        # The plain path: the prefix cache splices a prompt between cached inputs and the
        # answer cue, and an empty prompt may leave it nothing to run.
        task = get_task(
            config.task, data_dir=config.data_dir, seed=config.data_seed, dev_pool=config.dev_pool, prefix_cache=False
        )
        if not getattr(task, "verbalizers", None):
            _EMPTY_PROMPT[key] = {}
        else:
            with torch.no_grad():
                empty = lm.embedding_matrix[:0]  # (0, D)
                found = task.evaluate(lm, empty, "dev", limit=config.eval_limit, batch_size=max(config.batch_size, 16))
            _EMPTY_PROMPT[key] = {
                keys.BASELINE_EMPTY_DEV: found.metric,
                keys.BASELINE_EMPTY_DEV_OBJECTIVE: found.objective,
            }
    return dict(_EMPTY_PROMPT[key])


_EMPTY_PROMPT: dict[tuple[Any, ...], dict[str, float]] = {}


def check_finite(value: float, what: str, step: int, config: TrainConfig) -> None:
    """NaN and overflow alike (an inf loss, or a value past 1e30) are a divergence."""
    if not math.isfinite(value) or abs(value) > DIVERGED:
        raise TrainingDiverged(
            f"training diverged: {what} became {value:g} at step {step}: lower learning_rate "
            f"(now {config.learning_rate:g}) or alpha (now {config.alpha:g})"
        )


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
    """(L, D) the tokens' embeddings, as a trainable copy: on the model's device, in float32
    when the model is in a half type (the optimizer's updates would round away in bfloat16)."""
    rows = lm.embedding_matrix[ids.to(lm.device)]
    return rows.detach().to(accumulation_dtype(rows.dtype), copy=True)


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
    std = float(lm.embedding_matrix.float().std())
    # Drawn on the CPU from the run's generator (its state is the checkpoint's), then moved.
    vectors = torch.randn(length, lm.hidden_size, generator=generator) * std
    return vectors.to(device=lm.device, dtype=accumulation_dtype(lm.dtype))


# ---------------------------------------------------------------------------------------
# The loop skeleton every method shares
# ---------------------------------------------------------------------------------------


def evaluate_prompt(
    s: Setup,
    config: TrainConfig,
    prompt: torch.Tensor,
    *,
    is_soft: bool,
    step: int,
    token_ids: torch.Tensor | None = None,
    split: str = "dev",
) -> tuple[PromptRecord, InterpretabilityCard]:
    """Measure one prompt (L, D) on a split: its record and card."""
    card = build_card(
        s.task,
        s.lm,
        s.scorer,
        prompt,
        is_soft=is_soft,
        split=split,
        limit=config.eval_limit if split == "dev" else config.test_limit,
        distance=config.distance,
        batch_size=max(config.batch_size, 16),
        token_ids=token_ids,
    )
    return PromptRecord.from_card(card, step, prompt if is_soft else None), card


class Stateful(Protocol):
    """A trainable part a checkpoint holds by its state dict: an optimizer, a module."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any, /) -> Any: ...


class RunIO(TypedDict, total=False):
    """The keywords of every method's `run(config, **io)`: how the loop meets its caller."""

    scorer: Scorer | None  # perplexities; None: the config's scorer, in process
    report: Report | None  # called with every `Evaluation`
    state: dict[str, Any] | None  # a checkpoint (`Evaluation.state`, `load_state`) to resume from
    progress: Progress | None  # called after every step with its `keys.TRAIN_*` values


class Loop:
    """What every method's run shares: the set-up (task, task model and scorer on the
    config's device and dtype, `setup`), the seeded data generator, the step count, running
    means of the step values, the evaluation schedule, the best prompt record, the reports,
    resuming from a checkpoint and the final result. A method owns its parameters and its
    step (the module docstring shows the shape of a run).

    The checkpoint (`Evaluation.state`) holds the parts named in `start` (a tensor as a
    copy, anything else as a copy of its `state_dict()`: a report may keep the state while
    training changes the parts in place), then the generator, the step and the best record.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        scorer: Scorer | None = None,
        report: Report | None = None,
        state: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.s = setup(config, scorer)
        self.config = config
        self.report = report
        self.progress = progress
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.best: PromptRecord | None = None
        self._state = state
        self._parts: dict[str, torch.Tensor | Stateful] = {}
        self._train: Sequence[Any] = ()
        self._totals: dict[str, list[float]] = {}
        self._final: tuple[dict[str, Any], InterpretabilityCard] | None = None

    def start(self, **parts: torch.Tensor | Stateful) -> None:
        """Train `parts` from here: restored with the generator, step and best record when
        the run resumes. Called once the parts are built, since building them may draw from
        the generator that a checkpoint then restores."""
        self._parts = parts
        state = self._state
        if state is not None:
            self.generator.set_state(state["generator"])
            self.step = int(state["step"])
            self.best = None if state.get("best") is None else PromptRecord.from_state(state["best"])
            for name, part in parts.items():
                if isinstance(part, torch.Tensor):
                    with torch.no_grad():
                        part.copy_(state[name])
                else:
                    part.load_state_dict(state[name])
        self._train = self.s.task.examples("train")

    @property
    def done(self) -> bool:
        return self.step >= self.config.steps

    def batch(self) -> list[Any]:
        """The next training batch, drawn from the run's generator."""
        return sample_batch(self._train, self.config.batch_size, self.generator)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """`optimizer.step()`, with an update too large for float32 reported as a divergence."""
        try:
            optimizer.step()
        except RuntimeError as exc:
            if "overflow" not in str(exc):
                raise
            raise TrainingDiverged(
                f"training diverged: the update overflowed float32 at step {self.step + 1}: lower learning_rate "
                f"(now {self.config.learning_rate:g})"
            ) from None

    def step_finished(self, values: Mapping[str, float]) -> bool:
        """Count one step and its values (`keys.TRAIN_*`); True when an evaluation is due."""
        self.step += 1
        for key, value in values.items():
            check_finite(value, key, self.step, self.config)
            self._totals.setdefault(key, []).append(value)
        if self.progress is not None:
            self.progress(self.step, {key.split("/")[-1]: value for key, value in values.items()})
        return self.step % self.config.eval_interval == 0 or self.step == self.config.steps

    def evaluate(self, prompt: torch.Tensor, *, is_soft: bool, token_ids: torch.Tensor | None = None) -> None:
        """Evaluate the current prompt on dev, keep it if it is the best so far, and report.

        Every row describes one prompt: the evaluated one, or at the last step the best
        one with its test numbers (`PromptRecord`)."""
        record, card = evaluate_prompt(
            self.s, self.config, prompt, is_soft=is_soft, step=self.step, token_ids=token_ids
        )
        became_best = better(record, self.best)
        if became_best:
            self.best = record
        final = self.step == self.config.steps
        if final:
            row, card = self._final_row()
        else:
            row = record.row(is_best=became_best)
        row.update({key: sum(v) / len(v) for key, v in self._totals.items() if v})
        row[keys.TRAIN_STEP] = self.step
        self._totals.clear()
        if self.report is not None:
            self.report(Evaluation(self.step, row, self.snapshot(), card, final=final))

    def _final_row(self) -> tuple[dict[str, Any], InterpretabilityCard]:
        if self._final is None:
            if self.best is None:
                raise UserError("no prompt was evaluated: resume from a state reported by this method")
            best = self.best
            _, card = evaluate_prompt(
                self.s,
                self.config,
                best.embeds(self.s.lm.embedding_matrix),
                is_soft=best.is_soft,
                step=best.step,
                token_ids=None if best.is_soft else torch.tensor(best.token_ids, device=self.s.lm.device),
                split="test",
            )
            row = {**best.with_test(card).row(is_best=True), **empty_prompt_dev(self.config, self.s.lm)}
            self._final = row, card
        return dict(self._final[0]), self._final[1]

    def snapshot(self) -> dict[str, Any]:
        parts = {
            name: part.detach().clone() if isinstance(part, torch.Tensor) else copy.deepcopy(part.state_dict())
            for name, part in self._parts.items()
        }
        return {
            **parts,
            "generator": self.generator.get_state(),
            "step": self.step,
            "best": None if self.best is None else self.best.to_state(),
        }

    def result(self) -> TrainResult:
        row, card = self._final_row()
        row[keys.TRAIN_STEP] = self.step
        return TrainResult(metrics=row, card=card, state=self.snapshot())
