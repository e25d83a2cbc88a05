"""RLPrompt (Deng et al. 2022, arXiv:2205.12548) with a perplexity term in the reward.

A policy writes hard prompts token by token: a frozen causal LM whose last hidden state
passes through a trainable MLP before the LM head (`sql.AdaptorPolicy`). Each step
(the reference's `SQLModule` + `Trainer`, github.com/mingkaid/rl-prompt):

1. move the target MLP towards the online one (Polyak, rate 1e-3), before every step;
2. sample P = `prompts_per_step` prompts of length L from the top-k policy and a batch
   of B train examples;
3. score all P x B pairs in one `task.reward(lm, ids (P, L), batch)` call, and all P
   prompts' perplexities in one `scorer.perplexity([...])` call (so a shared scorer actor
   can batch them);
4. turn both into one reward per prompt (below), z-score across the P prompts, shape;
5. soft Q-learning loss (`sql.soft_q_loss`) on the online logits from sampling and the
   target MLP's teacher-forced logits of the same ids; Adam with gradient-norm clipping.

Every `eval_interval` steps the greedy (argmax) prompt is evaluated on dev like any hard
prompt; the best one on the dev objective is kept (as PEZ does, whatever alpha;
`trainables/record.py`), and the final report gives its dev and test numbers. The state reported with each evaluation
(MLP, target MLP, Adam, generator, step, best prompt) resumes the run exactly when the
task's reward is deterministic (SST-2, BoolQ); Yelp samples its rewrites from its own seed
and call count, which a resumed run starts again.

Cost: with smollm2-135m as policy, task model and scorer, a step of 16 prompts x 16 SST-2
examples (L = 5) takes ~34 s on 2 CPU cores, 91% of it the task model's forward pass over
the 256 prompt-example pairs; sampling, the target pass, the scorer and the update are the
rest. Perplexities are computed at alpha = 0 too (reported as `train/perplexity`, ~1% of
a step with that scorer), so the unpenalised baseline shows how fluent its samples are.

Reward. r_task (P,) is the task's reward (SST-2: the gap reward, -180..200 per example);
t (P,) is the scorer's mean NLL of each prompt (`perplexity_term: log`, the log
perplexity, ~2-12 nats) or its perplexity (`raw`). The two have unrelated scales: across
the 16 prompts of a step (16 examples each) the SST-2 gap reward has a standard deviation
of 10-28 (mean 17) and the log perplexity of 0.9-1.7 nats (mean 1.2; smollm2-135m as
policy, task model and scorer, first 7 steps), so a raw `r_task - alpha * t` needs
alpha ~ 15 merely to weigh the two equally on SST-2, a different alpha on Yelp (0-100
reward), and another whenever the task model or batch size changes the spread. Hence the
default `perplexity_placement: after_zscore` standardises each term across the P prompts
of the step and then combines them:

    after_zscore (default):  r = shape( z(r_task) - alpha * z(t) )
    before_zscore:           r = shape( z(r_task - alpha * t) )
    zscore: false:           r = shape( r_task - alpha * t )      (either placement)

With after_zscore alpha is unit-free: alpha = 1 trades one standard deviation of task
reward for one of log perplexity, on every task, scorer and prompt length, which is what
a sweep over alpha needs; alpha = 0 is exactly the reference's shape(z(r_task)). A larger
alpha also widens the shaped rewards (~sqrt(1 + alpha^2) for uncorrelated terms), as a
larger penalty does in the raw form. `before_zscore` keeps the literal formula, with
alpha in task-reward units per nat. `log` is the default term because z-scoring removes
scale but not shape: perplexity is heavy-tailed (one gibberish prompt at 10^4 among
others at 10^2 takes nearly all the spread and leaves the rest tied), log perplexity is
not, and mean NLL is also what PEZ penalises.

z-score groups: every prompt of a step is scored on the same batch, so the whole step is
one group (the reference's few-shot classification). The reference's style transfer
z-scores per source sentence across prompts; that needs per-input rewards, which the Task
protocol averages away, so it lives in the task (`YelpTask.zscore_per_input`). Reference
style-transfer settings here: top_k 50, logit_bias -10, reward_shaping (0, 1, -20, 80).

Vocabularies: the sampled ids go to the task model unchanged, so the policy LM must share
its vocabulary (`vocab_signature`); other pairs are refused. Decoding and re-tokenising
would give prompts of varying length per row, which `task.reward`'s (P, L) ids cannot
carry, and would make the policy's actions differ from the tokens that were scored.
The scorer may use another vocabulary (prompts are then decoded and re-tokenised by it).

    from scrutable.trainables.rlprompt import RLPromptConfig, run
    result = run(RLPromptConfig(task="sst2", model="smollm2-135m", policy_model="smollm2-135m",
                                scorer="smollm2-135m", alpha=1.0, steps=200))

Tests: `python -m pytest tests/trainables/test_rlprompt.py -q`.
"""

from __future__ import annotations

from typing import Unpack

import torch

from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.metrics.perplexity import PerplexityResult, score_request
from scrutable.models import LanguageModel, ModelKind
from scrutable.trainables.common import Loop, RunIO, Setup, TrainResult, config_model
from scrutable.trainables.configs import CLASSIFICATION_SHAPING as CLASSIFICATION_SHAPING  # torch-free home
from scrutable.trainables.configs import RLPromptConfig as RLPromptConfig
from scrutable.trainables.sql import (
    AdaptorPolicy,
    polyak_update,
    shape_rewards,
    soft_q_loss,
    zscore,
)

# ---------------------------------------------------------------------------------------
# Pieces of a step
# ---------------------------------------------------------------------------------------


def load_policy_lm(s: Setup, config: RLPromptConfig) -> LanguageModel:
    """The policy's frozen LM: causal, and sharing the task model's vocabulary."""
    policy_lm = config_model(config, config.policy_model)
    if policy_lm.kind is not ModelKind.CAUSAL:
        raise UserError(
            f"policy_model {config.policy_model} is seq2seq: RLPrompt's policy needs a causal LM "
            "(distilgpt2, gpt2, smollm2-135m)"
        )
    if policy_lm.vocab_signature != s.lm.vocab_signature:
        raise UserError(
            f"policy_model {config.policy_model} and model {config.model} have different vocabularies: "
            "RLPrompt hands the policy's token ids to the task model, so set policy_model to a model "
            f"with {config.model}'s tokenizer (e.g. policy_model: {config.model})"
        )
    return policy_lm


def perplexity_terms(results: list[PerplexityResult], term: str) -> torch.Tensor:
    """(P,) the penalised quantity per prompt: mean NLL (log perplexity) or perplexity."""
    return torch.tensor([r.mean_nll if term == "log" else r.perplexity for r in results])


def combine_rewards(task_rewards: torch.Tensor, terms: torch.Tensor, config: RLPromptConfig) -> torch.Tensor:
    """(P,) shaped training rewards from task rewards (P,) and perplexity terms (P,).

    Formulas and the choice of default in the module docstring. alpha = 0 ignores the
    terms entirely (they are only reported), which is the reference's reward.
    """
    rewards = task_rewards.float()
    terms = terms.to(device=rewards.device, dtype=rewards.dtype)
    penalised = config.alpha > 0
    if config.zscore and config.perplexity_placement == "after_zscore":
        rewards = zscore(rewards)
        if penalised:
            rewards = rewards - config.alpha * zscore(terms)
    else:
        if penalised:
            rewards = rewards - config.alpha * terms
        if config.zscore:
            rewards = zscore(rewards)
    return shape_rewards(rewards, *config.reward_shaping)


@torch.no_grad()
def greedy_prompt(policy: AdaptorPolicy, length: int, start_token_id: int) -> torch.Tensor:
    ids, _ = policy.greedy(length, start_token_id)  # (1, L)
    return ids[0]  # (L,)


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


def run(config: RLPromptConfig, **io: Unpack[RunIO]) -> TrainResult:
    # --- setup --------------------------------------------------------------------------
    loop = Loop(config, **io)
    s = loop.s
    policy_lm = load_policy_lm(s, config)
    start = policy_lm.start_token_id
    with torch.random.fork_rng(devices=[]):  # seeded MLP init without touching global RNG
        torch.manual_seed(config.seed)
        policy = AdaptorPolicy(
            policy_lm.model,
            hidden_size=config.mlp_hidden_size,
            logit_bias=config.logit_bias,
            vocab_size=policy_lm.vocab_size,
        )
    target = policy.make_target()  # shares the frozen LM, copies the MLP
    optimizer = torch.optim.Adam(policy.mlp.parameters(), lr=config.learning_rate)
    loop.start(mlp=policy.mlp, target_mlp=target.mlp, optimizer=optimizer)  # the checkpoint's names
    device = policy_lm.device
    lengths = torch.full((config.prompts_per_step,), config.prompt_length, dtype=torch.long, device=device)  # (P,)

    # --- train --------------------------------------------------------------------------
    while not loop.done:
        polyak_update(target, policy, config.polyak_rate)  # SQLModule._pre_steps: before every step
        batch = loop.batch()
        ids, logits = policy.sample(
            config.prompts_per_step, config.prompt_length, start, top_k=config.top_k, generator=loop.generator
        )  # (P, L), (P, L, V) with grad
        requests = [score_request(row, s.lm, s.scorer.vocab_signature) for row in ids.tolist()]
        pending = s.scorer.submit_perplexity(requests)  # computed during the two forwards below
        with torch.no_grad():
            target_logits = target.forward_logits(ids, start)  # (P, L, V), teacher-forced
        scored = s.task.reward(s.lm, ids, batch)  # rewards, metric: (P,) each
        perplexities = pending.result()
        terms = perplexity_terms(perplexities, config.perplexity_term)
        rewards = combine_rewards(scored.rewards.to(device), terms, config)
        # The policy's logits are float32 whatever the LM's dtype (`sql.AdaptorPolicy`).
        loss, _ = soft_q_loss(logits, target_logits, ids, rewards, lengths, impl=config.sql_impl)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.mlp.parameters(), config.grad_clip)
        loop.optimizer_step(optimizer)
        values = {
            keys.TRAIN_REWARD: float(scored.rewards.mean()),
            keys.TRAIN_LOSS: float(loss.detach()),
            keys.TRAIN_TASK_METRIC: float(scored.metric.float().mean()),
            keys.TRAIN_PERPLEXITY: sum(r.perplexity for r in perplexities) / len(perplexities),
            keys.TRAIN_LOG_PERPLEXITY: sum(r.mean_nll for r in perplexities) / len(perplexities),
        }
        if loop.step_finished(values):
            ids_now = greedy_prompt(policy, config.prompt_length, start)  # (L,)
            loop.evaluate(s.lm.embedding_matrix[ids_now], is_soft=False, token_ids=ids_now)

    # --- cleanup ------------------------------------------------------------------------
    return loop.result()
