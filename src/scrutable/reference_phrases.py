"""The perplexity of ordinary English phrases, as a reference line for a prompt's perplexity.

A trained prompt of L tokens is only "readable" relative to something: here, the first L
scorer tokens of `N_PHRASES` fixed sentences of the task's test split (the first ones
with at least L tokens, in file order), scored by the sweep's own scorer with the same
convention as every prompt (start token prepended, `metrics/perplexity.py`). Reported as
the median and the geometric mean (exp of the mean log perplexity) over the phrases,
since single phrases range over orders of magnitude.

The values are computed once per sweep folder and cached in
`<folder>/reference_perplexity.json`, keyed by scorer, task, data seed and lengths, so
`scrutable report` reruns without loading a model and writes the same numbers.

    values = reference_perplexities(folder, spec, lengths=[4, 8])   # {4: Reference, 8: ...}
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from scrutable.paths import write_atomically
from scrutable.sweep.folder import REFERENCE_CACHE
from scrutable.sweep.spec import SweepSpec

N_PHRASES = 100
CACHE_FILE = REFERENCE_CACHE


@dataclass(frozen=True)
class Reference:
    length: int  # tokens per phrase
    n: int  # phrases scored
    median: float
    geometric_mean: float
    example: str  # the first phrase, decoded, to show what was scored


def reference_perplexities(folder: Path, spec: SweepSpec, lengths: Sequence[int]) -> dict[int, Reference]:
    """{L: Reference} for each length, from the folder's cache or computed (and cached)."""
    key = {"scorer": spec.scorer, "task": spec.task, "data_seed": spec.data_seed, "n_phrases": N_PHRASES}
    cache_path = Path(folder) / CACHE_FILE
    cached: dict[str, dict[str, object]] = {}
    if cache_path.is_file():
        try:
            loaded = json.loads(cache_path.read_text())
        except (OSError, ValueError):  # a damaged cache is a miss: recomputed and rewritten below
            loaded = None
        if isinstance(loaded, dict) and loaded.get("key") == key and isinstance(loaded.get("lengths"), dict):
            names = {f.name for f in fields(Reference)}
            cached = {
                k: v for k, v in loaded["lengths"].items() if k.isdigit() and isinstance(v, dict) and set(v) == names
            }
    missing = [length for length in sorted(set(lengths)) if str(length) not in cached]
    if missing:
        for reference in _compute(spec, missing):
            cached[str(reference.length)] = asdict(reference)
        ordered = {k: cached[k] for k in sorted(cached, key=int)}
        write_atomically(cache_path, json.dumps({"key": key, "lengths": ordered}, indent=2) + "\n")
    return {length: Reference(**cached[str(length)]) for length in sorted(set(lengths))}  # type: ignore[arg-type]


def _compute(spec: SweepSpec, lengths: Sequence[int]) -> list[Reference]:
    from scrutable.metrics.perplexity import sequence_perplexities
    from scrutable.models import load_model
    from scrutable.tasks import get_task

    data_dir = spec.data_dir if spec.data_dir and Path(spec.data_dir).is_dir() else None
    scorer = load_model(spec.scorer, data_dir=data_dir)
    sentences = [
        example.text for example in get_task(spec.task, data_dir=data_dir, seed=spec.data_seed).examples("test")
    ]
    # Truncated to the longest length needed: the same prefixes, without long-input warnings.
    tokenize = scorer.tokenizer
    tokenized = [
        list(tokenize(text, add_special_tokens=False, truncation=True, max_length=max(lengths))["input_ids"])
        for text in sentences
    ]
    references = []
    for length in lengths:
        phrases = [ids[:length] for ids in tokenized if len(ids) >= length][:N_PHRASES]
        if not phrases:
            continue
        perplexities = [ppl for ppl, _ in sequence_perplexities(scorer, phrases)]
        references.append(
            Reference(
                length=length,
                n=len(phrases),
                median=float(statistics.median(perplexities)),
                geometric_mean=math.exp(statistics.fmean(math.log(p) for p in perplexities)),
                example=str(scorer.tokenizer.decode(phrases[0])),
            )
        )
    return references
