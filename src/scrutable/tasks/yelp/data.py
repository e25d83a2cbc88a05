"""Yelp style-transfer data: the sentences, their labels and the human rewrites.

The files of the rl-prompt repository (`examples/text-style-transfer/`), under
`{data_dir}/yelp/`: no train split is available offline, so the dev files
`sentiment.dev.{0,1}` (25,278 negative / 38,205 positive lines; 57,759 unique sentences with a
single label) are the pool. Split `dev` is a seeded, class-balanced sample of `dev_size`
sentences held out of it (`split_dev_pool`), and `train` is the rest. `test` is
`sentiment.test.{0,1}` (500 + 500) with the line-aligned human rewrites `reference.{0,1}`
(Li et al. 2018; `load_test`). Labels: 0 = negative, 1 = positive; the target is always the
other label.

    train, dev = split_dev_pool(data_dir / "yelp", seed=0, dev_size=100)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from scrutable.errors import UserError
from scrutable.paths import require_file
from scrutable.tasks.data import DATA_HINT as DATA_HINT  # one hint for every task's files

DEV_SIZE = 100  # sentences held out of the dev pool as the dev split, half per class


@dataclass(frozen=True)
class TransferExample:
    text: str
    label: int  # sentiment of `text`: 0 negative, 1 positive
    references: tuple[str, ...] = ()  # human rewrites in the target sentiment

    @property
    def target_label(self) -> int:
        return 1 - self.label


def read_lines(path: Path) -> list[str]:
    require_file(path, DATA_HINT)
    with path.open(encoding="utf-8") as handle:
        return [line.strip() for line in handle]


def require_data_files(root: Path) -> None:
    names = [f"sentiment.{part}.{label}" for part in ("dev", "test") for label in (0, 1)]
    for name in [*names, "reference.0", "reference.1"]:
        require_file(root / name, DATA_HINT)


def split_dev_pool(yelp_dir: Path, seed: int, dev_size: int) -> tuple[list[TransferExample], list[TransferExample]]:
    """(train, dev): `dev_size // 2` sentences per class held out of the dev files, the rest train."""
    # Unique sentences per class (the files repeat short ones such as "great food!"), minus
    # the few found in both files, so that no dev sentence is also a train sentence.
    pools = [list(dict.fromkeys(t for t in read_lines(yelp_dir / f"sentiment.dev.{label}") if t)) for label in (0, 1)]
    ambiguous = set(pools[0]) & set(pools[1])
    rng = random.Random(seed)
    train: list[TransferExample] = []
    dev: list[TransferExample] = []
    for label, pool in enumerate(pools):
        pool = [text for text in pool if text not in ambiguous]
        held_out = set(rng.sample(range(len(pool)), dev_size // 2))
        for index, text in enumerate(pool):
            (dev if index in held_out else train).append(TransferExample(text, label))
    return train, dev


def load_test(yelp_dir: Path) -> list[TransferExample]:
    """The 1,000 test sentences, each with its human rewrite."""
    examples = []
    for label in (0, 1):
        sources = read_lines(yelp_dir / f"sentiment.test.{label}")
        references = read_lines(yelp_dir / f"reference.{label}")
        if len(sources) != len(references):
            raise UserError(
                f"{yelp_dir}/reference.{label} has {len(references)} lines but "
                f"sentiment.test.{label} has {len(sources)}: they must be line-aligned"
            )
        examples += [
            TransferExample(text, label, (ref,)) for text, ref in zip(sources, references, strict=True) if text
        ]
    return examples
