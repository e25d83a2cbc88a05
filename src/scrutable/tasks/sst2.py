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

import csv
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path

from scrutable.errors import UserError
from scrutable.models import LanguageModel, ModelKind
from scrutable.paths import require_file
from scrutable.tasks.base import Split
from scrutable.tasks.classification import ClassificationTask, LabeledExample, load_hub_dataset
from scrutable.tasks.inputs import token_ids

SEEDS = (13, 21, 42, 87, 100)
# The dev split a run selects prompts on: the 32 sentences of the 16-shot split, or the
# 6,735 GLUE phrases held out of GLUE train (`sst2/glue/dev.tsv`; disjoint from the SST
# test sentences), of which `eval_limit` picks a fixed sample. 32 examples move accuracy
# in steps of 1/32; a few hundred separate prompts that the 16-shot dev ties.
DEV_POOLS = ("few_shot", "glue")
SHOTS_PER_CLASS = 16
MAX_SENTENCE_TOKENS = 128


def make_sst2(
    data_dir: Path | None, seed: int = 13, dev_pool: str = "few_shot", *, prefix_cache: bool = True
) -> ClassificationTask:
    if dev_pool not in DEV_POOLS:
        raise UserError(f"SST-2 dev_pool '{dev_pool}' is unknown: choose one of {', '.join(DEV_POOLS)}")
    if data_dir is not None and seed not in SEEDS:
        raise UserError(f"SST-2 few-shot seed {seed} has no local split: choose one of {SEEDS}")
    if data_dir is None:
        if dev_pool != "few_shot":
            raise UserError("SST-2 dev_pool 'glue' reads ../shared/data/sst2/glue: pass --data-dir")
        loaders: dict[Split, Callable[[], list[LabeledExample]]] = {
            split: partial(_from_hub, split, seed) for split in Split
        }
    else:
        shots = data_dir / "sst2" / "16-shot" / str(seed)
        dev_file = shots / "dev.tsv" if dev_pool == "few_shot" else data_dir / "sst2" / "glue" / "dev.tsv"
        loaders = {
            Split.TRAIN: lambda: read_tsv(shots / "train.tsv"),
            Split.DEV: lambda: read_tsv(dev_file),
            Split.TEST: lambda: read_tsv(data_dir / "sst2" / "test.tsv"),
        }
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


def read_tsv(path: Path) -> list[LabeledExample]:
    """`sentence<TAB>label` rows; a row without a label or with one outside {0, 1} is an error
    naming the line (a silent bad label would score as a wrong prediction)."""
    require_file(path, "point --data-dir at a folder laid out like ../shared/data")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            rows = list(reader)
            header = reader.fieldnames or []
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text: re-save it as UTF-8") from None
    missing = [column for column in ("sentence", "label") if column not in header]
    if missing:
        raise UserError(
            f"{path} has no {' or '.join(repr(c) for c in missing)} column (its header is "
            f"{chr(9).join(header)!r}): the first line must be sentence<TAB>label"
        )
    examples = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if None in row:  # DictReader keeps surplus fields under None
            raise UserError(
                f"{path} line {line} has more than 2 tab-separated fields (sentence<TAB>label): fix the row"
            )
        sentence, label = row.get("sentence"), row.get("label")
        if sentence is None or label is None or not label.strip():
            raise UserError(f"{path} line {line} has no 'label' (columns sentence<TAB>label): fix or remove the row")
        if label.strip() not in ("0", "1"):
            raise UserError(
                f"{path} line {line} has label {label.strip()!r} outside SST-2's classes 0 (negative) "
                "and 1 (positive): fix the row"
            )
        examples.append(LabeledExample(text=sentence.strip(), label=int(label)))
    return examples


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
