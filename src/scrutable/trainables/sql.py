"""Soft Q-learning loss and MLP-adaptor policy of RLPrompt: the math, no training loop.

Paper: Deng et al. 2022, "RLPrompt: Optimizing Discrete Text Prompts with Reinforcement
Learning" (EMNLP 2022, arXiv:2205.12548). The loss is the on-policy soft Q-learning of
Guo et al. 2021, "Efficient (Soft) Q-Learning for Text Generation with Limited Good Data"
(arXiv:2106.07704), which RLPrompt reuses unchanged. This file follows the reference code,
github.com/mingkaid/rl-prompt, file by file:

- `soft_q_loss`    <- rlprompt/losses/sql_losses.py (`sql_loss_with_sparse_rewards`) and
                      rlprompt/losses/loss_utils.py (`mask_and_reduce`, `masked_reverse_cumsum`)
- `shape_rewards`  <- rlprompt/modules/module_utils.py (`get_reward_shaping_func`)
- `polyak_update`  <- rlprompt/modules/sql_module.py (`SQLModule._sync_target_model`)
- `zscore`         <- examples/few-shot-classification/fsc_reward.py and
                      examples/text-style-transfer/tst_reward.py (`compute_zscore`)
- `AdaptorPolicy`  <- rlprompt/models/lm_adaptor_model.py (`LMAdaptorModel`) and
                      rlprompt/models/model_utils.py (`_top_k_logits`)

The policy's logits are read as soft Q-values. For one prompt of length L (tokens a_0..a_{L-1},
reward r given only after the last token), with online logits and target-network logits:

    Q_t = logits[t, a_t]        V_t = logsumexp_v logits[t, v]        A_t = Q_t - V_t
    Vbar_t = logsumexp_v target_logits[t, v]

    v1 (soft Q-learning):        l_t = (Q_t - Qbar_t)^2,  Qbar_t = Vbar_{t+1}, Qbar_{L-1} = r
    v2 (single-step PCL):        l_t = (A_t - Abar_t)^2,  Abar_t = Vbar_{t+1} - Vbar_t,
                                                          Abar_{L-1} = r - Vbar_{L-1}
    v3 (multi-step PCL):         l_t = (sum_{s=t}^{L-1} A_s - (r - Vbar_t))^2
    "reversed" (v2r, v3r):       the same with the roles of logits and target_logits swapped
    v2_v2r = c * v2 + (1 - c) * v2r if a coefficient c is given, else plain v2 (same for v3)
    v2_v2r_v3_v3r = (v2_v2r + v3_v3r) / 2                                  (the default)

    loss = mean over the batch of sum_{t < L_b} l_{b,t}

Note that the reference never passes a coefficient (SQLModule calls the loss without one),
so with its default "v2_v2r_v3_v3r" the reversed terms are skipped and the loss it trains
with is (v2 + v3) / 2. `coefficient=None` here reproduces that; pass a float to add them.

Run the tests: `python -m pytest tests/trainables/test_sql.py -q`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from scrutable.trainables.sql_defaults import (  # the reference's defaults, torch-free for configs
    DEFAULT_IMPL,
    MLP_HIDDEN_SIZE,
    MLP_INIT_BIAS,
    MLP_INIT_GAIN,
    POLYAK_RATE,
    ZSCORE_EPS,
    SoftQImpl,
)

# ---------------------------------------------------------------------------------------
# Soft Q-learning loss with a sparse (terminal) reward
# ---------------------------------------------------------------------------------------

_RawLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _chosen(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return logits.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # (B, T)


def _is_last_step(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    return torch.arange(steps, device=lengths.device) == (lengths - 1).unsqueeze(1)  # (B, T)


def _within_length(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    return torch.arange(steps, device=lengths.device) < lengths.unsqueeze(1)  # (B, T)


def _next_step(values: torch.Tensor) -> torch.Tensor:
    # values[:, t + 1], with 0 past the end; the reference leaves the same zero there, and it
    # is either overwritten by the terminal target or masked out.
    return F.pad(values[:, 1:], (0, 1))  # (B, T)


def _soft_q_learning(
    logits: torch.Tensor,
    target_logits: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """v1: regress Q_t on Vbar_{t+1}, and the last Q on the reward."""
    q = _chosen(logits, actions)  # (B, T)
    v_target = target_logits.logsumexp(dim=-1)  # (B, T)
    q_target = torch.where(_is_last_step(lengths, q.shape[1]), rewards.unsqueeze(1), _next_step(v_target))
    return (q - q_target) ** 2


def _advantage_and_target_value(
    logits: torch.Tensor, target_logits: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A_t = Q_t - V_t of the taken actions and the target network's Vbar_t, both (B, T)."""
    advantage = _chosen(logits, actions) - logits.logsumexp(dim=-1)
    return advantage, target_logits.logsumexp(dim=-1)


def _single_step_pcl(
    logits: torch.Tensor,
    target_logits: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """v2: regress A_t = log pi(a_t|s_t) on Vbar_{t+1} - Vbar_t (r - Vbar_t at the end)."""
    advantage, v_target = _advantage_and_target_value(logits, target_logits, actions)
    advantage_target = torch.where(
        _is_last_step(lengths, advantage.shape[1]), rewards.unsqueeze(1) - v_target, _next_step(v_target) - v_target
    )
    return (advantage - advantage_target) ** 2


def _multi_step_pcl(
    logits: torch.Tensor,
    target_logits: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """v3: regress the summed future log-probs from step t on r - Vbar_t."""
    advantage, v_target = _advantage_and_target_value(logits, target_logits, actions)
    # Steps past the length are zeroed before the reversed cumsum so they add nothing.
    masked = advantage * _within_length(lengths, advantage.shape[1])  # (B, T)
    advantage_to_go = masked.flip(dims=[1]).cumsum(dim=1).flip(dims=[1])  # (B, T)
    return (advantage_to_go - (rewards.unsqueeze(1) - v_target)) ** 2


def _with_reversed(raw_loss: _RawLoss, coefficient: float | None) -> _RawLoss:
    """c * loss(online, target) + (1 - c) * loss(target, online); just the first if c is None."""

    def combined(
        logits: torch.Tensor,
        target_logits: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        lengths: torch.Tensor,
    ) -> torch.Tensor:
        forward = raw_loss(logits, target_logits, actions, rewards, lengths)
        if coefficient is None:
            return forward
        reverse = raw_loss(target_logits, logits, actions, rewards, lengths)
        return coefficient * forward + (1 - coefficient) * reverse

    return combined


def _raw_loss_for(impl: SoftQImpl, coefficient: float | None) -> _RawLoss:
    if impl is SoftQImpl.V1:
        return _soft_q_learning
    if impl is SoftQImpl.V2:
        return _single_step_pcl
    if impl is SoftQImpl.V3:
        return _multi_step_pcl
    if impl is SoftQImpl.V2_V2R:
        return _with_reversed(_single_step_pcl, coefficient)
    if impl is SoftQImpl.V3_V3R:
        return _with_reversed(_multi_step_pcl, coefficient)
    single, multi = (_with_reversed(_single_step_pcl, coefficient), _with_reversed(_multi_step_pcl, coefficient))
    return lambda *args: (single(*args) + multi(*args)) / 2


def _check_loss_inputs(
    logits: torch.Tensor,
    target_logits: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    lengths: torch.Tensor,
) -> None:
    if logits.ndim != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    if target_logits.shape != logits.shape:
        raise ValueError(
            f"target_logits shape {tuple(target_logits.shape)} differs from logits shape {tuple(logits.shape)}"
        )
    batch, steps, _ = logits.shape
    if actions.shape != (batch, steps):
        raise ValueError(f"actions must be (B, T) = {(batch, steps)}, got {tuple(actions.shape)}")
    if rewards.shape != (batch,) or lengths.shape != (batch,):
        raise ValueError(
            f"rewards and lengths must be (B,) = ({batch},), got {tuple(rewards.shape)} and {tuple(lengths.shape)}"
        )
    if bool((lengths < 1).any()) or bool((lengths > steps).any()):
        raise ValueError(f"lengths must lie in [1, T={steps}], got {lengths.tolist()}")


def soft_q_loss(
    logits: torch.Tensor,
    target_logits: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    lengths: torch.Tensor,
    impl: SoftQImpl | str = DEFAULT_IMPL,
    coefficient: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sparse-reward soft Q-learning loss (formulas in the module docstring).

    Args:
        logits: (B, T, V) online-policy logits at each prompt step (read as Q-values),
            including any logit bias. Gradients flow through these.
        target_logits: (B, T, V) target-network logits for the same steps. Normally
            computed without grad; the reference does not detach them either.
        actions: (B, T) long, the tokens that were taken.
        rewards: (B,) already stabilised/shaped terminal rewards.
        lengths: (B,) long, number of valid steps per row, each in [1, T].
        impl: which reference loss to use (`SoftQImpl` or its string).
        coefficient: weight of the forward term against the reversed one in
            "v2_v2r" / "v3_v3r" / "v2_v2r_v3_v3r"; None (the reference) drops the reversed.

    Returns:
        The scalar loss, sum over valid steps and mean over the batch, and detached
        statistics for logging (per-row time averages, then batch means).
    """
    try:
        impl = SoftQImpl(impl)
    except ValueError:
        raise ValueError(
            f"unknown soft-Q loss impl {impl!r}; choose one of {[member.value for member in SoftQImpl]}"
        ) from None
    _check_loss_inputs(logits, target_logits, actions, rewards, lengths)

    raw = _raw_loss_for(impl, coefficient)(logits, target_logits, actions, rewards, lengths)
    valid = _within_length(lengths, raw.shape[1])  # (B, T)
    per_row = torch.where(valid, raw, torch.zeros_like(raw)).sum(dim=1)  # (B,)
    loss = per_row.mean()

    with torch.no_grad():

        def time_mean(values: torch.Tensor) -> float:
            # The reference's masked mean: average the valid steps of each row, then the rows.
            summed = torch.where(valid, values, torch.zeros_like(values)).sum(dim=1)
            return float((summed / lengths).mean())

        q = _chosen(logits, actions)
        v = logits.logsumexp(dim=-1)
        log_probs = logits.log_softmax(dim=-1)
        stats = {
            "loss": float(loss),
            "loss_normalized": time_mean(raw),
            "sequence_length": float(lengths.float().mean()),
            "q": time_mean(q),
            "v": time_mean(v),
            "v_target": time_mean(target_logits.logsumexp(dim=-1)),
            "log_prob": time_mean(q - v),
            "entropy": time_mean(-(log_probs.exp() * log_probs).sum(dim=-1)),
        }
    return loss, stats


# ---------------------------------------------------------------------------------------
# Rewards: stabilisation and shaping
# ---------------------------------------------------------------------------------------


def zscore(
    rewards: torch.Tensor,
    groups: torch.Tensor | Sequence[Hashable] | None = None,
    eps: float = ZSCORE_EPS,
) -> torch.Tensor:
    """Standardise rewards within each group: (r - mean) / (std + eps), population std.

    groups=None is one group for the whole batch: what few-shot classification does (every
    prompt in the batch is scored on the same inputs). Text style transfer groups by
    source sentence. The reference then applies `shape_rewards` to the z-scores.
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be (B,), got shape {tuple(rewards.shape)}")
    if groups is None:
        return (rewards - rewards.mean()) / (rewards.std(correction=0) + eps)
    keys = groups.tolist() if isinstance(groups, torch.Tensor) else list(groups)
    if len(keys) != rewards.shape[0]:
        raise ValueError(f"groups has {len(keys)} entries for {rewards.shape[0]} rewards")
    standardised = torch.empty_like(rewards)
    for key in dict.fromkeys(keys):
        members = torch.tensor([k == key for k in keys], device=rewards.device)
        group = rewards[members]
        standardised[members] = (group - group.mean()) / (group.std(correction=0) + eps)
    return standardised


def shape_rewards(
    rewards: torch.Tensor, old_min: float, old_max: float, new_min: float, new_max: float
) -> torch.Tensor:
    """Map [old_min, old_max] linearly onto [new_min, new_max] (no clipping).

    Reference settings: few-shot classification [0, 1] -> [0, 5]; text style transfer
    [0, 1] -> [-20, 80]; SQLModuleConfig default [0, 100] -> [-10, 10].
    """
    if old_max == old_min:
        raise ValueError(f"old_min and old_max must differ, both are {old_min}")
    return (rewards - old_min) / (old_max - old_min) * (new_max - new_min) + new_min


# ---------------------------------------------------------------------------------------
# Target network
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, rate: float = POLYAK_RATE) -> None:
    """In place: target <- (1 - rate) * target + rate * source, parameter by parameter.

    Parameters are matched by name. A parameter object shared by both modules (the frozen
    LM behind a policy and its target) is skipped: the update would be the identity.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must lie in [0, 1], got {rate}")
    target_params = dict(target.named_parameters())
    source_params = dict(source.named_parameters())
    if target_params.keys() != source_params.keys():
        missing = sorted(target_params.keys() ^ source_params.keys())
        raise ValueError(f"target and source parameters differ: {missing[:5]}")
    for name, target_param in target_params.items():
        source_param = source_params[name]
        if target_param is source_param:
            continue
        target_param.copy_((1 - rate) * target_param + rate * source_param)


# ---------------------------------------------------------------------------------------
# Policy: frozen LM + trainable MLP on its last hidden state + frozen LM head
# ---------------------------------------------------------------------------------------


def top_k_filter(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Set logits below the k-th largest of their row to -inf; None or 0 keeps all.

    Ties with the k-th value are kept, as in the reference (and GPT-2's sample.py). A k
    above the vocabulary size keeps everything (the reference would raise instead).
    """
    if not top_k or top_k >= logits.shape[-1]:
        return logits
    kth_largest = torch.topk(logits, k=top_k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def sample_on(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """`torch.multinomial(probs, 1)` drawn from `generator` on its own device (a run keeps
    one CPU generator, whose state is in the checkpoint); the ids come back on probs' device.
    The same probabilities give the same draws on the CPU and on a GPU."""
    if generator is None or generator.device == probs.device:
        return torch.multinomial(probs, 1, generator=generator)
    return torch.multinomial(probs.to(generator.device), 1, generator=generator).to(probs.device)


class AdaptorPolicy(nn.Module):
    """RLPrompt's prompt policy: logits = lm_head(MLP(h_t)) + logit_bias.

    h_t is the frozen causal LM's last hidden state (after its final norm) at the previous
    prompt token; the MLP (Linear-ReLU-Linear, d -> hidden -> d) replaces it, it is not a
    residual; the frozen LM head maps the result to vocabulary logits. Only the MLP
    trains. Prompts start from `start_token_id` (the reference feeds "<|endoftext|>").

    The LM is frozen in place (eval mode, requires_grad False) and stays in eval mode when
    the policy is put in training mode. Checkpoints need only `trainable_state_dict()`.
    """

    def __init__(
        self,
        lm: PreTrainedModel,
        *,
        hidden_size: int = MLP_HIDDEN_SIZE,
        logit_bias: float = 0.0,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        head = lm.get_output_embeddings()
        if not isinstance(head, nn.Linear):
            raise ValueError(f"{type(lm).__name__} has no linear LM head to reuse")
        rows, model_dim = head.weight.shape
        if vocab_size is not None and not 0 < vocab_size <= rows:
            raise ValueError(f"vocab_size must lie in [1, {rows}] (LM head rows), got {vocab_size}")
        lm.eval()
        lm.requires_grad_(False)
        self.lm = lm
        self.hidden_size = hidden_size
        # LMAdaptorModelConfig.logit_bias: 0 by default, -10 for text style transfer. It
        # leaves the policy unchanged but shifts the Q-values the loss reads.
        self.logit_bias = logit_bias
        # The LM head may have rows no tokenizer produces; actions are the first rows only.
        self.vocab_size = rows if vocab_size is None else vocab_size
        # The trained MLP stays float32 when the frozen LM is bfloat16/float16: Adam's small
        # updates (lr 5e-5 on weights of ~1e-4) would round away in 8 bits of mantissa.
        trained_dtype = torch.promote_types(head.weight.dtype, torch.float32)
        self.mlp = nn.Sequential(nn.Linear(model_dim, hidden_size), nn.ReLU(), nn.Linear(hidden_size, model_dim)).to(
            device=head.weight.device, dtype=trained_dtype
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight, gain=MLP_INIT_GAIN)
                nn.init.constant_(layer.bias, MLP_INIT_BIAS)

    def train(self, mode: bool = True) -> AdaptorPolicy:
        super().train(mode)
        self.lm.eval()  # frozen backbone: never dropout
        return self

    # -- pieces ------------------------------------------------------------------------

    def _hidden_states(self, input_ids: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        # base_model skips the full-vocabulary head we would otherwise compute and discard.
        out = self.lm.base_model(input_ids=input_ids, cache=cache, use_cache=True)
        return out.last_hidden_state, out.cache  # (B, T, D), KV cache

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) LM hidden states -> (..., vocab_size) float32 policy logits, bias included
        (the LM head runs in the LM's dtype; the soft-Q loss reads the logits in float32)."""
        head = self.lm.get_output_embeddings()
        bias = None if head.bias is None else head.bias[: self.vocab_size]
        adapted = self.mlp(hidden.to(next(self.mlp.parameters()).dtype)).to(head.weight.dtype)
        return F.linear(adapted, head.weight[: self.vocab_size], bias).float() + self.logit_bias

    # -- public API ----------------------------------------------------------------------

    def forward_logits(self, prompt_ids: torch.Tensor, start_token_id: int) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) for given prompts (B, T): step t sees start + a_<t."""
        start = prompt_ids.new_full((prompt_ids.shape[0], 1), start_token_id)  # (B, 1)
        inputs = torch.cat([start, prompt_ids[:, :-1]], dim=1)  # (B, T)
        hidden, _ = self._hidden_states(inputs)  # (B, T, D)
        return self.logits_from_hidden(hidden)  # (B, T, V)

    def forward(self, prompt_ids: torch.Tensor, start_token_id: int) -> torch.Tensor:
        return self.forward_logits(prompt_ids, start_token_id)

    def sample(
        self,
        batch_size: int,
        length: int,
        start_token_id: int,
        *,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample prompts token by token: ids (B, L) and the full logits (B, L, V).

        Tokens are drawn from the top-k-filtered logits, but the returned logits are the
        unfiltered ones (bias included), as the reference feeds them to the loss. They
        carry gradients to the MLP unless called under `torch.no_grad()`.
        """
        return self._decode(batch_size, length, start_token_id, top_k=top_k, generator=generator, greedy=False)

    def greedy(self, length: int, start_token_id: int, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Argmax decoding (no top-k, as the reference's greedy_search): ids and logits."""
        return self._decode(batch_size, length, start_token_id, top_k=None, generator=None, greedy=True)

    def make_target(self) -> AdaptorPolicy:
        """A frozen copy for the target network that shares (does not copy) the LM."""
        target = copy.deepcopy(self, memo={id(self.lm): self.lm})
        target.requires_grad_(False)
        return target

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The MLP's weights: all a checkpoint needs (the LM is loaded separately)."""
        return self.mlp.state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.mlp.load_state_dict(state)

    def _decode(
        self,
        batch_size: int,
        length: int,
        start_token_id: int,
        *,
        top_k: int | None,
        generator: torch.Generator | None,
        greedy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.lm.get_output_embeddings().weight.device
        next_input = torch.full((batch_size, 1), start_token_id, dtype=torch.long, device=device)  # (B, 1)
        cache = None
        ids: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        for _ in range(length):
            hidden, cache = self._hidden_states(next_input, cache)  # (B, 1, D)
            step_logits = self.logits_from_hidden(hidden[:, -1])  # (B, V)
            if greedy:
                action = step_logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                probs = top_k_filter(step_logits.detach(), top_k).softmax(dim=-1)  # (B, V)
                action = sample_on(probs, generator)  # (B, 1)
            ids.append(action)
            logits.append(step_logits)
            next_input = action
        return torch.cat(ids, dim=1), torch.stack(logits, dim=1)  # (B, L), (B, L, V)
