"""Tasks: SST-2 few-shot sentiment, BoolQ, Yelp sentiment style transfer.

`get_task(name, data_dir=..., seed=..., prefix_cache=...)` is the one way in. With `data_dir` (or the
`SCRUTABLE_DATA_DIR` environment variable) data is read from a folder laid out like
`../shared/data`; without it, from the Hugging Face hub.

Importing this package does not import torch: `TASKS`, `closest` and `Split` serve a
sweep's driver, which checks names and data (`tasks/data.py`) but runs no model; the names
from `base.py` (`Task`, `RewardResult`, `sample_batch`) load on first use.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrutable.errors import UserError
from scrutable.paths import require_data_dir, resolve_data_dir
from scrutable.tasks.data import Split, read_local_splits

if TYPE_CHECKING:
    from scrutable.tasks.base import RewardResult, Task, sample_batch


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
# The classes of each classification task, by label index (one verbalizer each; Yelp
# generates text and has none). Read without building a task: the sweep's frontier
# compares prompts with a uniform guess over these.
LABELS: dict[str, tuple[str, ...]] = {"sst2": ("negative", "positive"), "boolq": ("no", "yes")}


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
    chosen_seed = _check(name, seed, dev_pool)
    if dev_pool == "few_shot":
        return TASKS[name](resolve_data_dir(data_dir), chosen_seed, prefix_cache)
    return _sst2(resolve_data_dir(data_dir), chosen_seed, prefix_cache, dev_pool)


def read_splits(name: str, data_dir: str | Path, *, seed: int | None = None, dev_pool: str = "few_shot") -> None:
    """Read and validate every split of a local data folder as `get_task(...).examples` would,
    without building the task or importing torch (a sweep's pre-flight: `check_data`)."""
    chosen_seed = _check(name, seed, dev_pool)
    read_local_splits(name, require_data_dir(data_dir, f"reading {name}'s splits"), chosen_seed, dev_pool)


def _check(name: str, seed: int | None, dev_pool: str) -> int:
    """The task name and dev pool checked; the split seed (the task's default if None)."""
    if name not in TASKS:
        raise UserError(f"unknown task '{name}': {closest(name, TASKS)}")
    if dev_pool != "few_shot" and name != "sst2":
        raise UserError(f"dev_pool '{dev_pool}' exists for sst2 only: remove dev_pool for task {name}")
    return DEFAULT_SEEDS[name] if seed is None else seed


__all__ = ["LABELS", "TASKS", "RewardResult", "Split", "Task", "closest", "get_task", "read_splits", "sample_batch"]


def __getattr__(name: str) -> Any:
    if name in ("RewardResult", "Task", "sample_batch"):
        from scrutable.tasks import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
