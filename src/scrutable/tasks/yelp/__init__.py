"""Yelp sentiment style transfer: rewrite a review sentence in the opposite sentiment.

The text style transfer task of RLPrompt (Deng et al. 2022, "RLPrompt: Optimizing Discrete
Text Prompts with Reinforcement Learning", `examples/text-style-transfer/` in
mingkaid/rl-prompt), one module per job:

- `data.py`: the splits of `{data_dir}/yelp/` (dev pool -> train/dev, test with human
  rewrites). No hub dataset holds these splits with their references (searched: only the
  document-level `yelp_polarity` / `yelp_review_full` and unrelated uploads), so the task
  needs a local data directory;
- `style.py`: the cached logistic-regression style classifier on MiniLM embeddings;
- `scoring.py`: content, style, joint score ((content + style) / 2, the task metric) and BLEU;
- `generation.py`: the template `{prompt} "{sentence}" "` and the batched KV-cache sampler;
- `task.py`: `YelpTask`, the Task protocol (evaluate, RLPrompt's best-of-samples reward).

    task = get_task("yelp", data_dir="../shared/data")
    task.evaluate(lm, lm.embedding_matrix[prompt_ids], "dev", limit=50)

Importing the package loads its parts on first use (PEP 562): `data.py` is torch-free, and a
sweep's driver reads the splits through it without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scrutable.tasks.yelp.data import DATA_HINT, TransferExample, read_lines
    from scrutable.tasks.yelp.generation import MAX_SENTENCE_TOKENS, postprocess
    from scrutable.tasks.yelp.scoring import TransferReport
    from scrutable.tasks.yelp.scoring import bleu as _bleu  # its name before the split, kept for callers
    from scrutable.tasks.yelp.style import (
        STYLE_CACHE_VERSION,
        STYLE_SEED,
        STYLE_TRAIN_PER_CLASS,
        StyleClassifier,
        load_style_classifier,
        train_style_classifier,
    )
    from scrutable.tasks.yelp.task import YelpTask, make_yelp

_HOMES = {
    "DATA_HINT": "data",
    "TransferExample": "data",
    "read_lines": "data",
    "MAX_SENTENCE_TOKENS": "generation",
    "postprocess": "generation",
    "TransferReport": "scoring",
    "_bleu": "scoring",
    "STYLE_CACHE_VERSION": "style",
    "STYLE_SEED": "style",
    "STYLE_TRAIN_PER_CLASS": "style",
    "StyleClassifier": "style",
    "load_style_classifier": "style",
    "train_style_classifier": "style",
    "YelpTask": "task",
    "make_yelp": "task",
}

__all__ = [
    "DATA_HINT",
    "MAX_SENTENCE_TOKENS",
    "STYLE_CACHE_VERSION",
    "STYLE_SEED",
    "STYLE_TRAIN_PER_CLASS",
    "StyleClassifier",
    "TransferExample",
    "TransferReport",
    "YelpTask",
    "_bleu",
    "load_style_classifier",
    "make_yelp",
    "postprocess",
    "read_lines",
    "train_style_classifier",
]


def __getattr__(name: str) -> Any:
    module = _HOMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), "bleu" if name == "_bleu" else name)
    globals()[name] = value  # later look-ups (and monkeypatch) see a plain attribute
    return value
