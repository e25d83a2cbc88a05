"""This machine's float32 matmul rate, and the share of it the scorer and a task step reach.

    python benchmarks/flops.py                        # SmolLM2-135M, 1 and 2 threads
    python benchmarks/flops.py --prefix-cache         # the task step on the cached path (issue 8 section 1)
    python benchmarks/flops.py --model tiny-gpt2 --repeats 1   # smoke

1. Peak: the best rate of an n x n float32 matmul (2 n^3 FLOPs) through torch, per thread count.
2. FLOPs per token of the scorer's forward, from the model config: 2 x (the matmul weights a
   token passes: attention projections, MLP, LM head) + attention scores and mixing
   (4 x context x hidden per layer, mean causal context). It is checked against torch's own
   count (`torch.utils.flop_counter.FlopCounterMode`), which is what the shares below use:
   the FLOPs the model really executes (padding included), not an estimate.
3. The scorer: `sequence_perplexities` (the actor's value request) and `onehot_gradients`
   (PEZ's gradient request) at batch sizes B and prompt lengths L <= 20: FLOPs / time / peak.
   The best batch size per L is marked. A plain batch-16 forward of 32 tokens is the reference.
4. A task-model step: SST-2 batch of 16 with a 5-token soft prompt, `task.loss` + backward
   to the prompt (weights frozen: input gradients only), on the plain path, or with
   `--prefix-cache` on the cached path of `tasks/prefix_cache.py` once that has landed.
Best of `--repeats` timings (peak: of at least 10), each after a warm-up call: on a shared
CPU the least disturbed run is the one that measures the machine. Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tables import render, write
from torch.utils.flop_counter import FlopCounterMode

from scrutable.metrics.perplexity import onehot_gradients, sequence_perplexities
from scrutable.models import LanguageModel, load_model
from scrutable.tasks import get_task, sample_batch


def timed(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)  # the CPU is shared: the least disturbed run is the machine's


def counted(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(threads: int, size: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = min(timed(lambda: a @ b, 1) for _ in range(max(10, repeats)))
    return 2 * size**3 / best


def config_flops_per_token(lm: LanguageModel, context: float) -> dict[str, float]:
    """Forward FLOPs per token from the config (decoder-only LLaMA/GPT-2 style)."""
    c = lm.model.config
    hidden = c.hidden_size
    layers = c.num_hidden_layers
    heads = c.num_attention_heads
    kv_dim = hidden // heads * getattr(c, "num_key_value_heads", heads)
    inner = getattr(c, "intermediate_size", None) or 4 * hidden
    gated = getattr(c, "hidden_act", "") == "silu"  # LLaMA's SwiGLU MLP has three matrices
    attention_weights = 2 * hidden * hidden + 2 * hidden * kv_dim  # q, o; k, v
    mlp_weights = (3 if gated else 2) * hidden * inner
    head = hidden * lm.vocab_size
    matmul = 2 * (layers * (attention_weights + mlp_weights) + head)
    attention = layers * 4 * context * hidden  # QK^T and AV over the mean causal context
    return {"weights": matmul / 2, "matmul": matmul, "attention": attention, "total": matmul + attention}


def scorer_rows(lm: LanguageModel, lengths: list[int], batches: list[int], peak: float, repeats: int) -> list[dict]:
    rows = []
    for kind, fn in (("value", sequence_perplexities), ("gradient", onehot_gradients)):
        for length in lengths:
            for batch in batches:
                prompts = [[(7 * i + 13 * j) % 1000 + 2 for j in range(length)] for i in range(batch)]
                flops = counted(lambda fn=fn, prompts=prompts: fn(lm, prompts))
                seconds = timed(lambda fn=fn, prompts=prompts: fn(lm, prompts), repeats)
                rows.append(
                    {
                        "what": f"scorer {kind}",
                        "L": length,
                        "B": batch,
                        "tokens": batch * (length + 1),  # with the start token
                        "seconds": seconds,
                        "gflop": flops / 1e9,
                        "gflops_per_s": flops / seconds / 1e9,
                        "share": flops / seconds / peak,
                    }
                )
    return rows


def reference_row(lm: LanguageModel, peak: float, repeats: int) -> dict:
    ids = torch.randint(2, 1000, (16, 32))

    def forward() -> None:
        with torch.no_grad():
            lm.model(input_ids=ids)

    flops, seconds = counted(forward), timed(forward, repeats)
    return {"what": "plain forward", "L": 32, "B": 16, "tokens": 512, "seconds": seconds, "gflop": flops / 1e9,
            "gflops_per_s": flops / seconds / 1e9, "share": flops / seconds / peak}  # fmt: skip


def task_step_row(lm: LanguageModel, data_dir: str | None, prefix_cache: bool, peak: float, repeats: int) -> dict:
    if prefix_cache and "prefix_cache" not in inspect.signature(get_task).parameters:
        raise SystemExit("--prefix-cache: this checkout has no prefix cache yet (issue 8 section 1); run without it")
    extra = {"prefix_cache": prefix_cache} if "prefix_cache" in inspect.signature(get_task).parameters else {}
    task = get_task("sst2", data_dir=data_dir, seed=13, **extra)
    batch = sample_batch(task.examples("train"), 16, torch.Generator().manual_seed(0))
    prompt = torch.nn.Parameter(lm.embedding_matrix[torch.arange(100, 105)].clone())  # (5, D)

    def step() -> None:
        prompt.grad = None
        task.loss(lm, prompt, batch).backward()

    flops, seconds = counted(step), timed(step, repeats)
    return {"what": f"task step ({'cached' if prefix_cache else 'plain'})", "L": 5, "B": 16, "tokens": "-",
            "seconds": seconds, "gflop": flops / 1e9, "gflops_per_s": flops / seconds / 1e9,
            "share": flops / seconds / peak}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=None, help="default $SCRUTABLE_DATA_DIR")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--lengths", default="5,10,20", help="prompt lengths L")
    parser.add_argument("--batches", default="1,4,16,64", help="scorer batch sizes B")
    parser.add_argument("--prefix-cache", action="store_true", help="time the task step on the cached path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args()

    lm = load_model(args.model, data_dir=args.data_dir)
    lengths = [int(x) for x in args.lengths.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    per_token = {str(length): config_flops_per_token(lm, (length + 2) / 2) for length in lengths}
    threads = [int(t) for t in args.threads.split(",")]
    peaks = {t: matmul_peak(t, args.matmul_size, args.repeats) for t in threads}
    print(f"model {args.model}: {per_token[str(lengths[0])]['weights'] / 1e6:.1f} M matmul weights per token")
    print("float32 matmul peak: " + ", ".join(f"{t} thread(s) {p / 1e9:.1f} GFLOP/s" for t, p in peaks.items()))
    print("forward FLOPs per token from the config (L -> MFLOP): " + ", ".join(
        f"{k}: {v['total'] / 1e6:.1f}" for k, v in per_token.items()))  # fmt: skip

    rows = []
    for t in threads:
        torch.set_num_threads(t)
        block = [reference_row(lm, peaks[t], args.repeats)]
        block += scorer_rows(lm, lengths, batches, peaks[t], args.repeats)
        block.append(task_step_row(lm, args.data_dir, args.prefix_cache, peaks[t], args.repeats))
        for kind in ("scorer value", "scorer gradient"):
            for length in lengths:
                same = [r for r in block if r["what"] == kind and r["L"] == length]
                max(same, key=lambda r: r["share"])["best"] = "*"
        rows += [{**r, "threads": t} for r in block]
        print(f"threads {t}, peak {peaks[t] / 1e9:.1f} GFLOP/s", flush=True)
    columns = ["threads", "what", "L", "B", "tokens", "seconds", "gflop", "gflops_per_s", "share", "best"]
    print(render(rows, columns))
    # The config count vs torch's for the reference forward (no padding, context 16.5 on average).
    reference = config_flops_per_token(lm, 33 / 2)["total"] * 512 / 1e9
    counted_reference = rows[0]["gflop"]
    print(f"reference forward: config count {reference:.2f} GFLOP, torch count {counted_reference:.2f} GFLOP")
    record = {
        "args": vars(args) | {"out": str(args.out)},
        "matmul_peak_flops": {str(t): p for t, p in peaks.items()},
        "config_flops_per_token": per_token,
        "reference_config_gflop": reference,
        "rows": rows,
    }
    print(f"wrote {write(args.out, 'flops', record)}")


if __name__ == "__main__":
    main()
