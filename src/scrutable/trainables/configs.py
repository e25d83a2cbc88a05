"""The methods' training configs, in a torch-free module.

`TrainConfig` holds the fields every method has; each method's config adds its own and may
change defaults. The method modules (`soft_prompt.py`, `pez.py`, `rlprompt.py`) import their
config from here and re-export it. Why here: a sweep's driver builds and validates a trial
config for every searched range before Ray starts, and never trains; importing the method
modules for that would import torch and transformers (about 3 s of the driver's start-up).

    from scrutable.trainables.configs import PezConfig
    config = PezConfig(task="sst2", model="smollm2-135m", scorer="smollm2-135m", alpha=0.1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scrutable.metrics.distance import Distance
from scrutable.model_names import DEFAULT_DEVICE, DEFAULT_DTYPE, DeviceName, DtypeName
from scrutable.trainables.sql_defaults import DEFAULT_IMPL, MLP_HIDDEN_SIZE, POLYAK_RATE, SoftQImpl


@dataclass(frozen=True)
class TrainConfig:
    """Fields every method has. Method configs add theirs and may change defaults."""

    task: str = "sst2"
    model: str = "distilgpt2"
    scorer: str = "gpt2-xl"
    data_dir: str | None = None
    data_seed: int | None = None  # SST-2 few-shot split seed (13, 21, 42, 87, 100)
    dev_pool: str = "few_shot"  # the dev split prompts are selected on; "glue": SST-2's larger pool
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
    prefix_cache: bool = True  # reuse the task model's encoding of inputs before the prompt (tasks/prefix_cache.py)
    # Where the task model (and RLPrompt's policy, and `train`'s in-process scorer) runs: auto
    # is a visible GPU, else the CPU; in a sweep, the GPU Ray reserved for the trial, if any.
    device: DeviceName = DEFAULT_DEVICE
    # The frozen models' weights. Losses, log-softmaxes and the trainable prompt stay float32.
    dtype: DtypeName = DEFAULT_DTYPE

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


@dataclass(frozen=True)
class SoftPromptConfig(TrainConfig):
    learning_rate: float = 0.05
    optimizer: Literal["adafactor", "adamw", "adam"] = "adafactor"
    # Adafactor only: the step relative to the prompt's RMS (default), or absolute as in the
    # reference's T5 recipe (relative_step_size: false, learning_rate: 0.3).
    relative_step_size: bool = True
    weight_decay: float = 0.0
    init: Literal["vocab", "text", "random"] = "vocab"
    init_text: str = ""


@dataclass(frozen=True)
class PezConfig(TrainConfig):
    learning_rate: float = 0.1
    weight_decay: float = 0.1
    perplexity_source: Literal["scorer", "task_model"] = "scorer"
    perplexity_term: Literal["log", "raw"] = "log"
    relaxation_temperature: float = 0.1
    init: Literal["vocab", "text", "random"] = "vocab"
    init_text: str = ""
    # The step size over the run: constant (the reference) or cosine decay to 0 at the last step.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    # Evaluate the initial prompt too (step 0), so it competes with the trained ones and the
    # learning curve starts where training does.
    eval_at_start: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.relaxation_temperature > 0:
            raise ValueError(f"relaxation_temperature must be positive, got {self.relaxation_temperature}")


# examples/few-shot-classification/config.yaml: reward_shaping_old_min/max 0/1,
# new_min/max 0/5, applied to the z-scored rewards.
CLASSIFICATION_SHAPING = (0.0, 1.0, 0.0, 5.0)


@dataclass(frozen=True)
class RLPromptConfig(TrainConfig):
    """RLPrompt's settings; defaults are the reference's few-shot classification ones.

    The reference trains 12,000 steps; `steps` keeps the shared default so that a run
    started without thought stays short.
    """

    policy_model: str = "distilgpt2"  # causal LM behind the policy; `model` is the task model
    learning_rate: float = 5e-5
    mlp_hidden_size: int = MLP_HIDDEN_SIZE
    top_k: int = 256  # sample from the k most likely tokens; 0 samples from all
    logit_bias: float = 0.0  # added to the policy's Q-values (style transfer: -10)
    prompts_per_step: int = 16
    grad_clip: float = 5.0  # max gradient norm of the MLP
    polyak_rate: float = POLYAK_RATE
    sql_impl: SoftQImpl = DEFAULT_IMPL
    zscore: bool = True
    # (old_min, old_max, new_min, new_max): [old_min, old_max] maps linearly onto [new_min, new_max].
    reward_shaping: tuple[float, float, float, float] = CLASSIFICATION_SHAPING
    perplexity_term: Literal["log", "raw"] = "log"
    perplexity_placement: Literal["before_zscore", "after_zscore"] = "after_zscore"

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            object.__setattr__(self, "sql_impl", SoftQImpl(self.sql_impl))
        except ValueError:
            raise ValueError(f"sql_impl must be one of {[m.value for m in SoftQImpl]}, got {self.sql_impl!r}") from None
        if self.mlp_hidden_size < 1:
            raise ValueError(f"mlp_hidden_size must be positive, got {self.mlp_hidden_size}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 keeps every token), got {self.top_k}")
        if self.zscore and self.prompts_per_step < 2:
            raise ValueError(
                "prompts_per_step must be at least 2 when zscore is on (the z-score "
                f"of one prompt is always 0), got {self.prompts_per_step}"
            )
        if self.prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be positive, got {self.prompts_per_step}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip}")
        if not 0.0 <= self.polyak_rate <= 1.0:
            raise ValueError(f"polyak_rate must lie in [0, 1], got {self.polyak_rate}")
        if not math.isfinite(self.logit_bias):
            raise ValueError(f"logit_bias must be finite, got {self.logit_bias}")
        shaping = tuple(self.reward_shaping)
        if len(shaping) != 4 or not all(math.isfinite(v) for v in shaping):
            raise ValueError(
                "reward_shaping must be four finite numbers (old_min, old_max, new_min, "
                f"new_max), got {self.reward_shaping!r}"
            )
        if shaping[0] == shaping[1]:
            raise ValueError(f"reward_shaping's old_min and old_max must differ, got {self.reward_shaping!r}")
        object.__setattr__(self, "reward_shaping", tuple(float(v) for v in shaping))
        if self.perplexity_term not in ("log", "raw"):
            raise ValueError(f"perplexity_term must be 'log' or 'raw', got {self.perplexity_term!r}")
        if self.perplexity_placement not in ("before_zscore", "after_zscore"):
            raise ValueError(
                f"perplexity_placement must be 'before_zscore' or 'after_zscore', got {self.perplexity_placement!r}"
            )
