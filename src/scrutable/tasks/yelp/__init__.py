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
"""

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
