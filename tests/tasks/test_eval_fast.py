"""Fast evaluation (several prompts per pass, kept batch encodings, length-sorted batches)
must give the plain path's numbers.

The plain path is `prefix_cache=False`, one prompt at a time, in file order: the reference.
The fast path is `ClassificationTask.evaluate_prompts` on the prefix cache. Accuracy must be
identical and the objective (mean log-probability of the answer) within 1e-5, for one and
several prompts (of two lengths, a float32 soft prompt next to token embeddings), on a first
evaluation and on later ones that reuse kept encodings, under a memory budget too small for
the split; BoolQ (prompt first) and T5 (bidirectional encoder) fall back to the plain path
and must give its numbers as well. The card's two prompts go through the same pass.
"""

from __future__ import annotations

import pytest
import torch

from scrutable.card import build_card
from scrutable.metrics.perplexity import LocalScorer
from scrutable.models import tiny_gpt2
from scrutable.tasks import classification, get_task, prefix_cache
from scrutable.tasks.base import Evaluated, evaluate_prompts
from scrutable.tasks.classification import ClassificationTask

OBJECTIVE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def peaked_gpt2(data_dir):
    """A tiny GPT-2 whose answers depend on the input and the prompt (the default
    initialisation gives near-equal verbalizer logits and one class for every sentence)."""
    return tiny_gpt2(data_dir, seed=4, initializer_range=0.5)


def _task(name: str, data_dir, *, fast: bool, budget: int = prefix_cache.EVALUATION_CACHE_BYTES) -> ClassificationTask:
    """A task with its own kept batches (not the process's), so that no test sees another's."""
    task = get_task(name, data_dir=data_dir, prefix_cache=fast)
    assert isinstance(task, ClassificationTask)
    task.kept_batches = prefix_cache.BatchEncodings(budget)
    return task


def _prompts(lm, lengths=(5, 5, 3)) -> list[torch.Tensor]:
    """A soft prompt (float32, off the vocabulary) and hard prompts (token embeddings)."""
    generator = torch.Generator().manual_seed(1)
    hard = [lm.embedding_matrix[torch.randint(0, 5000, (n,), generator=generator)] for n in lengths]
    soft = hard[0] + 0.5 * torch.randn(hard[0].shape, generator=generator)
    return [soft, *hard[1:]]


def _count_encoded_inputs(monkeypatch) -> list[int]:
    """The number of inputs of every `encode_prefixes` call the task makes, as they happen."""
    calls: list[int] = []
    real = prefix_cache.encode_prefixes

    def counted(lm, before):
        calls.append(len(before))
        return real(lm, before)

    monkeypatch.setattr(classification, "encode_prefixes", counted)
    return calls


def _plain(lm, prompts, name, data_dir, split, limit) -> list[Evaluated]:
    """The reference: the plain path, one prompt at a time."""
    task = _task(name, data_dir, fast=False)
    return [task.evaluate(lm, prompt, split, limit=limit) for prompt in prompts]


def _assert_same(fast: list[Evaluated], plain: list[Evaluated]) -> float:
    """Identical accuracy, objective within the tolerance; returns the largest difference."""
    assert [f.metric for f in fast] == [p.metric for p in plain]
    worst = max(abs(f.objective - p.objective) for f, p in zip(fast, plain, strict=True))
    assert worst < OBJECTIVE_TOLERANCE
    return worst


def test_one_prompt_on_the_whole_test_split_equals_the_plain_path(peaked_gpt2, data_dir):
    prompt = _prompts(peaked_gpt2)[1]
    plain = _plain(peaked_gpt2, [prompt], "sst2", data_dir, "test", None)
    task = _task("sst2", data_dir, fast=True)
    first = task.evaluate(peaked_gpt2, prompt, "test")
    assert task.evaluation_batches_bytes() > 0  # the tiny model's test split fits the default budget
    again = task.evaluate(peaked_gpt2, prompt, "test")  # every batch from the kept encodings
    _assert_same([first], plain)
    assert again == first
    assert 0.2 < first.metric < 0.8  # the model's answers vary: equal accuracies are a real check


def test_several_prompts_in_one_pass_equal_each_alone_on_the_plain_path(peaked_gpt2, data_dir, monkeypatch):
    prompts = _prompts(peaked_gpt2)
    plain = _plain(peaked_gpt2, prompts, "sst2", data_dir, "test", 200)
    assert len({p.metric for p in plain}) > 1  # the prompts differ in what they do

    calls = _count_encoded_inputs(monkeypatch)
    task = _task("sst2", data_dir, fast=True)
    fast = task.evaluate_prompts(peaked_gpt2, prompts, "test", limit=200)
    _assert_same(fast, plain)
    assert sum(calls) == 200  # each sentence encoded once for all three prompts
    stacked = task.evaluate_prompts(peaked_gpt2, torch.stack(prompts[:2]), "test", limit=200)  # (P, L, D)
    _assert_same(stacked, plain[:2])
    assert sum(calls) == 200  # the second evaluation reused every batch


def test_kept_encodings_stay_within_a_budget_smaller_than_the_split(peaked_gpt2, data_dir, monkeypatch):
    """A budget of a quarter of the split's encodings: the first evaluation keeps the batches
    that fit (the shortest, evaluated first); later ones reuse those and encode the rest
    without evicting them (plain LRU over a repeated scan would reuse nothing)."""
    calls = _count_encoded_inputs(monkeypatch)
    probe = _task("sst2", data_dir, fast=True)
    probe.evaluate(peaked_gpt2, _prompts(peaked_gpt2)[1], "test", limit=200)
    whole = probe.evaluation_batches_bytes()
    budget = whole // 4
    prompts = _prompts(peaked_gpt2)
    plain = _plain(peaked_gpt2, prompts, "sst2", data_dir, "test", 200)

    task = _task("sst2", data_dir, fast=True, budget=budget)
    calls.clear()
    encoded = []
    for _ in range(3):
        _assert_same(task.evaluate_prompts(peaked_gpt2, prompts, "test", limit=200), plain)
        assert 0 < task.evaluation_batches_bytes() <= budget
        encoded.append(sum(calls))
        calls.clear()
    kept_batches = len(task.kept_batches)
    assert encoded[0] == 200 and 0 < kept_batches < 13
    assert encoded[1] == encoded[2] == 200 - 16 * kept_batches  # the short batches come first and stay


def test_a_new_task_reuses_the_batches_the_process_kept(peaked_gpt2, data_dir, monkeypatch):
    """The trials a worker runs one after another share the test encodings: the next trial's
    task (a new object) encodes nothing that the one before it kept."""
    first, second = (get_task("sst2", data_dir=data_dir) for _ in range(2))
    assert first.kept_batches is second.kept_batches is prefix_cache.shared_batch_encodings()
    prompt = _prompts(peaked_gpt2)[2]
    expected = first.evaluate(peaked_gpt2, prompt, "test", limit=64)
    calls = _count_encoded_inputs(monkeypatch)
    assert second.evaluate(peaked_gpt2, prompt, "test", limit=64) == expected
    assert calls == []


def test_the_card_scores_its_two_prompts_in_one_pass(peaked_gpt2, data_dir):
    soft = _prompts(peaked_gpt2)[0]
    task = _task("sst2", data_dir, fast=True)
    card = build_card(task, peaked_gpt2, LocalScorer(peaked_gpt2), soft, is_soft=True, split="test", limit=96)
    hard = peaked_gpt2.embedding_matrix[torch.tensor(card.token_ids)]
    plain = _plain(peaked_gpt2, [soft, hard], "sst2", data_dir, "test", 96)
    soft_found = Evaluated(card.metric_soft, card.objective_soft)
    _assert_same([soft_found, Evaluated(card.metric_unembedded, card.objective_unembedded)], plain)


@pytest.mark.parametrize(("name", "model"), [("boolq", "gpt2"), ("boolq", "t5"), ("sst2", "t5")])
def test_prompt_first_and_seq2seq_tasks_fall_back_to_the_plain_path(name, model, peaked_gpt2, tiny_t5, data_dir):
    lm = peaked_gpt2 if model == "gpt2" else tiny_t5
    prompts = _prompts(lm, lengths=(4, 4, 2))
    plain = _plain(lm, prompts, name, data_dir, "test", 24)
    task = _task(name, data_dir, fast=True)
    _assert_same(evaluate_prompts(task, lm, prompts, "test", limit=24), plain)
    assert task.evaluation_batches_bytes() == 0  # nothing to reuse, nothing kept


def test_an_empty_prompt_reads_the_input_alone_on_both_paths(peaked_gpt2, data_dir):
    empty = peaked_gpt2.embedding_matrix[:0]  # (0, D): the sweep's no-prompt baseline
    plain = _plain(peaked_gpt2, [empty], "sst2", data_dir, "dev", None)
    _assert_same([_task("sst2", data_dir, fast=True).evaluate(peaked_gpt2, empty, "dev")], plain)
