import json

import datasets
import pytest
import torch

from scrutable.errors import UserError
from scrutable.tasks import get_task
from scrutable.tasks.base import subset
from scrutable.tasks.classification import LabeledExample
from scrutable.tasks.data import parse_label
from scrutable.tasks.inputs import splice_prompt


def test_sst2_local_splits(data_dir):
    task = get_task("sst2", data_dir=data_dir, seed=42)
    train, dev, test = (task.examples(s) for s in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (32, 32, 1821)
    assert sorted(e.label for e in train) == [0] * 16 + [1] * 16
    assert test[0].text.startswith("no movement , no yuks")


def test_boolq_local_splits_do_not_overlap(data_dir):
    task = get_task("boolq", data_dir=data_dir)
    train, dev, test = (task.examples(s) for s in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (32, 50, 3220)
    assert not {e.question for e in dev} & {e.question for e in test[:500]}
    first = json.loads((data_dir / "boolq" / "dev.jsonl").read_text().splitlines()[0])
    assert dev[0].label == int(first["answer"] == "True")  # the answer is a string there


def test_boolq_labels_accept_bools_and_strings_only():
    assert parse_label({"label": True}) == 1 and parse_label({"answer": "False"}) == 0
    with pytest.raises(ValueError):
        parse_label({"answer": "false"})


def _fake_sst2(name, *args, **kwargs):
    assert name == "stanfordnlp/sst2"
    train = {"sentence": [f"train {i} " for i in range(100)], "label": [i % 2 for i in range(100)]}
    valid = {"sentence": ["a", "b", "c"], "label": [0, 1, 1]}
    return datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(train), "validation": datasets.Dataset.from_dict(valid)}
    )


def test_sst2_hub_path_draws_disjoint_few_shot_splits(monkeypatch):
    monkeypatch.delenv("SCRUTABLE_DATA_DIR")
    monkeypatch.setattr(datasets, "load_dataset", _fake_sst2)
    task = get_task("sst2", seed=7)
    train, dev, test = (task.examples(s) for s in ("train", "dev", "test"))
    assert len(train) == len(dev) == 32 and [e.label for e in test] == [0, 1, 1]
    assert sorted(e.label for e in train) == [0] * 16 + [1] * 16
    assert not {e.text for e in train} & {e.text for e in dev}
    assert [e.text for e in get_task("sst2", seed=7).examples("train")] == [e.text for e in train]


def test_boolq_hub_path(monkeypatch):
    monkeypatch.delenv("SCRUTABLE_DATA_DIR")

    def fake(name, *args, **kwargs):
        assert name == "google/boolq"
        rows = {
            "question": [f"q{i}" for i in range(60)],
            "passage": ["p"] * 60,
            "answer": [i % 3 == 0 for i in range(60)],
        }
        split = datasets.Dataset.from_dict(rows)
        return datasets.DatasetDict({"train": split, "validation": split})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    task = get_task("boolq")
    assert len(task.examples("train")) == 32 and len(task.examples("dev")) == 50
    assert [e.question for e in task.examples("test")] == [f"q{i}" for i in range(50, 60)]
    assert task.examples("dev")[3].label == 1


def test_offline_hub_gives_one_clear_error(monkeypatch):
    monkeypatch.delenv("SCRUTABLE_DATA_DIR")
    with pytest.raises(UserError, match="--data-dir"):
        get_task("sst2").examples("train")


def test_unknown_task_suggests_the_closest(data_dir):
    with pytest.raises(UserError, match="did you mean 'sst2'"):
        get_task("sst", data_dir=data_dir)


def test_missing_data_file_is_named(tmp_path):
    (tmp_path / "sst2").mkdir()
    with pytest.raises(UserError, match="missing data file .*train.tsv"):
        get_task("sst2", data_dir=tmp_path).examples("train")


def test_splice_places_every_prompt_vector(tiny_gpt2):
    prompts = torch.arange(2 * 3 * 32, dtype=torch.float32).reshape(2, 3, 32)  # (P, L, D)
    spliced = splice_prompt(tiny_gpt2, [[10, 11], [12]], [[13], []], prompts)
    assert spliced.inputs_embeds.shape == (4, 6, 32)
    assert spliced.attention_mask.tolist() == [[1] * 6, [0, 0] + [1] * 4] * 2
    # row p*B + b: example 1 of prompt 1 has the prompt in its last three positions
    torch.testing.assert_close(spliced.inputs_embeds[3, 3:], prompts[1])
    torch.testing.assert_close(spliced.inputs_embeds[1, 3:], prompts[0])
    assert spliced.position_ids[1].tolist() == [0, 0, 0, 1, 2, 3]


@pytest.mark.parametrize("task_name", ["sst2", "boolq"])
def test_padded_batch_equals_each_example_alone(task_name, tiny_gpt2, data_dir):
    task = get_task(task_name, data_dir=data_dir)
    batch = subset(task.examples("dev"), 4)
    prompt = tiny_gpt2.embedding_matrix[torch.tensor([1169, 3807, 373])]
    together = task.output_logits(tiny_gpt2, prompt, batch)[0]
    alone = torch.cat([task.output_logits(tiny_gpt2, prompt, [e])[0] for e in batch])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_hard_prompt_equals_plain_token_input(tiny_gpt2, data_dir):
    """SST-2 reads ' great' vs ' terrible' after "{sentence} {prompt}", as if typed."""
    task = get_task("sst2", data_dir=data_dir)
    example = LabeledExample(text="a gorgeous film .", label=1)
    prompt_ids = tiny_gpt2.tokenizer(" It was", add_special_tokens=False)["input_ids"]
    logits = task.output_logits(tiny_gpt2, tiny_gpt2.embedding_matrix[prompt_ids], [example])[0, 0]
    full = tiny_gpt2.tokenizer("a gorgeous film . It was", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        direct = tiny_gpt2.model(full).logits[0, -1, [7818, 1049]]
    torch.testing.assert_close(logits, direct, atol=1e-5, rtol=1e-4)


def test_t5_prompt_goes_in_front_of_the_encoder_only(tiny_t5, data_dir):
    task = get_task("boolq", data_dir=data_dir)
    example = task.examples("dev")[0]
    prompt_ids = tiny_t5.tokenizer("answer yes or no", add_special_tokens=False)["input_ids"]
    logits = task.output_logits(tiny_t5, tiny_t5.embedding_matrix[prompt_ids], [example])[0, 0]
    text = f"answer yes or no question: {example.question} passage:"
    encoder = tiny_t5.tokenizer(text, add_special_tokens=False)["input_ids"]
    passage = tiny_t5.tokenizer(example.text, add_special_tokens=False)["input_ids"][:256]
    ids = torch.tensor([encoder + passage + [1]])
    with torch.no_grad():
        direct = tiny_t5.model(input_ids=ids, decoder_input_ids=torch.tensor([[0]])).logits[0, 0]
    torch.testing.assert_close(logits, direct[[150, 4273]], atol=1e-5, rtol=1e-4)


def test_gap_reward_by_hand(tiny_gpt2, data_dir):
    task = get_task("sst2", data_dir=data_dir)
    batch = subset(task.examples("dev"), 6)
    prompt_ids = torch.tensor([[1169, 3807], [40, 588]])
    result = task.reward(tiny_gpt2, prompt_ids, batch)
    with torch.no_grad():
        logits = task.output_logits(tiny_gpt2, tiny_gpt2.embedding_matrix[prompt_ids], batch)
    for p in range(2):
        rewards, hits = [], []
        for b, example in enumerate(batch):
            probs = logits[p, b].softmax(-1).tolist()
            gap = probs[example.label] - probs[1 - example.label]
            rewards.append(gap * (200 if gap > 0 else 180))
            hits.append(gap > 0)
        assert result.rewards[p].item() == pytest.approx(sum(rewards) / 6, rel=1e-4)
        assert result.metric[p].item() == pytest.approx(sum(hits) / 6)


def test_evaluate_counts_correct_answers(tiny_gpt2, data_dir):
    task = get_task("sst2", data_dir=data_dir)
    prompt = tiny_gpt2.embedding_matrix[torch.tensor([1169, 3807])]
    examples = subset(task.examples("dev"), 10)
    logits = task.output_logits(tiny_gpt2, prompt, examples)[0]
    expected = sum(int(logits[i].argmax()) == e.label for i, e in enumerate(examples)) / 10
    log_prob = sum(float(logits[i].log_softmax(-1)[e.label]) for i, e in enumerate(examples)) / 10
    result = task.evaluate(tiny_gpt2, prompt, "dev", limit=10, batch_size=3)
    assert result.metric == pytest.approx(expected)
    assert result.objective == pytest.approx(log_prob, rel=1e-5) and result.objective < 0
    assert {e.label for e in examples} == {0, 1}  # the fixed sample is not one class


@pytest.mark.slow
@pytest.mark.smollm
def test_verbalizers_must_be_single_tokens(data_dir, smollm):
    task = get_task("sst2", data_dir=data_dir)
    assert len(task.verbalizer_ids(smollm)) == 2


def test_sst2_glue_dev_pool_is_larger_and_disjoint_from_test(data_dir):
    few_shot = get_task("sst2", data_dir=data_dir)
    glue = get_task("sst2", data_dir=data_dir, dev_pool="glue")
    assert len(few_shot.examples("dev")) == 32 and len(glue.examples("dev")) == 6735
    assert glue.examples("train") == few_shot.examples("train")  # only selection changes
    test = {e.text for e in glue.examples("test")}
    assert not test & {e.text for e in glue.examples("dev")}
    assert {e.label for e in subset(glue.examples("dev"), 256)} == {0, 1}


def test_dev_pool_is_refused_where_the_data_has_none(data_dir):
    with pytest.raises(UserError, match="exists for sst2 only"):
        get_task("boolq", data_dir=data_dir, dev_pool="glue")
    with pytest.raises(UserError, match="choose one of few_shot, glue"):
        get_task("sst2", data_dir=data_dir, dev_pool="big")
