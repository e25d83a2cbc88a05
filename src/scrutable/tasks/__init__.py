"""Tasks: SST-2 few-shot sentiment, BoolQ, Yelp sentiment style transfer.

`get_task(name, data_dir=..., seed=..., prefix_cache=...)` is the one way in. With `data_dir` (or the
`SCRUTABLE_DATA_DIR` environment variable) data is read from a folder laid out like
`../shared/data`; without it, from the Hugging Face hub.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scrutable.errors import UserError
from scrutable.paths import resolve_data_dir
from scrutable.tasks.base import RewardResult, Split, Task, sample_batch


def _sst2(data_dir: Path | None, seed: int, prefix_cache: bool = True, dev_pool: str = "few_shot") -> Task:
    from scrutable.tasks.sst2 import make_sst2

    return make_sst2(data_dir, seed, dev_pool, prefix_cache=prefix_cache)


def _boolq(data_dir: Path | None, seed: int, prefix_cache: bool) -> Task:
    from scrutable.tasks.boolq import make_boolq

    return make_boolq(data_dir, seed, prefix_cache=prefix_cache)


def _yelp(data_dir: Path | None, seed: int, prefix_cache: bool) -> Task:
    from scrutable.tasks.yelp import make_yelp

    # Yelp's template opens with the prompt, so no input comes before it to reuse
    # (`tasks/prefix_cache.py`); its generation already encodes each input once per prompt.
    del prefix_cache
    return make_yelp(data_dir, seed)


TASKS: dict[str, Callable[[Path | None, int, bool], Any]] = {"sst2": _sst2, "boolq": _boolq, "yelp": _yelp}
DEFAULT_SEEDS = {"sst2": 13, "boolq": 0, "yelp": 0}


def closest(name: str, choices: list[str] | tuple[str, ...] | Any) -> str:
    """' (did you mean X?)' for the closest valid name, or a list of the choices."""
    match = difflib.get_close_matches(name, list(choices), n=1)
    return f"did you mean '{match[0]}'?" if match else f"choose one of {', '.join(choices)}"


def get_task(
    name: str,
    *,
    data_dir: str | Path | None = None,
    seed: int | None = None,
    dev_pool: str = "few_shot",
    prefix_cache: bool = True,
) -> Task:
    """`dev_pool` chooses a larger dev split where the data has one (SST-2: "glue").
    `prefix_cache`: reuse the frozen model's encoding of inputs that precede the prompt
    (`tasks/prefix_cache.py`); False runs every input in full at every call (the plain path)."""
    if name not in TASKS:
        raise UserError(f"unknown task '{name}': {closest(name, TASKS)}")
    chosen_seed = DEFAULT_SEEDS[name] if seed is None else seed
    if dev_pool == "few_shot":
        return TASKS[name](resolve_data_dir(data_dir), chosen_seed, prefix_cache)
    if name != "sst2":
        raise UserError(f"dev_pool '{dev_pool}' exists for sst2 only: remove dev_pool for task {name}")
    return _sst2(resolve_data_dir(data_dir), chosen_seed, prefix_cache, dev_pool)


__all__ = ["TASKS", "RewardResult", "Split", "Task", "get_task", "sample_batch", "closest"]
