"""Task data read from a local folder, without torch: the splits, their rows and the checks.

A sweep's driver reads and validates every split of a local data folder before Ray starts
(`sweep/spec_checks.check_data`), so that a broken row is one line, not a failure in every
trial; it never runs a model. The task modules (`sst2.py`, `boolq.py`, `yelp/`) build their
tasks on these readers; this module imports neither torch nor transformers (about 3 s of the
driver's start-up), nor the task modules.

    read_local_splits("sst2", Path("../shared/data"), seed=13, dev_pool="glue")  # every split, or a UserError
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from scrutable.errors import UserError
from scrutable.paths import require_file

DATA_HINT = "point --data-dir at a folder laid out like ../shared/data"

# SST-2 (`sst2.py`): the LM-BFF 16-shot splits exist for these seeds. The dev split a run
# selects prompts on: the 32 sentences of the 16-shot split, or the 6,735 GLUE phrases held
# out of GLUE train (`sst2/glue/dev.tsv`; disjoint from the SST test sentences), of which
# `eval_limit` picks a fixed sample. 32 examples move accuracy in steps of 1/32; a few
# hundred separate prompts that the 16-shot dev ties.
SST2_SEEDS = (13, 21, 42, 87, 100)
SST2_DEV_POOLS = ("few_shot", "glue")
# BoolQ (`boolq.py`): the first rows of the official dev set are dev, the rest test.
BOOLQ_DEV_SIZE = 50


class Split(StrEnum):
    TRAIN = "train"
    DEV = "dev"
    TEST = "test"


@dataclass(frozen=True)
class LabeledExample:
    text: str
    label: int  # index into the task's verbalizers
    question: str = ""  # BoolQ only


Loader = Callable[[], list[LabeledExample]]


def sst2_loaders(data_dir: Path, seed: int, dev_pool: str) -> dict[Split, Loader]:
    """The local SST-2 files of each split (read when called)."""
    check_sst2_dev_pool(dev_pool)
    if seed not in SST2_SEEDS:
        raise UserError(f"SST-2 few-shot seed {seed} has no local split: choose one of {SST2_SEEDS}")
    shots = data_dir / "sst2" / "16-shot" / str(seed)
    dev_file = shots / "dev.tsv" if dev_pool == "few_shot" else data_dir / "sst2" / "glue" / "dev.tsv"
    return {
        Split.TRAIN: lambda: read_tsv(shots / "train.tsv"),
        Split.DEV: lambda: read_tsv(dev_file),
        Split.TEST: lambda: read_tsv(data_dir / "sst2" / "test.tsv"),
    }


def check_sst2_dev_pool(dev_pool: str) -> None:
    if dev_pool not in SST2_DEV_POOLS:
        raise UserError(f"SST-2 dev_pool '{dev_pool}' is unknown: choose one of {', '.join(SST2_DEV_POOLS)}")


def boolq_loaders(data_dir: Path) -> dict[Split, Loader]:
    """The local BoolQ files of each split (read when called)."""
    root = data_dir / "boolq"
    return {
        Split.TRAIN: lambda: read_jsonl(root / "train-32.jsonl"),
        Split.DEV: lambda: read_jsonl(root / "dev-50.jsonl"),
        Split.TEST: lambda: read_jsonl(root / "dev.jsonl")[BOOLQ_DEV_SIZE:],
    }


def read_local_splits(task: str, data_dir: Path, seed: int, dev_pool: str = "few_shot") -> None:
    """Read and validate every split of `task` in `data_dir`, as the task would: a UserError
    naming the file and line of the first problem."""
    if task == "sst2":
        loaders = sst2_loaders(data_dir, seed, dev_pool)
    elif task == "boolq":
        loaders = boolq_loaders(data_dir)
    else:
        from scrutable.tasks.yelp.data import DEV_SIZE, load_test, require_data_files, split_dev_pool

        yelp_dir = data_dir / "yelp"
        require_data_files(yelp_dir)
        split_dev_pool(yelp_dir, seed, DEV_SIZE)
        load_test(yelp_dir)
        return
    for load in loaders.values():
        load()


def read_tsv(path: Path) -> list[LabeledExample]:
    """`sentence<TAB>label` rows; a row without a label or with one outside {0, 1} is an error
    naming the line (a silent bad label would score as a wrong prediction)."""
    require_file(path, DATA_HINT)
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


def parse_label(row: dict[str, Any]) -> int:
    """FewGLUE has `label: true`; the official dev file has `answer: "True"` (a string)."""
    value = row.get("label", row.get("answer"))
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value in ("True", "False"):
        return int(value == "True")
    raise ValueError(f"unrecognised BoolQ label {value!r}")


def read_jsonl(path: Path) -> list[LabeledExample]:
    require_file(path, DATA_HINT)
    examples = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                examples.append(LabeledExample(text=row["passage"], question=row["question"], label=parse_label(row)))
            except (KeyError, ValueError) as exc:
                raise UserError(f"{path}:{number} is not a BoolQ row ({exc})") from None
    return examples
