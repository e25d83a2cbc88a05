"""SST-2 few-shot sentiment, the RLPrompt / LM-BFF setting.

Template (causal LM): `"{sentence} {prompt}"`, answer read at the last position over the
verbalizers `" terrible"` (negative, 0) and `" great"` (positive, 1); T5 reads the same
words at its first decoder step. Metric: accuracy. Reward: RLPrompt's gap reward.

Data: locally `sst2/16-shot/{seed}/{train,dev}.tsv` (16 examples per class, seeds 13, 21,
42, 87, 100) and `sst2/test.tsv` (1,821); `dev_pool: glue` selects on GLUE phrases instead.
From the hub (`stanfordnlp/sst2`) the 16-shot train and dev splits are drawn from GLUE
train with the seed, and test is the labeled GLUE validation set (872), because GLUE's
test labels are hidden: numbers from the hub path are therefore not comparable with the
LM-BFF splits.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from pathlib import Path

from scrutable.errors import UserError
from scrutable.models import LanguageModel, ModelKind
from scrutable.tasks.classification import ClassificationTask, load_hub_dataset
from scrutable.tasks.data import LabeledExample, Split, check_sst2_dev_pool, sst2_loaders
from scrutable.tasks.inputs import token_ids

SHOTS_PER_CLASS = 16
MAX_SENTENCE_TOKENS = 128


def make_sst2(
    data_dir: Path | None, seed: int = 13, dev_pool: str = "few_shot", *, prefix_cache: bool = True
) -> ClassificationTask:
    check_sst2_dev_pool(dev_pool)
    if data_dir is None:
        if dev_pool != "few_shot":
            raise UserError("SST-2 dev_pool 'glue' reads ../shared/data/sst2/glue: pass --data-dir")
        loaders: dict[Split, Callable[[], list[LabeledExample]]] = {
            split: partial(_from_hub, split, seed) for split in Split
        }
    else:
        loaders = sst2_loaders(data_dir, seed, dev_pool)
    return ClassificationTask(
        name="sst2",
        verbalizers={
            ModelKind.CAUSAL: (" terrible", " great"),
            ModelKind.SEQ2SEQ: ("terrible", "great"),
        },
        formatter=_format,
        loaders=loaders,
        prefix_cache=prefix_cache,
    )


def _format(example: LabeledExample, lm: LanguageModel) -> tuple[list[int], list[int]]:
    sentence = token_ids(lm, example.text)[:MAX_SENTENCE_TOKENS]
    if lm.kind is ModelKind.SEQ2SEQ:
        return sentence, [int(lm.tokenizer.eos_token_id)]
    return sentence, []


def _from_hub(split: Split, seed: int) -> list[LabeledExample]:
    data = load_hub_dataset("stanfordnlp/sst2")
    if split is Split.TEST:
        rows = data["validation"]
        return [LabeledExample(text=r["sentence"].strip(), label=int(r["label"])) for r in rows]
    train = data["train"]
    by_label: dict[int, list[int]] = {0: [], 1: []}
    for index, label in enumerate(train["label"]):
        by_label[int(label)].append(index)
    rng = random.Random(seed)
    # Disjoint draws: the first 16 per class are train, the next 16 dev.
    offset = 0 if split is Split.TRAIN else SHOTS_PER_CLASS
    chosen = [
        index
        for label in (0, 1)
        for index in rng.sample(by_label[label], 2 * SHOTS_PER_CLASS)[offset : offset + SHOTS_PER_CLASS]
    ]
    return [LabeledExample(text=train[i]["sentence"].strip(), label=int(train[i]["label"])) for i in chosen]
