"""The shared scorer actor against one scorer per trial: throughput, memory, batching.

    python benchmarks/scorer_actor.py                          # SmolLM2-135M, N = 1, 2, 4
    python benchmarks/scorer_actor.py --model tiny-gpt2 --duration 3 --repeats 1   # smoke

N trial-like clients run at once, each a Ray task in its own process, for `--duration`
seconds after a common start (model loading excluded). Each loops like a trial's step:
submit its scorer request without blocking, do its own work for `--work-ms` (a sleep: the
task model's forward, which on a cluster runs on the trial's own device), then resolve
the request. The request is what a trial sends per step:
- pez: the perplexity gradient of one prompt of L tokens (`submit_gradients`);
- rlprompt: the perplexities of 16 sampled prompts of L tokens (`submit_perplexity`).
Against (a) `shared`: one `ScorerService` actor (`sweep/scorer_actor.py`) serving all N,
and (b) `per_client`: each client with its own `LocalScorer` (a copy of the weights).

Reported per (workload, N, setup), medians over `--repeats`: prompt tokens scored per
second over all clients; peak resident memory summed over the processes (actor + clients)
and the part that is the scorer (the actor's process, or each client's growth from
loading its scorer); the actor's mean batch size (sequences) and share of batches that
mix two or more clients. Torch threads: 1 per client, `--actor-threads` for the actor.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import time
from pathlib import Path
from typing import Any

import ray
from tables import median, render, write

from scrutable.sweep.launcher import QUIET_ENV
from scrutable.sweep.scorer_actor import NAMESPACE, ActorScorer, start_scorer

WORKLOADS = {"pez": 1, "rlprompt": 16}  # prompts per request


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@ray.remote(num_cpus=0, max_calls=1)  # a fresh process per client: its peak memory is its own
def client(
    setup: str, name: str, model: str, workload: str, length: int, work_s: float, start_at: float, duration: float
) -> dict[str, float]:
    import torch

    from scrutable.metrics.perplexity import LocalScorer, ScoreRequest
    from scrutable.models import load_model

    torch.set_num_threads(1)  # a trial holds one CPU
    before = _rss_mib()
    if setup == "shared":
        scorer: Any = ActorScorer(name.split("/")[0], name)
    else:
        scorer = LocalScorer(load_model(model, data_dir=os.environ.get("SCRUTABLE_DATA_DIR")))
        scorer.perplexity_gradients([[1] * length])  # warm-up, as the actor's first batch
    loaded = _rss_mib()
    rng = random.Random(name)
    vocab = 1000  # ids below the smallest vocabulary in use; their values do not change the cost
    prompts_per_request = WORKLOADS[workload]
    time.sleep(max(0.0, start_at - time.time()))
    stop, tokens, steps = time.monotonic() + duration, 0, 0
    while time.monotonic() < stop:
        prompts = [[rng.randrange(2, vocab) for _ in range(length)] for _ in range(prompts_per_request)]
        if workload == "pez":
            pending = scorer.submit_gradients(prompts)
        else:
            pending = scorer.submit_perplexity([ScoreRequest(token_ids=tuple(p)) for p in prompts])
        time.sleep(work_s)  # the trial's own task forward
        pending.result()
        tokens += length * prompts_per_request
        steps += 1
    elapsed = duration + max(0.0, time.monotonic() - stop)
    return {
        "tokens": tokens,
        "steps": steps,
        "elapsed": elapsed,
        "before_mib": before,
        "loaded_mib": loaded,
        "peak_mib": _peak_mib(),
    }


def measure(args: argparse.Namespace, setup: str, workload: str, clients: int, repeat: int) -> dict[str, Any]:
    sweep = f"bench-{setup}-{workload}-{clients}-{repeat}"
    actor = None
    if setup == "shared":
        actor = start_scorer(
            sweep,
            args.model,
            os.environ.get("SCRUTABLE_DATA_DIR"),
            num_gpus=0,
            max_batch=64,
            max_wait_ms=args.max_wait_ms,
        )
    start_at = time.time() + args.startup_s  # every client loads first, then all start together
    refs = [
        client.remote(
            setup,
            f"{sweep}/client-{i}",
            args.model,
            workload,
            args.length,
            args.work_ms / 1000,
            start_at,
            args.duration,
        )
        for i in range(clients)
    ]
    rows = ray.get(refs)
    tokens = sum(r["tokens"] for r in rows)
    result: dict[str, Any] = {
        "setup": setup,
        "workload": workload,
        "clients": clients,
        "tokens_per_s": tokens / max(r["elapsed"] for r in rows),
        "steps_per_s_per_client": sum(r["steps"] / r["elapsed"] for r in rows) / clients,
        "peak_mib_total": sum(r["peak_mib"] for r in rows),
        "scorer_mib": sum(r["loaded_mib"] - r["before_mib"] for r in rows),
        "mean_batch": float(WORKLOADS[workload]),
        "mixed_share": 0.0,
    }
    if actor is not None:
        stats = ray.get(actor.batch_stats.remote())
        info = ray.get(actor.process_info.remote())
        result.update(
            peak_mib_total=result["peak_mib_total"] + info["peak_rss_mib"],
            scorer_mib=info["peak_rss_mib"],
            mean_batch=stats["mean_batch_size"],
            mixed_share=stats["mixed_batch_share"],
            actor_threads=info["threads"],
        )
        ray.kill(actor, no_restart=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--clients", default="1,2,4", help="comma-separated N")
    parser.add_argument("--workloads", default="pez,rlprompt", help=f"comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--length", type=int, default=5, help="prompt tokens L")
    parser.add_argument("--work-ms", type=float, default=1000.0, help="each step's own work between submit and result")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--startup-s", type=float, default=8.0, help="time allowed for clients to load")
    parser.add_argument("--repeats", type=int, default=3)
    # One thread: on this shared 2-core machine two OpenMP threads made a gradient request
    # 6x slower (1.0 s -> 6.1 s for one L = 5 prompt on SmolLM2), as the actor in a sweep has.
    parser.add_argument("--actor-threads", type=int, default=1)
    parser.add_argument("--max-wait-ms", type=float, default=2000.0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args()

    os.environ.update(QUIET_ENV)
    os.environ["OMP_NUM_THREADS"] = str(args.actor_threads)  # inherited by the actor; clients set 1
    env = {k: v for k, v in os.environ.items() if k.startswith(("SCRUTABLE_", "HF_", "OMP_"))}
    ray.init(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    runs = []
    for workload in args.workloads.split(","):
        for clients in [int(n) for n in args.clients.split(",")]:
            for setup in ("shared", "per_client"):
                runs.append([measure(args, setup, workload, clients, r) for r in range(args.repeats)])
                print(f"done {workload} N={clients} {setup}", flush=True)
    ray.shutdown()

    metrics = ["tokens_per_s", "steps_per_s_per_client", "peak_mib_total", "scorer_mib", "mean_batch", "mixed_share"]
    rows = [{**repeats[0], **{m: median([r[m] for r in repeats]) for m in metrics}} for repeats in runs]
    print(
        f"model {args.model}, L = {args.length}, work {args.work_ms:.0f} ms per step, {args.duration:.0f} s per run,"
        f" medians of {args.repeats}, actor threads {args.actor_threads}, client threads 1"
    )
    print(render(rows, ["workload", "clients", "setup", *metrics]))
    path = write(args.out, "scorer_actor", {"args": vars(args) | {"out": str(args.out)}, "rows": rows, "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
