"""Prefix cache vs plain path, side by side in one process: step times and evaluation.

    python benchmarks/prefix_cache.py                          # SmolLM2-135M, ~10 min
    python benchmarks/prefix_cache.py --model tiny-gpt2 --steps 2 --eval-limit 32   # smoke

For each optimizer (soft prompt, PEZ, RLPrompt with 16 prompts x 16 examples) the real
`run()` loop runs twice on SST-2, once with `prefix_cache=False` (every input re-encoded
at every step, the plain path) and once with `prefix_cache=True` (`tasks/prefix_cache.py`),
with the same seeds and therefore the same batches; the first step of each run (model
warm-up, and for the cached run the one-time encoding of the 32-sentence train pool) is
dropped and the median of the other steps' durations is reported. Evaluation is timed
through `task.evaluate` on a fixed subset of the SST-2 test split and on the 32-example dev
split, alternating plain and cached repetitions. The plain path is also timed over
length-sorted batches, to separate what padding costs from what reuse saves. Torch runs
with one thread, as a sweep trial gets. Prints a table and writes JSON (`--json`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from scrutable.metrics.perplexity import LocalScorer
from scrutable.models import LanguageModel
from scrutable.tasks import get_task
from scrutable.tasks.base import subset
from scrutable.tasks.classification import ClassificationTask
from scrutable.tasks.prefix_cache import encode_prefixes
from scrutable.trainables import get_method
from scrutable.trainables.common import cached_model

PROMPT_LENGTH = 5


def step_times(method: str, model: str, steps: int, prefix_cache: bool, extra: dict[str, Any]) -> list[float]:
    """Durations of steps 2..steps+1 of the method's real loop (step 1 is warm-up)."""
    values = {
        "task": "sst2",
        "model": model,
        "scorer": model,
        "prompt_length": PROMPT_LENGTH,
        "alpha": 0.5,
        "steps": steps + 1,
        "eval_interval": 10_000,  # only the final evaluation, after the last timed step
        "eval_limit": 1,
        "test_limit": 1,
        "prefix_cache": prefix_cache,
        **extra,
    }
    config = get_method(method).config_cls(**values)
    stamps = [time.perf_counter()]
    scorer = LocalScorer(cached_model(model, None))
    get_method(method).run(config, scorer=scorer, progress=lambda step, _: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps[1:-1], stamps[2:], strict=True)]


def plain_sorted_evaluate(task: ClassificationTask, lm: LanguageModel, prompt: torch.Tensor, limit: int) -> float:
    """The plain path over length-sorted batches of 16 (what sorting alone gains)."""
    examples = sorted(subset(task.examples("test"), limit), key=lambda e: len(task.formatter(e, lm)[0]))
    task.prefix_cache = False
    correct = 0
    with torch.no_grad():
        for start in range(0, len(examples), 16):
            batch = examples[start : start + 16]
            logits = task.output_logits(lm, prompt, batch)[0]
            correct += sum(int(logits[i].argmax()) == e.label for i, e in enumerate(batch))
    return correct / len(examples)


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def evaluation_times(lm: LanguageModel, limit: int, repeats: int) -> dict[str, Any]:
    task = get_task("sst2")
    assert isinstance(task, ClassificationTask)
    generator = torch.Generator().manual_seed(0)
    prompt = lm.embedding_matrix[torch.randint(0, 5000, (PROMPT_LENGTH,), generator=generator)]
    seconds: dict[str, list[float]] = {"test_plain": [], "test_plain_sorted": [], "test_cached": []}
    seconds.update({"dev_plain": [], "dev_cached": []})
    accuracy: dict[str, float] = {}
    for _ in range(repeats):
        for flag, name in ((False, "plain"), (True, "cached")):
            task.prefix_cache = flag
            for split, split_limit in (("test", limit), ("dev", None)):
                spent, accuracy[f"{split}_{name}"] = timed(
                    lambda s=split, n=split_limit: task.evaluate(lm, prompt, s, limit=n).metric
                )
                seconds[f"{split}_{name}"].append(spent)
        spent, accuracy["test_plain_sorted"] = timed(lambda: plain_sorted_evaluate(task, lm, prompt, limit))
        seconds["test_plain_sorted"].append(spent)
    task.prefix_cache = True
    return {"seconds": seconds, "accuracy": accuracy}


def cache_memory(lm: LanguageModel, batch_size: int, prompts: int) -> dict[str, float]:
    """Bytes of keys/values per token, and what the kept pools and a step's expansion take."""
    task = get_task("sst2")
    assert isinstance(task, ClassificationTask)
    start = time.perf_counter()
    encoded = encode_prefixes(lm, [task.formatter(e, lm)[0] for e in task.examples("train")])
    encode_s = time.perf_counter() - start
    dev = encode_prefixes(lm, [task.formatter(e, lm)[0] for e in task.examples("dev")])
    per_token = encoded.nbytes / encoded.attention_mask.numel()
    batch_tokens = encoded.attention_mask.shape[1] * batch_size  # at most, after gathering rows
    return {
        "bytes_per_token": per_token,
        "train_pool_bytes": encoded.nbytes,
        "dev_pool_bytes": dev.nbytes,
        "train_pool_padded_length": encoded.attention_mask.shape[1],
        "train_pool_encode_s": encode_s,
        "rlprompt_expanded_cache_bytes_max": per_token * batch_tokens * prompts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--rlprompt-steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=16, help="RLPrompt prompts per step")
    parser.add_argument("--eval-limit", type=int, default=256, help="SST-2 test sentences per evaluation")
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial gets one CPU in a sweep)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/prefix_cache.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = cached_model(args.model, None)  # load before timing

    setups = [  # (row name, method, config fields, timed steps)
        ("soft prompt step", "soft_prompt", {"batch_size": args.batch_size, "learning_rate": 0.3}, args.steps),
        ("PEZ step", "pez", {"batch_size": args.batch_size}, args.steps),
        (
            f"RLPrompt step ({args.prompts} x {args.batch_size})",
            "rlprompt",
            {"batch_size": args.batch_size, "policy_model": args.model, "prompts_per_step": args.prompts},
            args.rlprompt_steps,
        ),
    ]
    rows: dict[str, dict[str, Any]] = {}
    for order, (name, method, extra, steps) in enumerate(setups):
        runs = {}
        for flag in (False, True) if order % 2 == 0 else (True, False):  # alternate who goes first
            runs[flag] = step_times(method, args.model, steps, flag, extra)
        rows[name] = {"plain_s": runs[False], "cached_s": runs[True]}

    evaluation = evaluation_times(lm, args.eval_limit, args.eval_repeats)
    for split, label in (("test", f"evaluate test ({args.eval_limit})"), ("dev", "evaluate dev (32)")):
        rows[label] = {
            "plain_s": evaluation["seconds"][f"{split}_plain"],
            "cached_s": evaluation["seconds"][f"{split}_cached"],
        }
    memory = cache_memory(lm, args.batch_size, args.prompts)

    print(
        f"model {args.model}, SST-2, prompt length {PROMPT_LENGTH}, batch {args.batch_size}, torch threads "
        f"{args.threads}; medians (s) over repetitions in this one process"
    )
    print(f"{'measure':<40} {'plain':>8} {'cached':>8} {'speed-up':>9} {'n':>3}")
    for name, row in rows.items():
        row["plain_median_s"] = statistics.median(row["plain_s"])
        row["cached_median_s"] = statistics.median(row["cached_s"])
        row["speedup"] = row["plain_median_s"] / row["cached_median_s"]
        print(
            f"{name:<40} {row['plain_median_s']:>8.2f} {row['cached_median_s']:>8.2f} "
            f"{row['speedup']:>8.1f}x {len(row['plain_s']):>3}"
        )
    sorted_s = statistics.median(evaluation["seconds"]["test_plain_sorted"])
    print(f"plain path over length-sorted batches (no reuse), test ({args.eval_limit}): {sorted_s:.2f} s")
    mib = {k: v / 2**20 for k, v in memory.items() if k.endswith("bytes") or k.endswith("bytes_max")}
    print(
        f"cache memory: {memory['bytes_per_token'] / 1024:.1f} KiB per token; kept for the run: train pool "
        f"{mib['train_pool_bytes']:.1f} MiB (padded to {memory['train_pool_padded_length']} tokens, encoded once "
        f"in {memory['train_pool_encode_s']:.2f} s) + dev pool {mib['dev_pool_bytes']:.1f} MiB; RLPrompt's "
        f"per-step expansion over {args.prompts} prompts at most {mib['rlprompt_expanded_cache_bytes_max']:.0f} MiB "
        "(freed after the step)"
    )
    print(f"evaluation accuracies (must agree): {evaluation['accuracy']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}, {torch.get_num_interop_threads()} interop",
        "rows": rows,
        "test_plain_sorted_s": evaluation["seconds"]["test_plain_sorted"],
        "memory": memory,
        "accuracy": evaluation["accuracy"],
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
