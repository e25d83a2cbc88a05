"""This machine's float32 matmul rate, and the share of it the scorer and a task step reach.

    python benchmarks/flops.py                        # SmolLM2-135M, 1 and 2 threads
    python benchmarks/flops.py --threads 1 --lengths 5,20 --batches 16,64   # the scorer table of issue 19
    python benchmarks/flops.py --prefix-cache         # the task step on the cached path (issue 8 section 1)
    python benchmarks/flops.py --model tiny-gpt2 --repeats 1   # smoke

1. Peak: the best rate of an n x n float32 matmul (2 n^3 FLOPs) through torch, per thread count.
2. FLOPs per token of the scorer's forward, from the model config: 2 x (the matmul weights a
   token passes: attention projections, MLP, LM head) + attention scores and mixing
   (4 x context x hidden per layer, mean causal context). It is checked against torch's own
   count (`torch.utils.flop_counter.FlopCounterMode`).
3. The scorer: `sequence_perplexities` (the actor's value request) and `onehot_gradients`
   (PEZ's gradient request) at batch sizes B and prompt lengths L <= 20, on the fast path
   (`metrics/perplexity.py`) and on the plain path it replaced (commit 801cefb, copied below:
   full logits and a float32 log-softmax; a one-hot leaf times the embedding matrix).
   The share of peak is the USEFUL work per second: torch's count of the fast path's FLOPs
   (body, the LM head at the scored positions, and for gradients the backward to the inputs
   and the L x V product with the embedding matrix), for both paths. The plain path also
   runs work that is not needed (the head at the last position, the one-hot product), so
   its own count (`gflop_run`) is larger: the figures before issue 19 divided that count,
   which flattered it. The best batch size per L is marked.
4. A task-model step: SST-2 batch of 16 with a 5-token soft prompt, `task.loss` + backward
   to the prompt (weights frozen: input gradients only), on the plain path, or with
   `--prefix-cache` on the cached path of `tasks/prefix_cache.py`.

Best of `--repeats` timings, each after a warm-up call. On a shared CPU the peak and a
row's timing may meet different loads, so every row also times the peak matmul alternately
with itself (`peak_row`) and its `share` divides by that; `share_global` divides by the
script's best-of-10 peak. `load` is `os.getloadavg()` (1 minute) when the row was taken:
figures for the record need it below 1. Writes JSON to --out (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tables import render, write
from torch.utils.flop_counter import FlopCounterMode

from scrutable.metrics.perplexity import _start_and_pad, onehot_gradients, sequence_perplexities
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


def timed_beside_peak(fn: Callable[[], Any], repeats: int, size: int) -> tuple[float, float]:
    """Best time of fn and the best matmul rate, taken alternately: both see the same load."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    fn()  # warm-up: allocator, kernels
    a @ b
    times, peak_times = [], []
    for _ in range(repeats):
        for run, into in ((fn, times), (lambda: a @ b, peak_times)):
            start = time.perf_counter()
            run()
            into.append(time.perf_counter() - start)
    return min(times), 2 * size**3 / min(peak_times)


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


# --- The plain path (commit 801cefb), the side-by-side reference for the fast one ---------


@torch.no_grad()
def plain_values(lm: LanguageModel, sequences: list[list[int]]) -> list[float]:
    ids, mask = _start_and_pad(lm, sequences)
    attention = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1).long()
    logits = lm.model(inputs_embeds=lm.model.get_input_embeddings()(ids), attention_mask=attention).logits
    log_probs = F.log_softmax(logits[:, :-1, : lm.vocab_size].float(), dim=-1)  # (N, L, V)
    nll = -log_probs.gather(-1, ids[:, 1:, None])[..., 0] * mask
    return [math.exp(v) for v in (nll.sum(-1) / mask.sum(-1)).tolist()]


def plain_gradients(lm: LanguageModel, sequences: list[list[int]]) -> list[Any]:
    ids, mask = _start_and_pad(lm, sequences)
    onehot = F.one_hot(ids, num_classes=lm.vocab_size).float().requires_grad_(True)  # (N, 1+L, V)
    inputs_embeds = onehot.to(lm.embedding_matrix.dtype) @ lm.embedding_matrix
    attention = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1).long()
    logits = lm.model(inputs_embeds=inputs_embeds, attention_mask=attention).logits
    log_probs = F.log_softmax(logits[:, :-1, : lm.vocab_size].float(), dim=-1)
    mean_nll = (-(onehot[:, 1:] * log_probs).sum(-1) * mask).sum(-1) / mask.sum(-1)
    (grad,) = torch.autograd.grad(mean_nll.sum(), onehot)
    return [grad[row, 1 : 1 + len(seq)].numpy() for row, seq in enumerate(sequences)]


SCORER_PATHS = {
    ("value", "fast"): sequence_perplexities,
    ("value", "plain"): plain_values,
    ("gradient", "fast"): onehot_gradients,
    ("gradient", "plain"): plain_gradients,
}


def scorer_rows(lm: LanguageModel, lengths: list[int], batches: list[int], paths: list[str], size: int,
                peak: float, repeats: int) -> list[dict]:  # fmt: skip
    rows = []
    for kind in ("value", "gradient"):
        for length in lengths:
            for batch in batches:
                prompts = [[(7 * i + 13 * j) % 1000 + 2 for j in range(length)] for i in range(batch)]
                useful = counted(lambda kind=kind, prompts=prompts: SCORER_PATHS[kind, "fast"](lm, prompts))
                times = {}
                for path in paths:
                    fn = SCORER_PATHS[kind, path]
                    executed = counted(lambda fn=fn, prompts=prompts: fn(lm, prompts))
                    load = os.getloadavg()[0]
                    seconds, peak_row = timed_beside_peak(lambda fn=fn, prompts=prompts: fn(lm, prompts), repeats, size)
                    times[path] = seconds
                    rows.append(
                        {
                            "what": f"scorer {kind}",
                            "path": path,
                            "L": length,
                            "B": batch,
                            "tokens": batch * (length + 1),  # with the start token
                            "seconds": seconds,
                            "gflop": useful / 1e9,
                            "gflop_run": executed / 1e9,
                            "gflops_per_s": useful / seconds / 1e9,
                            "peak_row": peak_row / 1e9,
                            "share": useful / seconds / peak_row,
                            "share_global": useful / seconds / peak,
                            "load": load,
                        }
                    )
                if "plain" in times and "fast" in times:
                    rows[-len(paths) + paths.index("fast")]["speedup"] = times["plain"] / times["fast"]
    return rows


def measured_row(row: dict, fn: Callable[[], Any], peak: float, repeats: int, size: int = 2048) -> dict:
    """One workload's FLOPs (its own count), time, peak beside it and shares."""
    flops, load = counted(fn), os.getloadavg()[0]
    seconds, peak_row = timed_beside_peak(fn, repeats, size)
    return row | {"seconds": seconds, "gflop": flops / 1e9, "gflops_per_s": flops / seconds / 1e9,
                  "peak_row": peak_row / 1e9, "share": flops / seconds / peak_row,
                  "share_global": flops / seconds / peak, "load": load}  # fmt: skip


def reference_row(lm: LanguageModel, peak: float, repeats: int) -> dict:
    ids = torch.randint(2, 1000, (16, 32))

    def forward() -> None:
        with torch.no_grad():
            lm.model(input_ids=ids)

    return measured_row({"what": "plain forward", "L": 32, "B": 16, "tokens": 512}, forward, peak, repeats)


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

    what = f"task step ({'cached' if prefix_cache else 'plain'})"
    return measured_row({"what": what, "L": 5, "B": 16, "tokens": "-"}, step, peak, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=None, help="default $SCRUTABLE_DATA_DIR")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--lengths", default="5,10,20", help="prompt lengths L")
    parser.add_argument("--batches", default="1,4,16,64", help="scorer batch sizes B")
    parser.add_argument("--paths", default="plain,fast", help="scorer paths: plain (commit 801cefb), fast")
    parser.add_argument("--scorer-only", action="store_true", help="skip the reference forward and the task step")
    parser.add_argument("--prefix-cache", action="store_true", help="time the task step on the cached path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args()

    lm = load_model(args.model, data_dir=args.data_dir)
    lengths = [int(x) for x in args.lengths.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    per_token = {str(length): config_flops_per_token(lm, (length + 2) / 2) for length in lengths}
    paths = args.paths.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    print(f"load average (1, 5, 15 min) at the start: {os.getloadavg()}")
    peaks = {t: matmul_peak(t, args.matmul_size, args.repeats) for t in threads}
    print(f"model {args.model}: {per_token[str(lengths[0])]['weights'] / 1e6:.1f} M matmul weights per token")
    print("float32 matmul peak: " + ", ".join(f"{t} thread(s) {p / 1e9:.1f} GFLOP/s" for t, p in peaks.items()))
    print("forward FLOPs per token from the config (L -> MFLOP): " + ", ".join(
        f"{k}: {v['total'] / 1e6:.1f}" for k, v in per_token.items()))  # fmt: skip

    rows = []
    for t in threads:
        torch.set_num_threads(t)
        block = [] if args.scorer_only else [reference_row(lm, peaks[t], args.repeats)]
        block += scorer_rows(lm, lengths, batches, paths, args.matmul_size, peaks[t], args.repeats)
        if not args.scorer_only:
            block.append(task_step_row(lm, args.data_dir, args.prefix_cache, peaks[t], args.repeats))
        for kind in ("scorer value", "scorer gradient"):
            for path in paths:
                for length in lengths:
                    same = [r for r in block if r["what"] == kind and r["path"] == path and r["L"] == length]
                    max(same, key=lambda r: r["share"])["best"] = "*"
        rows += [{**r, "threads": t} for r in block]
        print(f"threads {t}, peak {peaks[t] / 1e9:.1f} GFLOP/s", flush=True)
    columns = ["threads", "what", "path", "L", "B", "tokens", "seconds", "gflop", "gflop_run", "gflops_per_s",
               "peak_row", "share", "share_global", "load", "speedup", "best"]  # fmt: skip
    print(render(rows, columns))
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    # The config count vs torch's for the reference forward (no padding, context 16.5 on average).
    reference = config_flops_per_token(lm, 33 / 2)["total"] * 512 / 1e9
    if not args.scorer_only:
        print(f"reference forward: config count {reference:.2f} GFLOP, torch count {rows[0]['gflop']:.2f} GFLOP")
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
