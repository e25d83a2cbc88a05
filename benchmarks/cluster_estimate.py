"""Paper estimate: GPU time of sweeps/sst2_rlprompt.yaml on an 8-GPU cluster, from counted FLOPs.

    python benchmarks/cluster_estimate.py                            # H100 fp32, 30% utilisation
    python benchmarks/cluster_estimate.py --peak-tflops 495 --utilisation 0.3   # TF32 tensor cores

No GPU is lent to this task, so this is arithmetic, not a measurement on a GPU. What is
counted rather than assumed: the FLOPs of one RLPrompt step's task reward, P = 16 prompts x
B = 16 SST-2 training examples (seed 13) through a distilgpt2-shaped model (random weights,
GPT-2 tokenizer: the FLOPs depend on shapes only), with torch's `FlopCounterMode` on the real
`task.reward` code path (plain: every input in full, logits at every position). From the
config (`flops.config_flops_per_token`, checked against torch's count in flops.py): the
gpt2-xl scorer's forward on the step's P prompts, and the policy (distilgpt2 body):
sampling L tokens without a cache, L(L+1)/2 token passes per prompt, plus the target pass.
Evaluation (32 dev examples every 500 steps, the test split once) is counted the same way.
The time: FLOPs / (GPUs x peak x utilisation), for the spec's 24 trials x 12,000 steps.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from flops import config_flops_per_token, counted
from tables import render, write
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from scrutable.models import LanguageModel, _freeze, _tokenizer_dir
from scrutable.tasks import get_task, sample_batch


def gpt2_shaped(name: str, layers: int, width: int, heads: int, data_dir: str | None) -> LanguageModel:
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_dir(data_dir, "gpt2"))
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=width, n_layer=layers, n_head=heads)
    with torch.device("meta" if layers > 12 else "cpu"):  # gpt2-xl: its config only
        model = GPT2LMHeadModel(config)
    return _freeze((model, tokenizer), name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, default=67.0, help="per GPU (H100 SXM float32, no tensor cores)")
    parser.add_argument("--utilisation", type=float, default=0.3, help="achieved share of the peak")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--prompt-length", type=int, default=5, help="the spec searches 2, 5, 10")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args()
    data_dir = os.environ.get("SCRUTABLE_DATA_DIR")

    task_lm = gpt2_shaped("distilgpt2-shaped", 6, 768, 12, data_dir)
    scorer = gpt2_shaped("gpt2-xl-shaped", 48, 1600, 25, data_dir)
    task = get_task("sst2", data_dir=data_dir, seed=13)
    generator = torch.Generator().manual_seed(0)
    batch = sample_batch(task.examples("train"), args.batch, generator)
    ids = torch.randint(1000, 20000, (args.prompts, args.prompt_length), generator=generator)
    with torch.no_grad():
        reward = counted(lambda: task.reward(task_lm, ids, batch))
        dev = counted(lambda: task.evaluate(task_lm, task_lm.embedding_matrix[ids[0]], "dev"))
    length = args.prompt_length
    scorer_flops = config_flops_per_token(scorer, (length + 2) / 2)["total"] * args.prompts * (length + 1)
    policy_tokens = args.prompts * (length * (length + 1) // 2 + length)
    policy = config_flops_per_token(task_lm, length / 2)["total"] * policy_tokens * 2  # forward + input backward
    test_examples = len(task.examples("test"))
    test = dev * test_examples / len(task.examples("dev"))
    step = reward + scorer_flops + policy
    evaluations = args.steps // 500
    trial = args.steps * step + evaluations * dev + test
    sweep = args.trials * trial
    seconds = sweep / (args.gpus * args.peak_tflops * 1e12 * args.utilisation)
    rows = [
        {"part": "task reward (P x B, plain)", "tflop_per_step": reward / 1e12},
        {"part": "scorer gpt2-xl (P prompts)", "tflop_per_step": scorer_flops / 1e12},
        {"part": "policy (sample + target)", "tflop_per_step": policy / 1e12},
        {"part": "step total", "tflop_per_step": step / 1e12},
    ]
    print(f"RLPrompt SST-2, L = {length}, {args.prompts} prompts x {args.batch} examples per step")
    print(render(rows, ["part", "tflop_per_step"]))
    print(
        f"per trial {trial / 1e15:.1f} PFLOP ({args.steps} steps, {evaluations} dev evaluations, test once); "
        f"sweep of {args.trials}: {sweep / 1e15:.0f} PFLOP"
    )
    print(
        f"on {args.gpus} GPUs at {args.peak_tflops:g} TFLOP/s x {args.utilisation:.0%}: "
        f"{seconds / 3600:.1f} h wall, {seconds * args.gpus / 3600:.0f} GPU-hours"
    )
    record = {
        "args": vars(args) | {"out": str(args.out)},
        "flops": {"reward": reward, "scorer": scorer_flops, "policy": policy, "dev_eval": dev, "test_eval": test},
        "per_trial": trial,
        "sweep": sweep,
        "hours": seconds / 3600,
    }
    print(f"wrote {write(args.out, 'cluster_estimate', record)}")


if __name__ == "__main__":
    main()
