"""BoolQ yes/no question answering over a passage.

T5 (the paper's setting): the encoder reads `{prompt} question: {question} passage:
{passage}` and the answer is the larger of the `yes` / `no` logits at the first decoder
step. Causal LMs read next-token `" yes"` / `" no"` after
`{prompt} {passage}\nquestion: {question}?\nanswer:`. Labels: 0 = False/no, 1 = True/yes.

Data: locally `boolq/train-32.jsonl` (FewGLUE, `label` a JSON bool) for train,
`boolq/dev-50.jsonl` for dev and the rest of the official dev set `boolq/dev.jsonl`
(rows 50 on, 3,220; `answer` is the STRING "True"/"False") for test, so dev and test do
not overlap. From the hub (`google/boolq`): 32 train examples drawn with the seed, and the
validation set split the same way (first 50 dev, rest test).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from scrutable.models import LanguageModel, ModelKind
from scrutable.tasks.classification import ClassificationTask, load_hub_dataset
from scrutable.tasks.data import BOOLQ_DEV_SIZE, LabeledExample, Split, boolq_loaders
from scrutable.tasks.inputs import token_ids

TRAIN_SIZE = 32
# Passages run to several hundred tokens; the answer rarely needs more than the start, and
# T5-small was trained on 512-token inputs.
MAX_PASSAGE_TOKENS = 256


def make_boolq(data_dir: Path | None, seed: int = 0, *, prefix_cache: bool = True) -> ClassificationTask:
    if data_dir is None:
        loaders: dict[Split, Callable[[], list[LabeledExample]]] = {
            split: partial(_from_hub, split, seed) for split in Split
        }
    else:
        loaders = boolq_loaders(data_dir)
    return ClassificationTask(
        name="boolq",
        verbalizers={ModelKind.CAUSAL: (" no", " yes"), ModelKind.SEQ2SEQ: ("no", "yes")},
        formatter=_format,
        loaders=loaders,
        prefix_cache=prefix_cache,
    )


def _format(example: LabeledExample, lm: LanguageModel) -> tuple[list[int], list[int]]:
    passage = token_ids(lm, (" " if lm.kind is ModelKind.CAUSAL else "") + example.text)
    passage = passage[:MAX_PASSAGE_TOKENS]
    if lm.kind is ModelKind.SEQ2SEQ:
        question = token_ids(lm, f"question: {example.question} passage:")
        return [], question + passage + [int(lm.tokenizer.eos_token_id)]
    question = token_ids(lm, f"\nquestion: {example.question}?\nanswer:")
    return [], passage + question


def _from_hub(split: Split, seed: int) -> list[LabeledExample]:
    data = load_hub_dataset("google/boolq")

    def convert(rows: Any) -> list[LabeledExample]:
        return [LabeledExample(text=r["passage"], question=r["question"], label=int(bool(r["answer"]))) for r in rows]

    if split is Split.TRAIN:
        indices = random.Random(seed).sample(range(len(data["train"])), TRAIN_SIZE)
        return convert(data["train"].select(indices))
    validation = data["validation"]
    if split is Split.DEV:
        return convert(validation.select(range(BOOLQ_DEV_SIZE)))
    return convert(validation.select(range(BOOLQ_DEV_SIZE, len(validation))))
