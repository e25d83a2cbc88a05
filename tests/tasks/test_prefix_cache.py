"""The prefix cache (`tasks/prefix_cache.py`) must give the plain path's numbers.

Cached and plain logits, prompt gradients and RLPrompt rewards are compared in float32
(max abs difference below 1e-4) on tiny-gpt2 (learned positions) and SmolLM2 (rotary),
on batches whose inputs differ in length (left padding), for SST-2's template and for a
template with a suffix after the prompt whose length varies (padding inside the new part).
"""

from __future__ import annotations

import pytest
import torch

from scrutable.config import from_mapping
from scrutable.tasks import classification, get_task, prefix_cache
from scrutable.tasks.base import subset
from scrutable.tasks.classification import ClassificationTask, LabeledExample
from scrutable.tasks.inputs import token_ids
from scrutable.trainables.common import setup
from scrutable.trainables.soft_prompt import SoftPromptConfig

TOLERANCE = 1e-4


def _with_suffix(example, lm):
    """`{sentence} {prompt} Review {n words}:`: a suffix whose length differs per example."""
    sentence = token_ids(lm, example.text)
    return sentence, token_ids(lm, " Review" + " long" * (len(sentence) % 4) + ":")


def _task(template: str, data_dir) -> ClassificationTask:
    task = get_task("sst2", data_dir=data_dir)
    assert isinstance(task, ClassificationTask)
    if template == "suffix":
        task.formatter = _with_suffix
    return task


def _lengths_differ(task, lm, batch) -> bool:
    return len({len(task.formatter(e, lm)[0]) for e in batch}) > 1


def _both_paths(task, fn):
    task.prefix_cache = False
    plain = fn()
    task.prefix_cache = True
    return plain, fn()


def _check_logits_and_gradients(lm, data_dir, template):
    task = _task(template, data_dir)
    train = task.examples("train")
    batch = [train[i] for i in (3, 17, 0, 29, 8, 21)]  # a random subset of the pool
    assert _lengths_differ(task, lm, batch)
    generator = torch.Generator().manual_seed(0)
    prompts = lm.embedding_matrix[torch.randint(0, 5000, (3, 4), generator=generator)]  # (P, L, D)

    # The step: loss and its gradient with respect to one prompt.
    def loss_and_grad():
        prompt = prompts[0].clone().requires_grad_(True)
        loss = task.loss(lm, prompt, batch)
        loss.backward()
        return loss.detach(), prompt.grad

    (plain_loss, plain_grad), (cached_loss, cached_grad) = _both_paths(task, loss_and_grad)
    assert (cached_loss - plain_loss).abs() < TOLERANCE
    scale = plain_grad.abs().max()
    assert scale > 1e-3  # the comparison is not between zeros
    assert (cached_grad - plain_grad).abs().max() < min(TOLERANCE, 1e-3 * scale)

    # Several prompts at once over a pool batch, then over test sentences (encoded per batch).
    test = subset(task.examples("test"), 7)
    assert _lengths_differ(task, lm, test)
    for examples in (batch, test):
        with torch.no_grad():
            plain, cached = _both_paths(task, lambda examples=examples: task.output_logits(lm, prompts, examples))
        assert plain.shape == cached.shape == (3, len(examples), 2)
        assert (cached - plain).abs().max() < TOLERANCE
    with torch.no_grad():  # over the whole vocabulary (the output differential reads these)
        plain, cached = _both_paths(task, lambda: task.vocab_logits(lm, prompts, batch))
    assert plain.shape == cached.shape == (3, len(batch), lm.vocab_size)
    assert (cached - plain).abs().max() < TOLERANCE
    assert task.prefix_cache_bytes() > 0  # the train pool was kept


@pytest.mark.parametrize("template", ["sst2", "suffix"])
def test_cached_logits_and_prompt_gradients_match_plain_tiny_gpt2(template, tiny_gpt2, data_dir):
    _check_logits_and_gradients(tiny_gpt2, data_dir, template)


@pytest.mark.slow
@pytest.mark.smollm
@pytest.mark.parametrize("template", ["sst2", "suffix"])
def test_cached_logits_and_prompt_gradients_match_plain_smollm(template, smollm, data_dir):
    _check_logits_and_gradients(smollm, data_dir, template)


def _check_reward(lm, data_dir, num_prompts, batch_size):
    task = _task("sst2", data_dir)
    batch = subset(task.examples("train"), batch_size)
    prompt_ids = torch.randint(0, 5000, (num_prompts, 5), generator=torch.Generator().manual_seed(1))
    plain, cached = _both_paths(task, lambda: task.reward(lm, prompt_ids, batch))
    assert (cached.rewards - plain.rewards).abs().max() < TOLERANCE * 200  # rewards are gaps x 200
    torch.testing.assert_close(cached.metric, plain.metric)


def test_rlprompt_reward_over_prompts_and_examples_matches_plain_tiny_gpt2(tiny_gpt2, data_dir):
    _check_reward(tiny_gpt2, data_dir, num_prompts=16, batch_size=16)


@pytest.mark.slow
@pytest.mark.smollm
def test_rlprompt_reward_over_prompts_and_examples_matches_plain_smollm(smollm, data_dir):
    _check_reward(smollm, data_dir, num_prompts=4, batch_size=8)


def test_pool_is_encoded_once_and_never_modified(tiny_gpt2, data_dir, monkeypatch):
    task = _task("sst2", data_dir)
    calls = []
    real = prefix_cache.encode_prefixes
    monkeypatch.setattr(
        prefix_cache, "encode_prefixes", lambda lm, before: calls.append(len(before)) or real(lm, before)
    )
    train = task.examples("train")
    prompt = tiny_gpt2.embedding_matrix[:5].clone().requires_grad_(True)
    task.loss(tiny_gpt2, prompt, train[:8]).backward()
    stored = task._prefixes._encoded[tiny_gpt2]["train"]
    before = [k.clone() for k in stored.keys]
    task.loss(tiny_gpt2, prompt, train[20:]).backward()
    assert calls == [len(train)]  # the whole pool, once, for both batches
    assert all(torch.equal(a, b) for a, b in zip(before, stored.keys, strict=True))
    assert task.prefix_cache_bytes() == stored.nbytes


def test_evaluate_gives_the_same_accuracy_and_objective_with_and_without_cache(tiny_gpt2, data_dir):
    task = _task("sst2", data_dir)
    prompt = tiny_gpt2.embedding_matrix[torch.tensor([1169, 3807, 373])]
    for split, limit in (("dev", None), ("test", 40)):
        plain, cached = _both_paths(task, lambda s=split, n=limit: task.evaluate(tiny_gpt2, prompt, s, limit=n))
        assert plain.metric == cached.metric
        assert cached.objective == pytest.approx(plain.objective, abs=TOLERANCE)


def test_prompt_first_and_seq2seq_templates_run_the_plain_path(tiny_gpt2, tiny_t5, data_dir, monkeypatch):
    """BoolQ's causal template opens with the prompt; T5's encoder is bidirectional."""

    def refuse(*args):
        raise AssertionError("no prefix may be reused here")

    monkeypatch.setattr(classification, "run_on_prefixes", refuse)  # every cached call passes here
    monkeypatch.setattr(prefix_cache, "encode_prefixes", refuse)
    for name, lm in (("boolq", tiny_gpt2), ("sst2", tiny_t5), ("boolq", tiny_t5)):
        task = get_task(name, data_dir=data_dir)
        prompt = lm.embedding_matrix[:3]
        batch = task.examples("train")[:3]
        assert task.output_logits(lm, prompt, batch).shape == (1, 3, 2)


def test_config_switch_reaches_the_task(data_dir):
    values = {"task": "sst2", "model": "tiny-gpt2", "scorer": "tiny-gpt2", "data_dir": str(data_dir)}
    assert setup(from_mapping(SoftPromptConfig, values)).task.prefix_cache is True
    plain = from_mapping(SoftPromptConfig, {**values, "prefix_cache": "false"})
    assert setup(plain).task.prefix_cache is False


def test_inputs_of_one_example_alone_equal_the_model_on_plain_text(tiny_gpt2):
    """Independent of the task code: cached sentence + prompt tokens = the whole text at once."""
    sentence = token_ids(tiny_gpt2, "a gorgeous , witty film")
    prompt = token_ids(tiny_gpt2, " It was")
    prefixes = prefix_cache.encode_prefixes(tiny_gpt2, [sentence, sentence[:2]])
    hidden = prefix_cache.run_on_prefixes(tiny_gpt2, prefixes, [[], []], tiny_gpt2.embedding_matrix[prompt])
    logits = prefix_cache.head_logits(tiny_gpt2, hidden, None)
    with torch.no_grad():
        whole = tiny_gpt2.model(torch.tensor([sentence + prompt])).logits[0, -1, : tiny_gpt2.vocab_size]
        short = tiny_gpt2.model(torch.tensor([sentence[:2] + prompt])).logits[0, -1, : tiny_gpt2.vocab_size]
    assert (logits[0] - whole).abs().max() < TOLERANCE and (logits[1] - short).abs().max() < TOLERANCE


def test_equal_examples_share_one_pool_row(tiny_gpt2):
    """Examples are pool keys by value: equal examples share one row."""
    example = LabeledExample(text="fine", label=1)
    pools = prefix_cache.PrefixPools()
    found = pools.lookup(
        tiny_gpt2, [example, LabeledExample("fine", 1)], {"train": [example]}, lambda e: token_ids(tiny_gpt2, e.text)
    )
    assert found is not None and found.attention_mask.shape[0] == 2


def test_a_sample_of_a_large_dev_pool_is_encoded_once(tiny_gpt2, data_dir):
    """`dev_pool: glue` has 6,735 examples (over the kept-pool limit); the fixed sample that
    `eval_limit` evaluates is kept instead, so later evaluations reuse its encodings."""
    task = get_task("sst2", data_dir=data_dir, dev_pool="glue")
    prompt = tiny_gpt2.embedding_matrix[torch.tensor([1169, 3807])]
    first = task.evaluate(tiny_gpt2, prompt, "dev", limit=40, batch_size=16)
    held = task.prefix_cache_bytes()
    assert held > 0
    second = task.evaluate(tiny_gpt2, prompt, "dev", limit=40, batch_size=16)
    assert task.prefix_cache_bytes() == held and second == first
    plain = get_task("sst2", data_dir=data_dir, dev_pool="glue", prefix_cache=False)
    expected = plain.evaluate(tiny_gpt2, prompt, "dev", limit=40, batch_size=16)
    assert first.metric == expected.metric and abs(first.objective - expected.objective) < 1e-5
    task.evaluate(tiny_gpt2, prompt, "test", limit=40, batch_size=16)
    assert task.prefix_cache_bytes() == held  # test batches are encoded as they come, not kept
