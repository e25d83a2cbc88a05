"""Tests for the RLPrompt training loop (scrutable.trainables.rlprompt).

Tiny random GPT-2s (2 layers, width 32, the real GPT-2 tokenizer) serve as policy, task
model and scorer. Learning is checked on a synthetic task that a tiny policy can learn:
the reward of a prompt is the mean of a fixed per-token score that is linear in the
token embeddings, and the perplexity test adds a scorer whose LM head prefers tokens
along another embedding direction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch

import scrutable.tasks as tasks
from scrutable.config import from_mapping
from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.metrics.perplexity import LocalScorer
from scrutable.models import LanguageModel, tiny_gpt2
from scrutable.tasks.base import Evaluated, RewardResult
from scrutable.trainables import get_method
from scrutable.trainables.common import Evaluation, cached_model, load_state, save_state
from scrutable.trainables.rlprompt import (
    RLPromptConfig,
    combine_rewards,
    run,
)
from scrutable.trainables.sql import MLP_HIDDEN_SIZE, POLYAK_RATE, SoftQImpl, zscore

TINY = {"model": "tiny-gpt2", "policy_model": "tiny-gpt2"}


@pytest.fixture(scope="module")
def tiny_lm() -> LanguageModel:
    """The model `run` loads for "tiny-gpt2" (the same object, from the process cache)."""
    return cached_model("tiny-gpt2", None)


# ---------------------------------------------------------------------------------------
# Config and reward arithmetic
# ---------------------------------------------------------------------------------------


def test_defaults_are_the_reference_few_shot_classification_settings():
    config = RLPromptConfig()
    assert (config.learning_rate, config.grad_clip, config.top_k, config.prompts_per_step) == (5e-5, 5.0, 256, 16)
    assert (config.mlp_hidden_size, config.polyak_rate, config.prompt_length) == (MLP_HIDDEN_SIZE, POLYAK_RATE, 5)
    assert config.reward_shaping == (0.0, 1.0, 0.0, 5.0)
    assert config.sql_impl is SoftQImpl.V2_V2R_V3_V3R
    assert (config.perplexity_term, config.perplexity_placement, config.zscore) == ("log", "after_zscore", True)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompts_per_step", 1),
        ("prompts_per_step", 0),
        ("top_k", -1),
        ("grad_clip", 0.0),
        ("polyak_rate", 1.5),
        ("mlp_hidden_size", 0),
        ("logit_bias", math.inf),
        ("reward_shaping", (1.0, 1.0, 0.0, 5.0)),
        ("reward_shaping", (0.0, 1.0, 5.0)),
        ("perplexity_term", "sqrt"),
        ("perplexity_placement", "during_zscore"),
        ("sql_impl", "v9"),
        ("learning_rate", 0.0),
        ("alpha", -1.0),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RLPromptConfig(**{field: value})


def test_config_from_mapping_coerces_strings_and_rejects_unknown_keys():
    config_cls = get_method("rlprompt").config_cls
    assert config_cls is RLPromptConfig
    config = from_mapping(config_cls, {"sql_impl": "v1", "reward_shaping": "0,1,-20,80", "zscore": "false"})
    assert config.sql_impl is SoftQImpl.V1
    assert config.reward_shaping == (0.0, 1.0, -20.0, 80.0)
    assert config.zscore is False
    assert RLPromptConfig(prompts_per_step=1, zscore=False).prompts_per_step == 1
    with pytest.raises(UserError, match="did you mean 'top_k'"):
        from_mapping(config_cls, {"topk": 50})


def z(values: list[float]) -> list[float]:
    """(x - mean) / (population std + 1e-4), written out: the oracle for the module's zscore."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / (std + 1e-4) for v in values]


def test_combine_rewards_placements():
    task_list, nll_list = [-150.0, 20.0, 90.0, 180.0], [9.0, 4.0, 7.0, 3.0]
    task = torch.tensor(task_list)  # gap rewards: a scale of hundreds
    nll = torch.tensor(nll_list)  # log perplexities: a few nats
    base = dict(reward_shaping=(0.0, 1.0, 0.0, 5.0))  # shape(x) = (x - 0) / (1 - 0) * (5 - 0) + 0 = 5x

    def close(got: torch.Tensor, expected: list[float]) -> None:
        assert got.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)

    # alpha = 0 is the reference: 5 * z(task), whatever the perplexities.
    for placement in ("after_zscore", "before_zscore"):
        config = RLPromptConfig(alpha=0.0, perplexity_placement=placement, **base)
        close(combine_rewards(task, nll, config), [5 * r for r in z(task_list)])

    pairs = list(zip(task_list, nll_list, strict=True))
    after = RLPromptConfig(alpha=2.0, **base)  # 5 * (z(task) - 2 z(nll))
    expected = [5 * (r - 2.0 * t) for r, t in zip(z(task_list), z(nll_list), strict=True)]
    close(combine_rewards(task, nll, after), expected)
    before = RLPromptConfig(alpha=2.0, perplexity_placement="before_zscore", **base)  # 5 * z(task - 2 nll)
    close(combine_rewards(task, nll, before), [5 * r for r in z([r - 2.0 * t for r, t in pairs])])
    # No z-score: shape(task - 2 nll) from [0, 100] onto [-10, 10] = (x - 0) / 100 * 20 - 10.
    raw = RLPromptConfig(alpha=2.0, zscore=False, reward_shaping=(0.0, 100.0, -10.0, 10.0))
    close(combine_rewards(task, nll, raw), [(r - 2.0 * t) / 100 * 20 - 10 for r, t in pairs])
    # One value by hand: prompt 0 under `raw` is (-150 - 18) / 5 - 10 = -43.6.
    assert combine_rewards(task, nll, raw)[0].item() == pytest.approx(-43.6)

    # Why after_zscore is the default: at alpha = 1 the perplexity term moves the shaped
    # rewards as much as the task term does; in the raw form it is lost in the gap
    # reward's scale (0.09 against a spread of 10).
    one_after = combine_rewards(task, nll, RLPromptConfig(alpha=1.0))
    one_before = combine_rewards(task, nll, RLPromptConfig(alpha=1.0, perplexity_placement="before_zscore"))
    assert (one_after - 5 * zscore(task)).abs().max() > 3.0
    assert (one_before - 5 * zscore(task)).abs().max() < 0.15


# ---------------------------------------------------------------------------------------
# The loop on SST-2
# ---------------------------------------------------------------------------------------


def sst2_config(**overrides: Any) -> RLPromptConfig:
    values: dict[str, Any] = dict(
        task="sst2",
        prompt_length=3,
        prompts_per_step=4,
        batch_size=4,
        steps=2,
        eval_interval=1,
        eval_limit=8,
        test_limit=8,
        alpha=0.5,
        mlp_hidden_size=64,
        **TINY,
    )
    values.update(overrides)
    return RLPromptConfig(**values)


def test_two_steps_on_sst2_report_finite_metrics(tiny_lm):
    evaluations: list[Evaluation] = []
    progress: list[int] = []
    result = run(
        sst2_config(),
        scorer=LocalScorer(tiny_lm),
        report=evaluations.append,
        progress=lambda step, values: progress.append(step),
    )

    assert progress == [1, 2]
    assert [(e.step, e.final) for e in evaluations] == [(1, False), (2, True)]
    numeric = (
        keys.TRAIN_REWARD,
        keys.TRAIN_LOSS,
        keys.TRAIN_PERPLEXITY,
        keys.TRAIN_LOG_PERPLEXITY,
        keys.TRAIN_TASK_METRIC,
        keys.TASK_DEV,
        keys.PERPLEXITY,
        keys.LOG_PERPLEXITY,
        keys.DISTANCE_EUCLIDEAN,
    )
    for evaluation in evaluations:
        for key in numeric:
            assert math.isfinite(evaluation.metrics[key]), key
        assert len(evaluation.metrics["prompt/token_ids"]) == 3
        assert evaluation.metrics[keys.TRAIN_STEP] == evaluation.step
        assert evaluation.metrics[keys.DISTANCE_EUCLIDEAN] == 0.0  # a hard prompt is its own nearest tokens
    final = evaluations[-1].metrics
    assert math.isfinite(final[keys.TASK_TEST]) and final[keys.TASK_TEST] == final[keys.TASK_TEST_UNEMBEDDED]
    best = max(e.metrics[keys.TASK_DEV_OBJECTIVE] for e in evaluations)  # the final row is the best prompt
    assert final[keys.TASK_DEV_OBJECTIVE] == best and final[keys.PROMPT_IS_BEST] == 1.0
    assert result.metrics[keys.TASK_TEST] == final[keys.TASK_TEST]
    assert result.card.split == "test" and result.card.token_ids == final["prompt/token_ids"]
    assert set(result.state) == {
        "mlp",
        "target_mlp",
        "optimizer",
        "generator",
        "step",
        "best",
    }
    assert result.state["best"]["token_ids"] == final["prompt/token_ids"]


def test_refuses_a_policy_with_another_vocabulary(tiny_lm):
    config = sst2_config(model="tiny-t5")
    with pytest.raises(UserError, match="different vocabularies"):
        run(config, scorer=LocalScorer(tiny_lm))


def test_resume_is_exact(tiny_lm, tmp_path):
    scorer = LocalScorer(tiny_lm)
    evaluations: list[Evaluation] = []
    straight = run(sst2_config(steps=4, eval_interval=2), scorer=scorer, report=evaluations.append)
    half = run(sst2_config(steps=2, eval_interval=2), scorer=scorer)
    # Through disk, as a trial's checkpoint goes: tensors and plain containers only.
    save_state(half.state, tmp_path)
    resumed = run(sst2_config(steps=4, eval_interval=2), scorer=scorer, state=load_state(tmp_path))

    for part in ("mlp", "target_mlp"):
        for name, tensor in straight.state[part].items():
            assert torch.equal(tensor, resumed.state[part][name]), f"{part}.{name}"
            # The state reported at step 2 is a copy that training did not change later.
            assert torch.equal(evaluations[0].state[part][name], half.state[part][name]), f"{part}.{name}"
    assert not torch.equal(evaluations[0].state["mlp"]["2.bias"], straight.state["mlp"]["2.bias"])
    assert torch.equal(straight.state["generator"], resumed.state["generator"])
    assert resumed.state["step"] == 4
    assert resumed.metrics == straight.metrics


# ---------------------------------------------------------------------------------------
# Learning: rewards rise; a perplexity penalty lowers perplexity
# ---------------------------------------------------------------------------------------


def unit_direction(embeddings: torch.Tensor, seed: int, orthogonal_to: torch.Tensor | None = None) -> torch.Tensor:
    """A random unit direction in embedding space, orthogonal to the all-ones vector.

    The reference MLP init makes every policy logit about -1e-4 * sum(E_v), so the first
    top-k set lies along the all-ones direction; removing it starts the task from scratch.
    """
    direction = torch.randn(embeddings.shape[1], generator=torch.Generator().manual_seed(seed))
    direction -= direction.mean()
    if orthogonal_to is not None:
        direction -= (direction @ orthogonal_to) * orthogonal_to
    return direction / direction.norm()


def standardised_projection(embeddings: torch.Tensor, direction: torch.Tensor) -> tuple[float, float]:
    projection = embeddings @ direction  # (V,)
    return float(projection.mean()), float(projection.std())


class DirectionTask:
    """Reward = mean over the prompt of a per-token score, z(E_v . u) over the vocabulary.

    Linear in the embeddings, so a policy whose MLP can only shift its output (the tiny
    LM's ReLUs are dead at the reference init) can still learn it through the LM head.
    """

    name = "direction"
    metric_name = "score"
    supports_loss = False

    def __init__(self, embeddings: torch.Tensor, direction: torch.Tensor) -> None:
        self.direction = direction
        self.mean, self.std = standardised_projection(embeddings, direction)

    def examples(self, split: str) -> list[int]:
        return list(range(8))  # the reward ignores the examples

    def score(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        return ((prompt_embeds @ self.direction - self.mean) / self.std).mean(-1)  # (...,)

    def loss(self, lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        raise NotImplementedError

    def output_logits(self, lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        raise NotImplementedError

    def vocab_logits(self, lm: LanguageModel, prompt_embeds: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(
        self,
        lm: LanguageModel,
        prompt_embeds: torch.Tensor,
        split: str,
        *,
        limit: int | None = None,
        batch_size: int = 16,
    ) -> Evaluated:
        score = float(self.score(prompt_embeds))
        return Evaluated(metric=score, objective=score)

    def reward(self, lm: LanguageModel, prompt_ids: torch.Tensor, batch: Sequence[Any]) -> RewardResult:
        scores = self.score(lm.embedding_matrix[prompt_ids])  # (P,)
        return RewardResult(rewards=scores, metric=scores)


def fluency_scorer(embeddings: torch.Tensor, direction: torch.Tensor, data_dir) -> LocalScorer:
    """A tiny GPT-2 scorer whose LM head has a bias 1.5 * z(E_v . w): tokens along w are
    far more likely (log-probabilities differ by several nats across the vocabulary)."""
    lm = tiny_gpt2(data_dir, seed=1)
    mean, std = standardised_projection(embeddings, direction)
    head = torch.nn.Linear(embeddings.shape[1], embeddings.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(lm.model.get_input_embeddings().weight)
        head.bias.copy_(1.5 * (embeddings @ direction - mean) / std)
    head.requires_grad_(False)
    lm.model.lm_head = head
    return LocalScorer(lm)


@pytest.fixture(scope="module")
def direction_runs(tiny_lm, data_dir) -> dict[float, list[Evaluation]]:
    """30 steps on the direction task at alpha 0 and 4, same seeds: evaluations by alpha."""
    embeddings = tiny_lm.embedding_matrix.detach()
    task_direction = unit_direction(embeddings, seed=1)
    scorer = fluency_scorer(embeddings, unit_direction(embeddings, seed=2, orthogonal_to=task_direction), data_dir)
    task = DirectionTask(embeddings, task_direction)
    runs: dict[float, list[Evaluation]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(tasks.TASKS, "direction", lambda data_dir, seed, *options: task)
        for alpha in (0.0, 4.0):
            # A 10x wider reward shaping than the reference's (0..5) and a high learning rate
            # let the reward outweigh the loss's initial value offset (~log V per step) in a
            # few dozen steps instead of thousands.
            config = RLPromptConfig(
                task="direction",
                data_seed=0,
                steps=30,
                eval_interval=10,
                prompt_length=3,
                batch_size=2,
                learning_rate=1e-2,
                reward_shaping=(0.0, 1.0, 0.0, 50.0),
                alpha=alpha,
                mlp_hidden_size=256,
                **TINY,
            )
            runs[alpha] = []
            run(config, scorer=scorer, report=runs[alpha].append)
    return runs


def test_rewards_rise_on_a_learnable_task(direction_runs):
    rewards = [e.metrics[keys.TRAIN_REWARD] for e in direction_runs[0.0]]  # means over steps 1-10, 11-20, 21-30
    assert rewards[-1] > rewards[0] + 0.4, rewards
    # The top 0.5% of tokens by score (a top-256 set) average z ~ 2.8; random tokens 0.
    assert rewards[-1] > 1.2, rewards


def test_a_perplexity_penalty_lowers_prompt_perplexity(direction_runs):
    plain, penalised = (direction_runs[alpha][-1].metrics for alpha in (0.0, 4.0))
    assert penalised[keys.TRAIN_LOG_PERPLEXITY] < plain[keys.TRAIN_LOG_PERPLEXITY] - 1.5, (plain, penalised)
    assert penalised[keys.TRAIN_PERPLEXITY] < plain[keys.TRAIN_PERPLEXITY] / 5
    # The penalty costs task reward: the two directions are orthogonal.
    assert penalised[keys.TRAIN_REWARD] < plain[keys.TRAIN_REWARD]
