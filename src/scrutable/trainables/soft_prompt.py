"""Soft prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient
Prompt Tuning"): L free vectors in front of (or, for SST-2's template, inside) the input
of a frozen LM, trained on the task loss alone.

This is the unconstrained baseline: `alpha` is not in the loss, but every evaluation
still reports the prompt's unembedded tokens, their perplexity under the scorer and the
faithfulness measures, so the baseline sits on the same axes as PEZ and RLPrompt. For T5
the vectors go in front of the encoder input only (not also the decoder, a PEFT pitfall).
The reference trains with Adafactor at learning rate 0.3 (no relative step, no scaling).
The soft prompt kept is the best one on the dev objective (`trainables/record.py`); its
card reports its vectors' norm next to the vocabulary's, and says when it left the
vocabulary's range (then every nearest token is far and the unembedding arbitrary).

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
    Loop,
    Progress,
    Report,
    TrainConfig,
    TrainResult,
    initial_prompt,
    setup,
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
    loop = Loop(s, config, report=report, progress=progress)
    prompt = torch.nn.Parameter(initial_prompt(s.lm, config, config.init, config.init_text, loop.generator))
    optimizer = make_optimizer(config.optimizer, [prompt], config.learning_rate, config.weight_decay)
    if loop.resume(state) is not None:
        assert state is not None
        with torch.no_grad():
            prompt.copy_(state["prompt"])
        optimizer.load_state_dict(state["optimizer"])
    train = s.task.examples("train")

    def method_state() -> dict[str, Any]:
        return {"prompt": prompt.detach().clone(), "optimizer": copy.deepcopy(optimizer.state_dict())}

    # --- train --------------------------------------------------------------------------
    while not loop.done:
        batch = sample_batch(train, config.batch_size, loop.generator)
        loss = s.task.loss(s.lm, prompt, batch)
        optimizer.zero_grad()
        loss.backward()
        loop.optimizer_step(optimizer)
        value = float(loss.detach())
        if loop.step_finished({keys.TRAIN_LOSS: value, keys.TRAIN_TASK_LOSS: value}):
            loop.evaluate(prompt, is_soft=True, method_state=method_state)

    # --- cleanup ------------------------------------------------------------------------
    return loop.result(method_state)
