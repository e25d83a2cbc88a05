"""Soft prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient
Prompt Tuning"): L free vectors in front of (or, for SST-2's template, inside) the input
of a frozen LM, trained on the task loss alone.

This is the unconstrained baseline: `alpha` is not in the loss, but every evaluation
still reports the prompt's unembedded tokens, their perplexity under the scorer and the
faithfulness measures, so the baseline sits on the same axes as PEZ and RLPrompt. For T5
the vectors go in front of the encoder input only (not also the decoder, a PEFT pitfall).
The reference trains with Adafactor at learning rate 0.3 (no relative step, no scaling).

    from scrutable.trainables.soft_prompt import SoftPromptConfig, run
    result = run(SoftPromptConfig(task="boolq", model="t5-small", scorer="gpt2-xl"))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers.optimization import Adafactor

from scrutable.metrics import keys
from scrutable.metrics.perplexity import Scorer
from scrutable.tasks import sample_batch
from scrutable.trainables.common import (
    Evaluation,
    Progress,
    Report,
    TrainConfig,
    TrainResult,
    check_finite,
    evaluate,
    initial_prompt,
    setup,
    with_train_values,
)


@dataclass(frozen=True)
class SoftPromptConfig(TrainConfig):
    learning_rate: float = 0.3
    optimizer: Literal["adafactor", "adamw", "adam"] = "adafactor"
    weight_decay: float = 0.0
    init: Literal["vocab", "text", "random"] = "vocab"
    init_text: str = ""


def make_optimizer(
    name: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "adafactor":
        return Adafactor(
            params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False, weight_decay=weight_decay
        )
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def run(
    config: SoftPromptConfig,
    *,
    scorer: Scorer | None = None,
    report: Report | None = None,
    state: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    # --- setup --------------------------------------------------------------------------
    s = setup(config, scorer)
    generator = torch.Generator().manual_seed(config.seed)
    prompt = torch.nn.Parameter(initial_prompt(s.lm, config, config.init, config.init_text, generator))
    optimizer = make_optimizer(config.optimizer, [prompt], config.learning_rate, config.weight_decay)
    step = 0
    if state is not None:
        with torch.no_grad():
            prompt.copy_(state["prompt"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step = int(state["step"])
    train = s.task.examples("train")

    def snapshot() -> dict[str, Any]:
        # Deep copies: a report may keep the state while training mutates these in place.
        return {
            "prompt": prompt.detach().clone(),
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "generator": generator.get_state(),
            "step": step,
        }

    # --- train --------------------------------------------------------------------------
    losses: list[float] = []
    while step < config.steps:
        batch = sample_batch(train, config.batch_size, generator)
        loss = s.task.loss(s.lm, prompt, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        check_finite(losses[-1], "the task loss", step, config)
        if progress is not None:
            progress(step, {"loss": losses[-1]})
        if step % config.eval_interval == 0 or step == config.steps:
            metrics, card = evaluate(s, config, prompt, is_soft=True)
            mean_loss = sum(losses) / len(losses)
            with_train_values(metrics, step, **{keys.TRAIN_LOSS: mean_loss, keys.TRAIN_TASK_LOSS: mean_loss})
            losses.clear()
            if step == config.steps:
                test_metrics, card = evaluate(s, config, prompt, is_soft=True, split="test")
                metrics.update({k: v for k, v in test_metrics.items() if k.startswith("task/")})
            if report is not None:
                report(Evaluation(step, metrics, snapshot(), card, final=step == config.steps))

    # --- cleanup ------------------------------------------------------------------------
    if state is not None and int(state["step"]) >= config.steps:  # resumed after the end
        metrics, _ = evaluate(s, config, prompt, is_soft=True)
        test_metrics, card = evaluate(s, config, prompt, is_soft=True, split="test")
        metrics.update({k: v for k, v in test_metrics.items() if k.startswith("task/")})
    return TrainResult(metrics=metrics, card=card, state=snapshot())
