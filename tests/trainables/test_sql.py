"""Tests for the RLPrompt soft Q-learning math and adaptor policy (scrutable.trainables.sql).

The loss is checked against formulas written out independently here in plain Python, on
cases small enough to follow by hand; the policy runs on a random 2-layer, width-32 GPT-2.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from scrutable.trainables.sql import (
    MLP_INIT_BIAS,
    AdaptorPolicy,
    SoftQImpl,
    polyak_update,
    shape_rewards,
    soft_q_loss,
    top_k_filter,
    zscore,
)

START = 0  # start token id of the tiny LM


def tiny_lm(seed: int = 0, initializer_range: float = 0.02) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=50,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        initializer_range=initializer_range,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def lively(policy: AdaptorPolicy, seed: int = 1) -> AdaptorPolicy:
    """Re-initialise the MLP with large weights, so its logits vary by state and token.

    On a random width-32 LM the reference init leaves every ReLU dead (pre-activations
    ~1e-5 against a -1e-4 bias), which would make gradient and top-k checks vacuous.
    """
    torch.manual_seed(seed)
    for layer in policy.mlp:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=1.0)
            nn.init.normal_(layer.bias, std=0.1)
    return policy


# ---------------------------------------------------------------------------------------
# An independent scalar reference of the loss terms, one sequence at a time
# ---------------------------------------------------------------------------------------


def lse(row: list[float]) -> float:
    return math.log(sum(math.exp(x) for x in row))


def terms(
    kind: str, online: list[list[float]], target: list[list[float]], actions: list[int], reward: float
) -> list[float]:
    """Per-step squared errors of one sequence (its length is len(actions))."""
    length = len(actions)
    q = [online[t][actions[t]] for t in range(length)]
    a = [q[t] - lse(online[t]) for t in range(length)]
    v_bar = [lse(target[t]) for t in range(length)]
    out = []
    for t in range(length):
        last = t == length - 1
        if kind == "v1":
            out.append((q[t] - (reward if last else v_bar[t + 1])) ** 2)
        elif kind == "v2":
            goal = reward - v_bar[t] if last else v_bar[t + 1] - v_bar[t]
            out.append((a[t] - goal) ** 2)
        elif kind == "v3":
            out.append((sum(a[t:]) - (reward - v_bar[t])) ** 2)
    return out


LOGITS = [[1.0, 2.0, 0.5], [0.3, -1.0, 2.2]]
TARGET = [[0.5, 1.5, -0.5], [1.0, 0.0, 0.7]]
ACTIONS = [1, 2]
REWARD = 1.7


def tiny_case() -> tuple[torch.Tensor, ...]:
    return (
        torch.tensor([LOGITS]),
        torch.tensor([TARGET]),
        torch.tensor([ACTIONS]),
        torch.tensor([REWARD]),
        torch.tensor([2]),
    )


def test_single_terms_match_hand_computed_values():
    # B=1, T=2, V=3 written out: e.g. v2 = (A_0 - (Vbar_1 - Vbar_0))^2 + (A_1 - (r - Vbar_1))^2.
    a0 = 2.0 - lse(LOGITS[0])
    a1 = 2.2 - lse(LOGITS[1])
    vb0, vb1 = lse(TARGET[0]), lse(TARGET[1])
    by_hand = {
        "v1": (2.0 - vb1) ** 2 + (2.2 - REWARD) ** 2,
        "v2": (a0 - (vb1 - vb0)) ** 2 + (a1 - (REWARD - vb1)) ** 2,
        "v3": (a0 + a1 - (REWARD - vb0)) ** 2 + (a1 - (REWARD - vb1)) ** 2,
    }
    for kind, expected in by_hand.items():
        assert sum(terms(kind, LOGITS, TARGET, ACTIONS, REWARD)) == pytest.approx(expected)
        loss, stats = soft_q_loss(*tiny_case(), impl=kind)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        assert stats["loss"] == pytest.approx(expected, rel=1e-5)
        assert stats["loss_normalized"] == pytest.approx(expected / 2, rel=1e-5)


def test_default_impl_averages_v2_and_v3_without_reversed_terms():
    # The reference calls the loss without a coefficient, which drops the reversed terms.
    v2 = sum(terms("v2", LOGITS, TARGET, ACTIONS, REWARD))
    v3 = sum(terms("v3", LOGITS, TARGET, ACTIONS, REWARD))
    loss, _ = soft_q_loss(*tiny_case())
    assert loss.item() == pytest.approx((v2 + v3) / 2, rel=1e-5)
    assert soft_q_loss(*tiny_case(), impl="v2_v2r")[0].item() == pytest.approx(v2, rel=1e-5)


def test_coefficient_mixes_in_reversed_terms():
    c = 0.3
    mixed = {}
    for kind in ("v2", "v3"):
        forward = sum(terms(kind, LOGITS, TARGET, ACTIONS, REWARD))
        reverse = sum(terms(kind, TARGET, LOGITS, ACTIONS, REWARD))  # roles swapped
        mixed[kind] = c * forward + (1 - c) * reverse
    loss, _ = soft_q_loss(*tiny_case(), impl="v2_v2r_v3_v3r", coefficient=c)
    assert loss.item() == pytest.approx((mixed["v2"] + mixed["v3"]) / 2, rel=1e-5)
    loss, _ = soft_q_loss(*tiny_case(), impl=SoftQImpl.V3_V3R, coefficient=c)
    assert loss.item() == pytest.approx(mixed["v3"], rel=1e-5)


def test_lengths_mask_steps_and_loss_is_batch_mean_of_step_sums():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    actions = torch.tensor([[0, 3, 1], [2, 2, 0]])
    rewards, lengths = torch.tensor([0.4, -1.3]), torch.tensor([3, 1])
    for kind in ("v1", "v2", "v3"):
        row_sums = [
            sum(
                terms(
                    kind, logits[b].tolist(), target[b].tolist(), actions[b, : lengths[b]].tolist(), rewards[b].item()
                )
            )
            for b in range(2)
        ]
        loss, _ = soft_q_loss(logits, target, actions, rewards, lengths, impl=kind)
        assert loss.item() == pytest.approx(sum(row_sums) / 2, rel=1e-5)

    # Anything past a row's length is ignored.
    poked_logits, poked_target = logits.clone(), target.clone()
    poked_logits[1, 1:] += 100.0
    poked_target[1, 1:] -= 50.0
    poked_actions = actions.clone()
    poked_actions[1, 1:] = 3
    for coefficient in (None, 0.5):
        before, before_stats = soft_q_loss(logits, target, actions, rewards, lengths, coefficient=coefficient)
        after, after_stats = soft_q_loss(
            poked_logits, poked_target, poked_actions, rewards, lengths, coefficient=coefficient
        )
        assert after.item() == pytest.approx(before.item(), rel=1e-6)
        assert after_stats == pytest.approx(before_stats, rel=1e-5)


def bellman_consistent(lengths: list[int], steps: int = 3, vocab: int = 5):
    """Random logits made soft-Bellman consistent: Q_t = V_{t+1}, last Q = reward."""
    torch.manual_seed(0)
    logits = torch.randn(len(lengths), steps, vocab)
    actions = torch.randint(vocab, (len(lengths), steps))
    rewards = torch.empty(len(lengths))
    for b, length in enumerate(lengths):
        # Backwards, because setting a chosen logit at t changes V_t, which step t-1 reads.
        for t in range(length - 2, -1, -1):
            logits[b, t, actions[b, t]] = logits[b, t + 1].logsumexp(dim=-1)
        rewards[b] = logits[b, length - 1, actions[b, length - 1]]
    return logits, actions, rewards, torch.tensor(lengths)


def test_loss_is_zero_for_bellman_consistent_logits_and_grows_with_reward_error():
    logits, actions, rewards, lengths = bellman_consistent([3, 2, 1])
    for impl in SoftQImpl:
        for coefficient in (None, 0.5):
            loss, _ = soft_q_loss(logits, logits.clone(), actions, rewards, lengths, impl=impl, coefficient=coefficient)
            assert loss.item() == pytest.approx(0.0, abs=1e-9), (impl, coefficient)
    # One unit of reward error: v2 sees it at the last step only, v3 at every step.
    off = rewards + 1.0
    assert soft_q_loss(logits, logits, actions, off, lengths, impl="v2")[0].item() == pytest.approx(1.0, rel=1e-5)
    assert soft_q_loss(logits, logits, actions, off, lengths, impl="v3")[0].item() == pytest.approx(
        lengths.float().mean().item(), rel=1e-5
    )


def test_loss_rejects_bad_inputs():
    logits, target, actions, rewards, lengths = tiny_case()
    with pytest.raises(ValueError, match="unknown soft-Q loss impl"):
        soft_q_loss(logits, target, actions, rewards, lengths, impl="v4")
    with pytest.raises(ValueError, match="lengths"):
        soft_q_loss(logits, target, actions, rewards, torch.tensor([0]))
    with pytest.raises(ValueError, match="lengths"):
        soft_q_loss(logits, target, actions, rewards, torch.tensor([3]))
    with pytest.raises(ValueError, match="target_logits"):
        soft_q_loss(logits, target[:, :1], actions, rewards, lengths)


# ---------------------------------------------------------------------------------------
# Rewards and target network
# ---------------------------------------------------------------------------------------


def test_zscore_whole_batch_uses_population_std_plus_eps():
    z = zscore(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    std = math.sqrt(1.25)  # population std of 1..4
    expected = [(x - 2.5) / (std + 1e-4) for x in (1.0, 2.0, 3.0, 4.0)]
    assert z.tolist() == pytest.approx(expected, rel=1e-6)


def test_zscore_per_group():
    rewards = torch.tensor([1.0, 5.0, 3.0, 10.0, 10.0])
    expected = [-1 / (1 + 1e-4), 0.0, 1 / (1 + 1e-4), 0.0, 0.0]  # groups: {1, 3}, {5}, {10, 10}
    assert zscore(rewards, torch.tensor([0, 1, 0, 2, 2])).tolist() == pytest.approx(expected)
    assert zscore(rewards, ["x", "y", "x", "z", "z"]).tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="groups"):
        zscore(rewards, ["x"])


def test_shape_rewards_maps_range_linearly():
    shaped = shape_rewards(torch.tensor([0.0, 0.5, 1.0, 2.0]), 0, 1, -20, 80)
    assert shaped.tolist() == pytest.approx([-20.0, 30.0, 80.0, 180.0])
    with pytest.raises(ValueError):
        shape_rewards(torch.tensor([1.0]), 1, 1, 0, 5)


def test_polyak_update_arithmetic():
    target, source = nn.Linear(3, 2), nn.Linear(3, 2)
    with torch.no_grad():
        target.weight.fill_(1.0)
        target.bias.fill_(-2.0)
        source.weight.copy_(torch.arange(6.0).view(2, 3))
        source.bias.fill_(2.0)
    polyak_update(target, source, rate=0.25)
    assert torch.allclose(target.weight, 0.75 + 0.25 * torch.arange(6.0).view(2, 3))
    assert torch.allclose(target.bias, torch.full((2,), -1.0))
    assert torch.equal(source.bias, torch.full((2,), 2.0))  # the source is untouched
    with pytest.raises(ValueError, match="rate"):
        polyak_update(target, source, rate=1.5)
    with pytest.raises(ValueError, match="differ"):
        polyak_update(target, nn.Sequential(source), rate=0.1)


def test_target_shares_the_lm_and_polyak_moves_only_the_mlp():
    policy = AdaptorPolicy(tiny_lm(), hidden_size=16)
    target = policy.make_target()
    assert target.lm is policy.lm
    assert not any(p.requires_grad for p in target.parameters())
    lm_before = [p.clone() for p in policy.lm.parameters()]
    with torch.no_grad():
        for p in policy.mlp.parameters():
            p.add_(1.0)
    old = [p.clone() for p in target.mlp.parameters()]
    polyak_update(target, policy, rate=0.1)
    for new, prev, src in zip(target.mlp.parameters(), old, policy.mlp.parameters(), strict=True):
        assert torch.allclose(new, 0.9 * prev + 0.1 * src)
    assert all(torch.equal(a, b) for a, b in zip(policy.lm.parameters(), lm_before, strict=True))


# ---------------------------------------------------------------------------------------
# Policy
# ---------------------------------------------------------------------------------------


def test_reference_init_gives_a_near_uniform_policy():
    policy = AdaptorPolicy(tiny_lm())
    assert policy.mlp[0].weight.shape == (2048, 32)
    assert torch.all(policy.mlp[2].bias == MLP_INIT_BIAS)
    assert policy.mlp[0].weight.abs().max() < 1e-5  # xavier_uniform with gain 1e-4
    logits = policy.forward_logits(torch.tensor([[5, 6, 7]]), START)
    probs = logits.softmax(dim=-1)
    assert torch.allclose(probs, torch.full_like(probs, 1 / 50), atol=1e-5)


def test_only_the_mlp_trains():
    policy = lively(AdaptorPolicy(tiny_lm(), hidden_size=16))
    target = policy.make_target()
    assert {name.split(".")[0] for name, p in policy.named_parameters() if p.requires_grad} == {"mlp"}
    policy.train()
    assert policy.mlp.training and not policy.lm.training

    ids, logits = policy.sample(4, 3, START, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target_logits = target.forward_logits(ids, START)
    loss, _ = soft_q_loss(logits, target_logits, ids, torch.randn(4), torch.full((4,), 3), coefficient=0.5)
    loss.backward()
    assert all(p.grad is None for p in policy.lm.parameters())
    assert all(p.grad is None for p in target.mlp.parameters())
    for name, p in policy.mlp.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_sample_shapes_vocab_restriction_and_determinism():
    policy = AdaptorPolicy(tiny_lm(), hidden_size=16, vocab_size=40)
    ids, logits = policy.sample(6, 4, START, top_k=256, generator=torch.Generator().manual_seed(3))
    assert ids.shape == (6, 4) and ids.dtype == torch.long
    assert logits.shape == (6, 4, 40)
    assert int(ids.max()) < 40
    again, _ = policy.sample(6, 4, START, top_k=256, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ids, again)


def test_cached_sampling_logits_equal_teacher_forced_logits():
    policy = lively(AdaptorPolicy(tiny_lm(), hidden_size=16, logit_bias=-10.0))
    ids, logits = policy.sample(5, 6, START, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(policy.forward_logits(ids, START), logits, atol=1e-5)
    greedy_ids, greedy_logits = policy.greedy(6, START)
    assert torch.equal(greedy_ids, greedy_logits.argmax(dim=-1))
    assert torch.allclose(policy.forward_logits(greedy_ids, START), greedy_logits, atol=1e-5)


def test_sampling_respects_top_k():
    policy = lively(AdaptorPolicy(tiny_lm(), hidden_size=16))
    ids, logits = policy.sample(64, 3, START, top_k=5, generator=torch.Generator().manual_seed(0))
    top5 = logits.topk(5, dim=-1).indices  # (B, L, 5)
    assert bool((top5 == ids.unsqueeze(-1)).any(dim=-1).all())
    assert ids.unique().numel() > 5  # the top-5 set differs by step, so this is not trivial
    one_ids, _ = policy.sample(3, 4, START, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(one_ids, policy.greedy(4, START, batch_size=3)[0])


def test_top_k_filter_keeps_ties_like_the_reference():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0]])
    inf = float("-inf")
    assert top_k_filter(logits, 2).tolist() == [[inf, 3.0, inf, 3.0]]
    assert top_k_filter(logits, 3).tolist() == [[inf, 3.0, 2.0, 3.0]]
    assert torch.equal(top_k_filter(logits, None), logits)
    assert torch.equal(top_k_filter(logits, 256), logits)


def test_checkpoint_round_trip_holds_only_the_mlp():
    policy = lively(AdaptorPolicy(tiny_lm(), hidden_size=16))
    state = policy.trainable_state_dict()
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    fresh = AdaptorPolicy(tiny_lm(), hidden_size=16)
    prompt = torch.tensor([[4, 9, 2]])
    assert not torch.allclose(fresh.forward_logits(prompt, START), policy.forward_logits(prompt, START))
    fresh.load_trainable_state_dict(state)
    assert torch.allclose(fresh.forward_logits(prompt, START), policy.forward_logits(prompt, START))


def test_soft_q_learning_on_a_bandit_raises_the_rewarded_token():
    """Reward 1 if the first sampled token is 3, else 0: the reference pipeline end to end.

    Larger LM head weights (initializer_range 0.3) let the adaptor move the logits within
    a few dozen steps; the learning rate is far above the reference's 5e-5 for the same reason.
    """
    policy = AdaptorPolicy(tiny_lm(initializer_range=0.3))
    target = policy.make_target()
    optimizer = torch.optim.Adam(policy.mlp.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)

    def p_token_3() -> float:
        with torch.no_grad():
            return policy.greedy(1, START)[1][0, 0].softmax(dim=-1)[3].item()

    before = p_token_3()
    for _ in range(40):
        polyak_update(target, policy)  # reference: before every step, rate 1e-3
        ids, logits = policy.sample(64, 2, START, generator=generator)
        with torch.no_grad():
            target_logits = target.forward_logits(ids, START)
        rewards = shape_rewards(zscore((ids[:, 0] == 3).float()), 0, 1, 0, 5)
        loss, _ = soft_q_loss(logits, target_logits, ids, rewards, torch.full((64,), 2))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(policy.mlp.parameters(), 5.0)
        optimizer.step()
    assert before == pytest.approx(1 / 50, rel=1e-2)
    assert p_token_3() > 0.1
