"""Step time of each optimizer on this machine, with the frozen models' share.

    python benchmarks/step_time.py                      # SmolLM2-135M, offline
    python benchmarks/step_time.py --model tiny-gpt2    # seconds, for a smoke check

Runs the real `run()` loop of each method for a few steps (evaluation pushed past the
measured steps) and times, inside those steps, the task model's forward passes
(`task.loss` / `task.reward`) and the scorer's calls by wrapping them. "rest" is
everything else in the step: the backward pass through the frozen model, the optimizer,
PEZ's projection, RLPrompt's policy sampling, target forward and SQL loss. Prints a table.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from scrutable.metrics.perplexity import LocalScorer
from scrutable.trainables import common, get_method
from scrutable.trainables.common import cached_model


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        return timed


def measure(method: str, model: str, steps: int, extra: dict[str, Any]) -> dict[str, float]:
    timer = Timer()
    real_get_task = common.get_task

    def timed_task(*args: Any, **kwargs: Any) -> Any:
        task = real_get_task(*args, **kwargs)
        task.loss = timer.wrap("task_forward", task.loss)
        task.reward = timer.wrap("task_forward", task.reward)
        return task

    scorer = LocalScorer(cached_model(model, None))
    scorer.perplexity = timer.wrap("scorer", scorer.perplexity)  # type: ignore[method-assign]
    scorer.perplexity_gradients = timer.wrap("scorer", scorer.perplexity_gradients)  # type: ignore[method-assign]
    values = {
        "task": "sst2",
        "model": model,
        "scorer": model,
        "prompt_length": 5,
        "alpha": 0.5,
        "steps": steps + 1,
        "eval_interval": 10_000,
        "eval_limit": 1,
        "test_limit": 1,
        **extra,
    }
    config = get_method(method).config_cls(**values)
    stamps: list[float] = []
    common.get_task = timed_task
    try:
        start = time.perf_counter()
        get_method(method).run(config, scorer=scorer, progress=lambda step, _: stamps.append(time.perf_counter()))
    finally:
        common.get_task = real_get_task
    # Step 1 includes warm-up; the components were timed over all steps, so scale them.
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    total = stamps[-1] - start
    share = {k: v / total for k, v in timer.seconds.items()}
    return {"step_s": per_step, **{k: share[k] * per_step for k in share}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial gets one CPU in a sweep)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cached_model(args.model, None)  # load before timing
    setups = {
        "soft_prompt": {"batch_size": args.batch_size, "learning_rate": 0.3},
        "pez": {"batch_size": args.batch_size},
        "rlprompt": {"batch_size": args.batch_size, "policy_model": args.model, "prompts_per_step": 16},
    }
    print(
        f"model {args.model} (task model, scorer, policy), prompt length 5, batch {args.batch_size} examples"
        f" (RLPrompt: 16 prompts x {args.batch_size} examples), torch threads {args.threads}"
    )
    print(f"{'method':<12} {'step (s)':>9} {'task fwd (s)':>13} {'scorer (s)':>11} {'rest (s)':>9}")
    for method, extra in setups.items():
        row = measure(method, args.model, args.steps, extra)
        rest = row["step_s"] - row.get("task_forward", 0.0) - row.get("scorer", 0.0)
        print(
            f"{method:<12} {row['step_s']:>9.2f} {row.get('task_forward', 0.0):>13.2f} "
            f"{row.get('scorer', 0.0):>11.2f} {rest:>9.2f}"
        )


if __name__ == "__main__":
    main()
