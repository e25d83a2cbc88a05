"""Soft prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient
Prompt Tuning"): L free vectors in front of (or, for SST-2's template, inside) the input
of a frozen LM, trained on the task loss alone.

This is the unconstrained baseline: `alpha` is not in the loss, but every evaluation
still reports the prompt's unembedded tokens, their perplexity under the scorer and the
faithfulness measures, so the baseline sits on the same axes as PEZ and RLPrompt. For T5
the vectors go in front of the encoder input only (not also the decoder, a PEFT pitfall).
The reference trains T5 with Adafactor at learning rate 0.3, unscaled. Here the step is
relative to the prompt's RMS (Adafactor's `scale_parameter`) and the default 0.05, so
one default suits T5 (embedding RMS ~1) and GPT-2 / SmolLM2 (~0.02-0.14): unscaled 0.3
moves SmolLM2's coordinates by twice their RMS per step, and a relative 0.3 (or 0.1) still
took the tiny GPT-2's prompt past the largest vocabulary norm within 30 steps, where 0.05
learnt the keyword task and stayed in range (`tests/trainables/test_learning.py`).
The soft prompt kept is the best one on the dev objective (`trainables/record.py`); its
card reports its vectors' norm next to the vocabulary's, and says when it left the
vocabulary's range (then every nearest token is far and the unembedding arbitrary).

    from scrutable.trainables.soft_prompt import SoftPromptConfig, run
    result = run(SoftPromptConfig(task="boolq", model="t5-small", scorer="gpt2-xl"))
"""

from __future__ import annotations

from typing import Unpack

import torch
from transformers.optimization import Adafactor

from scrutable.metrics import keys
from scrutable.trainables.common import Loop, RunIO, TrainResult, initial_prompt
from scrutable.trainables.configs import SoftPromptConfig as SoftPromptConfig  # its home is torch-free


def make_optimizer(
    name: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float, relative: bool = True
) -> torch.optim.Optimizer:
    if name == "adafactor":
        # scale_parameter: each step moves a coordinate by at most lr x the prompt's RMS, so
        # lr 0.3 means the same on T5 (embedding RMS ~1-20) as on GPT-2 / SmolLM2 (~0.02-0.14),
        # and the vectors stay at the vocabulary's scale. Unscaled (the reference's T5
        # setting), lr 0.3 moves SmolLM2's coordinates by twice their RMS every step: after
        # one step the prompt's norm has left the vocabulary's range.
        return Adafactor(
            params, lr=lr, scale_parameter=relative, relative_step=False, warmup_init=False, weight_decay=weight_decay
        )
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def run(config: SoftPromptConfig, **io: Unpack[RunIO]) -> TrainResult:
    # --- setup --------------------------------------------------------------------------
    loop = Loop(config, **io)
    s = loop.s
    prompt = torch.nn.Parameter(initial_prompt(s.lm, config, config.init, config.init_text, loop.generator))
    optimizer = make_optimizer(
        config.optimizer, [prompt], config.learning_rate, config.weight_decay, config.relative_step_size
    )
    loop.start(prompt=prompt, optimizer=optimizer)

    # --- train --------------------------------------------------------------------------
    while not loop.done:
        loss = s.task.loss(s.lm, prompt, loop.batch())
        optimizer.zero_grad()
        loss.backward()
        loop.optimizer_step(optimizer)
        value = float(loss.detach())
        if loop.step_finished({keys.TRAIN_LOSS: value, keys.TRAIN_TASK_LOSS: value}):
            loop.evaluate(prompt, is_soft=True)

    # --- cleanup ------------------------------------------------------------------------
    return loop.result()
