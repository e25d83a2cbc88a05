"""The Yelp style classifier: p(target sentiment) of a rewrite, for the style score.

A logistic regression on unit-norm all-MiniLM-L6-v2 sentence embeddings,
p(positive) = sigmoid(e . w + b), trained on a balanced sample of the Yelp dev pool and
measured on the 1,000 test sentences (RLPrompt fine-tunes a BERT classifier instead, which is
not available offline). It is cached under `cache_dir()/yelp-style/`, keyed by the recipe, the
encoder and the data files' contents, so it is trained once per machine.

    classifier = load_style_classifier(load_encoder("minilm"), data_dir / "yelp")
    classifier.positive_probability(encoder.encode(["great food!"]))  # (1,)
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scrutable.models import SentenceEncoder
from scrutable.paths import cache_dir, require_file
from scrutable.tasks.yelp.data import DATA_HINT, read_lines

# 2,000 sentences per class reach ~93% test accuracy; more gains ~1 point and costs a minute
# of encoding on 2 CPU cores.
STYLE_TRAIN_PER_CLASS = 2000
STYLE_SEED = 0
STYLE_CACHE_VERSION = 1  # bump when the classifier recipe changes


@dataclass(frozen=True)
class StyleClassifier:
    """Logistic regression on unit-norm MiniLM embeddings: p(positive) = sigmoid(e . w + b)."""

    weights: np.ndarray  # (H,)
    bias: float
    test_accuracy: float  # on sentiment.test.{0,1}
    train_size: int

    def positive_probability(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, H) embeddings -> (N,) probabilities of the positive class."""
        weights = torch.as_tensor(self.weights, dtype=embeddings.dtype)
        return torch.sigmoid(embeddings @ weights + self.bias)


def load_style_classifier(encoder: SentenceEncoder, yelp_dir: Path, encoder_name: str = "minilm") -> StyleClassifier:
    """The cached classifier for these data files and this encoder, trained on a miss."""
    path = cache_dir() / "yelp-style" / f"{_style_cache_key(yelp_dir, encoder_name)}.npz"
    hidden = int(encoder.model.config.hidden_size)
    if path.exists():
        try:
            # allow_pickle=False: the cache holds plain arrays only, never code.
            with np.load(path, allow_pickle=False) as stored:
                classifier = StyleClassifier(
                    weights=stored["weights"].astype(np.float32),
                    bias=float(stored["bias"]),
                    test_accuracy=float(stored["test_accuracy"]),
                    train_size=int(stored["train_size"]),
                )
            if classifier.weights.shape == (hidden,):
                return classifier
        except (OSError, KeyError, ValueError):
            pass  # unreadable or stale: retrain and overwrite below
    # The trainer is looked up where callers import it, `scrutable.tasks.yelp`, so that one
    # replaced there (as the tests do, to count retrainings) is the one called.
    from scrutable.tasks import yelp

    classifier = yelp.train_style_classifier(encoder, yelp_dir)
    _save_npz_atomically(
        path,
        weights=classifier.weights,
        bias=np.asarray(classifier.bias),
        test_accuracy=np.asarray(classifier.test_accuracy),
        train_size=np.asarray(classifier.train_size),
    )
    return classifier


def train_style_classifier(encoder: SentenceEncoder, yelp_dir: Path) -> StyleClassifier:
    """Fit on a balanced sample of the dev pool; measure accuracy on the 1,000 test sentences."""
    from sklearn.linear_model import LogisticRegression

    rng = random.Random(STYLE_SEED)
    texts: list[str] = []
    labels: list[int] = []
    for label in (0, 1):
        pool = [t for t in read_lines(yelp_dir / f"sentiment.dev.{label}") if t]
        chosen = rng.sample(pool, min(STYLE_TRAIN_PER_CLASS, len(pool)))
        texts += chosen
        labels += [label] * len(chosen)
    model = LogisticRegression(max_iter=2000)
    model.fit(encoder.encode(texts).numpy(), labels)

    test_texts: list[str] = []
    test_labels: list[int] = []
    for label in (0, 1):
        lines = [t for t in read_lines(yelp_dir / f"sentiment.test.{label}") if t]
        test_texts += lines
        test_labels += [label] * len(lines)
    accuracy = float(model.score(encoder.encode(test_texts).numpy(), test_labels))
    return StyleClassifier(
        weights=model.coef_[0].astype(np.float32),
        bias=float(model.intercept_[0]),
        test_accuracy=accuracy,
        train_size=len(texts),
    )


def _style_cache_key(yelp_dir: Path, encoder_name: str) -> str:
    digest = hashlib.sha256()
    recipe = f"v{STYLE_CACHE_VERSION}|{encoder_name}|{STYLE_TRAIN_PER_CLASS}|{STYLE_SEED}"
    digest.update(recipe.encode())
    for name in ("sentiment.dev.0", "sentiment.dev.1", "sentiment.test.0", "sentiment.test.1"):
        content = require_file(yelp_dir / name, DATA_HINT).read_bytes()
        digest.update(f"|{name}|{len(content)}|".encode())
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()[:20]


def _save_npz_atomically(path: Path, **arrays: np.ndarray) -> None:
    # Several Ray workers may train at once: each writes a private file and renames it,
    # so a reader never sees half a file (the copies are identical).
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, allow_pickle=False, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
