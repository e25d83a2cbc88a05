"""Test-split evaluation: the plain path against the fast path, side by side in one process.

    python benchmarks/test_eval.py                                          # SmolLM2-135M, ~30 min
    python benchmarks/test_eval.py --model tiny-gpt2 --limits 64 1821 --repeats 1   # smoke

Run from the repository root with `PYTHONPATH=src SCRUTABLE_DATA_DIR=../shared/data
HF_HUB_OFFLINE=1`, on a quiet machine (the load average is printed in the table's header).

Plain path: `prefix_cache=False`, one prompt at a time, batches of 16 in file order, every
input run in full with the prompt (`ClassificationTask.evaluate`). Fast path:
`ClassificationTask.evaluate_prompts` on the prefix cache (`tasks/prefix_cache.py`):
length-sorted batches of 16, each input encoded once for all prompts and only the prompt
positions run per prompt, encoded batches kept across evaluations and tasks up to the
process's budget (`EVALUATION_CACHE_BYTES`, 2 GiB). Rows, for each number of SST-2 test
sentences:

- one prompt, first evaluation (nothing kept): a PEZ or RLPrompt trial's final test, the
  first on its worker;
- the card's two prompts, a soft prompt and its unembedded tokens (nothing kept): a
  soft-prompt trial's final test; the plain path evaluates them one after the other;
- one prompt again, on a new task sharing the first one's kept batches: the next trial's final
  test on the same worker (the sweep reuses actors, and with them the model), `scrutable
  pareto`, a second card. The plain path keeps nothing, so its time is the first row's.

Each timing is the median over `--repeats`, plain and fast alternating which goes first. The
accuracies of the two paths must be equal (the table says so) and the objectives within 1e-5.
Torch runs with one thread, as a sweep trial gets. Prints a table and writes JSON (`--json`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from scrutable.metrics.unembed import Distance, nearest_tokens
from scrutable.models import LanguageModel
from scrutable.tasks import get_task
from scrutable.tasks.base import Evaluated
from scrutable.tasks.classification import ClassificationTask
from scrutable.tasks.prefix_cache import BatchEncodings

PROMPT_LENGTH = 5
BATCH_SIZE = 16
ROWS = ("one prompt, first evaluation", "card: soft + unembedded prompt", "one prompt again (kept batches)")


def fresh_task(fast: bool, kept: BatchEncodings | None = None) -> ClassificationTask:
    """SST-2 with its test split loaded (reading the file is not timed) and `kept` batches
    (default: none yet, not the process's, so that every repetition starts cold)."""
    task = get_task("sst2", prefix_cache=fast)
    assert isinstance(task, ClassificationTask)
    task.kept_batches = kept if kept is not None else BatchEncodings()
    task.examples("test")
    return task


def card_prompts(lm: LanguageModel) -> tuple[torch.Tensor, torch.Tensor]:
    """A soft prompt (token embeddings moved off the vocabulary, as training leaves them) and its
    unembedded tokens (nearest by Euclidean distance), as `card.build_card` evaluates them."""
    generator = torch.Generator().manual_seed(0)
    tokens = lm.embedding_matrix[torch.randint(0, 5000, (PROMPT_LENGTH,), generator=generator)]
    spread = float(lm.embedding_matrix.float().std())
    soft = (tokens.float() + 0.5 * spread * torch.randn(tokens.shape, generator=generator)).to(lm.device)
    unembedded = lm.embedding_matrix[nearest_tokens(soft, lm.embedding_matrix, Distance.EUCLIDEAN).token_ids]
    return soft, unembedded


def timed(fn: Callable[[], list[Evaluated]]) -> tuple[float, list[Evaluated]]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(lm: LanguageModel, limit: int, repeats: int) -> dict[str, dict[str, Any]]:
    soft, unembedded = card_prompts(lm)
    seconds: dict[str, dict[str, list[float]]] = {row: {"plain": [], "fast": []} for row in ROWS}
    results: dict[str, dict[str, list[Evaluated]]] = {row: {} for row in ROWS}
    kept_bytes = 0

    def plain_path(*prompts: torch.Tensor) -> list[Evaluated]:
        """One prompt at a time; nothing is kept, so a second evaluation is the first again."""
        task = fresh_task(False)
        return [task.evaluate(lm, prompt, "test", limit=limit) for prompt in prompts]

    def fast_path(task: ClassificationTask, *prompts: torch.Tensor) -> list[Evaluated]:
        return task.evaluate_prompts(lm, list(prompts), "test", limit=limit)

    for repeat in range(repeats):
        for fast in (False, True) if repeat % 2 == 0 else (True, False):
            if fast:
                task = fresh_task(True)
                runs = [
                    (ROWS[0], partial(fast_path, task, unembedded)),
                    (ROWS[2], partial(fast_path, fresh_task(True, task.kept_batches), unembedded)),
                    (ROWS[1], partial(fast_path, fresh_task(True), soft, unembedded)),
                ]
            else:
                runs = [(ROWS[0], partial(plain_path, unembedded)), (ROWS[1], partial(plain_path, soft, unembedded))]
            for row, run in runs:
                spent, results[row]["fast" if fast else "plain"] = timed(run)
                seconds[row]["fast" if fast else "plain"].append(spent)
            if fast:
                kept_bytes = task.evaluation_batches_bytes()
    seconds[ROWS[2]]["plain"] = seconds[ROWS[0]]["plain"]
    results[ROWS[2]]["plain"] = results[ROWS[0]]["plain"]

    table: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        plain, fast = results[row]["plain"], results[row]["fast"]
        table[row] = {
            "plain_s": seconds[row]["plain"],
            "fast_s": seconds[row]["fast"],
            "plain_median_s": statistics.median(seconds[row]["plain"]),
            "fast_median_s": statistics.median(seconds[row]["fast"]),
            "accuracy_plain": [e.metric for e in plain],
            "accuracy_fast": [e.metric for e in fast],
            "accuracy_equal": [e.metric for e in plain] == [e.metric for e in fast],
            "objective_max_abs_diff": max(abs(a.objective - b.objective) for a, b in zip(plain, fast, strict=True)),
        }
        table[row]["speedup"] = table[row]["plain_median_s"] / table[row]["fast_median_s"]
    table[ROWS[2]]["kept_bytes"] = kept_bytes
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limits", type=int, nargs="+", default=[128, 1821], help="SST-2 test sentences")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial gets one CPU in a sweep)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/test_eval.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from scrutable.trainables.common import cached_model

    lm = cached_model(args.model, None)  # loaded before timing
    fresh_task(False).evaluate(lm, lm.embedding_matrix[:PROMPT_LENGTH], "dev", limit=BATCH_SIZE)  # warm-up
    load_before = os.getloadavg()
    tables = {limit: measure(lm, limit, args.repeats) for limit in args.limits}
    load_after = os.getloadavg()

    print(
        f"SST-2 test evaluation, model {args.model}, prompt length {PROMPT_LENGTH}, batch {BATCH_SIZE}, torch threads "
        f"{args.threads}, medians of {args.repeats}; load average (1, 5, 15 min) before "
        f"{', '.join(f'{x:.2f}' for x in load_before)}, after {', '.join(f'{x:.2f}' for x in load_after)}"
    )
    print(f"{'sentences':>9}  {'measure':<34} {'plain (s)':>9} {'fast (s)':>9} {'speed-up':>9}  accuracy equal")
    for limit, table in tables.items():
        for row, values in table.items():
            print(
                f"{limit:>9}  {row:<34} {values['plain_median_s']:>9.2f} {values['fast_median_s']:>9.2f} "
                f"{values['speedup']:>8.1f}x  {'yes' if values['accuracy_equal'] else 'NO'} "
                f"{values['accuracy_fast']} (objective max diff {values['objective_max_abs_diff']:.1e})"
            )
        kept = table[ROWS[2]]["kept_bytes"]
        print(f"{'':>9}  kept after the first evaluation: {kept / 2**20:.1f} MiB")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs",
        "load_average_before": load_before,
        "load_average_after": load_after,
        "tables": {str(limit): table for limit, table in tables.items()},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
