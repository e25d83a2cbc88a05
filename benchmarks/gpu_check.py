"""One command for a GPU machine: every method's `run()` on cuda in float32 and bfloat16, the
scorer at batch 1, 16 and 64, and cuda against the CPU on the same weights.

    python benchmarks/gpu_check.py --data-dir DATA                # on a GPU machine, < 10 min
    python benchmarks/gpu_check.py --data-dir DATA --cpu-dry-run  # the same code, tiny models, CPU

Needs only torch and transformers 5 (no Ray, MLflow, Optuna, network or installed package:
scrutable is imported from ../src). Carry these with the repository (1.5 MB):
DATA/sst2/16-shot/13/{train,dev}.tsv, DATA/sst2/test.tsv and DATA/tokenizers/gpt2/.

Models have random weights and the real shapes (speed does not depend on the weights):
- `gpt2-xl`: GPT2-XL's config (48 layers, width 1600, 25 heads, 1,024 positions) with its real
  GPT-2 tokenizer;
- `smollm2-135m`: SmolLM2-135M's LlamaConfig (30 layers, width 576, 9 heads and 3 key/value
  heads, MLP 1536, tied embeddings, rope theta 1e5) but GPT-2's 50,257-token tokenizer, since
  its own tokenizer loads from the GGUF file and needs the `gguf` package: 2% more output-head
  rows than the real 49,152.
Each is initialised once (seeded), saved with `save_pretrained` in float32 to a temporary
folder and loaded from there by `scrutable.models.load_model`, the path every run takes, so
the CPU and the GPU compute with the same weights.

What it runs, per model:
1. agreement: float32 on cuda against float32 on the CPU — the scorer's log-perplexity of
   fixed prompts, the SST-2 loss of a fixed prompt on 8 training sentences and its gradient,
   the dev objective on 16 sentences. Fails above `TOLERANCES`. bfloat16 on cuda against the
   CPU's float32 is reported beside it, not judged.
2. methods: soft_prompt, pez (alpha 0.5, through the scorer's gradient) and rlprompt (16
   prompts x 16 sentences), the same model as task model, scorer and policy, SST-2, L = 5,
   batch 16, in float32 and bfloat16. Step 1 warms up; step 2 is counted (FLOPs with torch's
   FlopCounterMode, tokens by a hook on the base model: the positions the frozen models run,
   which the prefix cache keeps to the prompt's); steps 3-5 are timed (median).
3. scorer: `sequence_perplexities` (a value request) and `onehot_gradients` (PEZ's gradient
   request) for 10-token prompts at batch 1, 16 and 64, in float32 and bfloat16.
It prints one table (ms per call, tokens/s, achieved TFLOP/s, share of the bf16 peak given by
--peak-tflops, default H200 dense 989, and the GPU memory peak) and writes JSON to --out
(default benchmarks/results/gpu_check.json; a dry run writes gpu_check-cpu-dry-run.json).
Exit codes: 0 all ran and agreed, 1 a run failed or a difference was too large, 2 no GPU.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]  # scrutable from the checkout; tables.py

# The real configurations (hub configs of HuggingFaceTB/SmolLM2-135M and gpt2-xl).
CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "rope_theta": 100000.0,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
    },
    "gpt2-xl": {
        "model_type": "gpt2",
        "n_layer": 48,
        "n_embd": 1600,
        "n_head": 25,
        "vocab_size": 50257,
        "n_positions": 1024,
    },
}
# --cpu-dry-run: the same architectures at 2 layers and width 64.
TINY = {
    "smollm2-135m": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
    },
    "gpt2-xl": {"n_layer": 2, "n_embd": 64, "n_head": 4},
}
METHODS = ("soft_prompt", "pez", "rlprompt")
DTYPES = ("float32", "bfloat16")
SCORER_BATCHES = (1, 16, 64)
SCORER_LENGTH = 10
PROBE_TEXTS = (" All in all, the movie was", " great", " It was terrible.", " A truly wonderful film")
# float32 on cuda against float32 on the CPU: same weights, different kernels and summation
# order. Without TF32 (torch's default for float32 matmuls) the differences are ~1e-6 relative.
TOLERANCES = {"log_perplexity": 1e-3, "loss": 1e-3, "gradient_relative": 1e-2, "dev_objective": 1e-3}
STEPS = 5  # 1 warm-up, 1 counted, 3 timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder laid out like ../shared/data")
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny models on the CPU: checks the script")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (default H200: 989)")
    parser.add_argument("--models", default="smollm2-135m,gpt2-xl", help="comma-separated, of " + ", ".join(CONFIGS))
    parser.add_argument("--budget-min", type=float, default=9.0, help="skip what is left after this many minutes")
    parser.add_argument("--out", type=Path, default=None, help="JSON output")
    args = parser.parse_args(argv)

    import torch
    import transformers

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print(
            f"gpu_check: torch {torch.__version__} sees no CUDA device: run it on a GPU machine with a CUDA build "
            "of torch, or add --cpu-dry-run to check the script on the CPU",
            file=sys.stderr,
        )
        return 2
    if int(transformers.__version__.split(".")[0]) < 5:
        print(f"gpu_check: transformers {transformers.__version__} found, 5.x needed (pyproject.toml)", file=sys.stderr)
        return 2
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown or not (args.data_dir / "tokenizers" / "gpt2").is_dir():
        problem = f"unknown model {unknown[0]}" if unknown else f"no tokenizers/gpt2 under {args.data_dir}"
        print(f"gpu_check: {problem}: see --help", file=sys.stderr)
        return 2
    check = Check(args, torch.device("cpu" if args.cpu_dry_run else "cuda"))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        for name in names:
            check.model(name, Path(work) / name)
    return check.finish()


class Check:
    def __init__(self, args: argparse.Namespace, device: Any) -> None:
        import torch

        self.args = args
        self.device = device
        self.cuda = device.type == "cuda"
        self.tiny = args.cpu_dry_run
        self.started = time.monotonic()
        self.rows: list[dict[str, Any]] = []
        self.agreement: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.skipped: list[str] = []
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 (torch's default, made explicit)

    # -- plumbing ------------------------------------------------------------------------

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def over_budget(self, what: str) -> bool:
        if time.monotonic() - self.started > 60 * self.args.budget_min:
            self.skipped.append(what)
            return True
        return False

    def attempt(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one measurement; a failure is recorded with its reason and the check goes on."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001  # every failure is reported, none stops the rest
            self.failures.append(f"{what}: {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=3, file=sys.stderr)
            return None

    def memory_reset(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def memory_gib(self) -> float | None:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None

    # -- one model -----------------------------------------------------------------------

    def model(self, name: str, folder: Path) -> None:
        from scrutable.models import load_model
        from scrutable.trainables.common import clear_model_cache

        self.note(f"{name}: random weights from its config")
        built = self.attempt(
            f"{name} build", save_random_model, name, self.tiny, self.args.data_dir, folder, self.device
        )
        if built is None:
            return
        self.note(f"{name}: the CPU reference (float32)")
        reference = self.attempt(
            f"{name} cpu reference", lambda: probe(load_model(str(folder), device="cpu"), self.args.data_dir)
        )
        for dtype in DTYPES:  # one dtype's model on the device at a time: the memory column is its own
            if reference is not None:
                self.attempt(f"{name} {dtype} agreement", self.compare, name, folder, dtype, reference)
            for kind in ("perplexity", "gradient"):
                for batch in SCORER_BATCHES:
                    what = f"{name} {dtype} scorer {kind} batch {batch}"
                    if not self.over_budget(what):
                        self.attempt(what, self.scorer, name, folder, dtype, kind, batch)
            for method in METHODS:
                what = f"{name} {dtype} {method}"
                if not self.over_budget(what):
                    self.note(what)
                    self.attempt(what, self.method, name, folder, dtype, method)
            clear_model_cache()
            self.memory_reset()

    def note(self, text: str) -> None:
        print(f"[{self.elapsed():5.0f} s] {text}", file=sys.stderr, flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def lm(self, folder: Path, dtype: str) -> Any:
        from scrutable.trainables.common import cached_model

        # The copy every run of this device and dtype shares (`trainables/common.py`).
        return cached_model(str(folder), str(self.args.data_dir), str(self.device), dtype)

    def compare(self, name: str, folder: Path, dtype: str, reference: dict[str, Any]) -> None:
        measured = probe(self.lm(folder, dtype), self.args.data_dir)
        differences = {
            "log_perplexity": max(abs(a - b) for a, b in zip(measured["log_ppl"], reference["log_ppl"], strict=True)),
            "loss": abs(measured["loss"] - reference["loss"]),
            "gradient_relative": float(
                (measured["grad"] - reference["grad"]).norm() / reference["grad"].norm().clamp(min=1e-30)
            ),
            "dev_objective": abs(measured["objective"] - reference["objective"]),
        }
        judged = dtype == "float32"
        passed = all(differences[k] <= TOLERANCES[k] for k in TOLERANCES) if judged else None
        row: dict[str, Any] = {"model": name, "dtype": dtype, "device": str(self.device), "against": "cpu float32"}
        row.update({k: float(f"{v:.3g}") for k, v in differences.items()})
        row.update(passed=passed, loss_value=measured["loss"], reference_loss_value=reference["loss"])
        self.agreement.append(row)
        if passed is False:
            self.failures.append(
                f"{name} float32 on {self.device} differs from the CPU beyond the tolerances: {differences}"
            )

    def scorer(self, name: str, folder: Path, dtype: str, kind: str, batch: int) -> None:
        import torch

        from scrutable.metrics.perplexity import onehot_gradients, sequence_perplexities

        lm = self.lm(folder, dtype)
        generator = torch.Generator().manual_seed(batch)
        sequences = torch.randint(0, lm.vocab_size, (batch, SCORER_LENGTH), generator=generator).tolist()
        call = sequence_perplexities if kind == "perplexity" else onehot_gradients
        self.memory_reset()
        call(lm, sequences)  # warm-up: kernels, allocator
        flops = counted_flops(lambda: call(lm, sequences))
        times = []
        for _ in range(3 if self.tiny else 5):
            self.sync()
            start = time.perf_counter()
            call(lm, sequences)
            self.sync()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        tokens = batch * (SCORER_LENGTH + 1)  # the start token is run too
        self.add_row(name, dtype, f"scorer {kind}", batch, seconds, tokens, flops)

    def method(self, name: str, folder: Path, dtype: str, method: str) -> None:
        from scrutable.config import from_mapping
        from scrutable.trainables import get_method

        lm = self.lm(folder, dtype)
        values: dict[str, Any] = {
            "task": "sst2",
            "model": str(folder),
            "scorer": str(folder),
            "data_dir": str(self.args.data_dir),
            "prompt_length": 5,
            "steps": STEPS,
            "eval_interval": STEPS,  # one evaluation, after the timed steps
            "batch_size": 4 if self.tiny else 16,
            "eval_limit": 8 if self.tiny else 16,
            "test_limit": 8 if self.tiny else 16,
            "alpha": 0.5,
            "device": str(self.device),
            "dtype": dtype,
        }
        if method == "rlprompt":
            values.update(policy_model=str(folder), prompts_per_step=4 if self.tiny else 16)
            values.update({"mlp_hidden_size": 32} if self.tiny else {})
        config = from_mapping(get_method(method).config_cls, values, where=f"{method} config")
        clock = StepClock(self.sync, lm)
        self.memory_reset()
        try:
            result = get_method(method).run(config, progress=clock)
        finally:
            clock.close()
        seconds = statistics.median(clock.times)
        row = self.add_row(name, dtype, method, values["batch_size"], seconds, clock.tokens, clock.flops)
        row["dev_objective"] = result.metrics.get("task/dev_objective")

    def add_row(
        self, name: str, dtype: str, what: str, batch: int, seconds: float, tokens: int, flops: int | None
    ) -> dict[str, Any]:
        tflops = flops / seconds / 1e12 if flops else None
        row = {
            "model": name,
            "dtype": dtype,
            "what": what,
            "batch": batch,
            "ms": 1e3 * seconds,
            "tokens/s": tokens / seconds,
            "TFLOP/s": tflops,
            "bf16 peak share": tflops / self.args.peak_tflops if tflops is not None else None,
            "GPU GiB": self.memory_gib(),
        }
        self.rows.append(row)
        return row

    # -- the end -------------------------------------------------------------------------

    def finish(self) -> int:
        from tables import render, write

        columns = ["model", "dtype", "what", "batch", "ms", "tokens/s", "TFLOP/s", "bf16 peak share", "GPU GiB"]
        shown = [{k: ("-" if v is None else v) for k, v in row.items()} for row in self.rows]
        print(render(shown, columns))
        print()
        agreement_columns = ["model", "dtype", "device", "against", *TOLERANCES, "passed"]
        print(render([{k: ("-" if v is None else v) for k, v in r.items()} for r in self.agreement], agreement_columns))
        print(f"tolerances (float32 only): {TOLERANCES}")
        for line in self.skipped:
            print(f"skipped (over --budget-min): {line}")
        for line in self.failures:
            print(f"FAILED: {line}")
        default = "gpu_check-cpu-dry-run" if self.tiny else "gpu_check"
        record = {
            "device": str(self.device),
            "dry_run": self.tiny,
            "peak_tflops": self.args.peak_tflops,
            "seconds": round(self.elapsed(), 1),
            "rows": self.rows,
            "agreement": self.agreement,
            "tolerances": TOLERANCES,
            "failures": self.failures,
            "skipped": self.skipped,
            "modules": sorted(  # imported here: none of them exists on the GPU machine
                {
                    m.split(".")[0]
                    for m, mod in sys.modules.items()
                    if mod and m.split(".")[0] in ("ray", "mlflow", "optuna")
                }
            ),
        }
        path = write(self.args.out, default, record)
        print(f"wrote {path} in {self.elapsed():.0f} s")
        return 1 if self.failures else 0


# ---------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------


def save_random_model(name: str, tiny: bool, data_dir: Path, folder: Path, device: Any) -> Path:
    """Seeded random weights with the real config, saved (float32) with the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizers" / "gpt2")
    values = {**CONFIGS[name], **(TINY[name] if tiny else {})}
    # SmolLM2 gets GPT-2's vocabulary (module docstring); GPT2-XL's is GPT-2's already.
    values.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(0)
    with torch.device(device):  # GPT2-XL's 1.5 B draws take seconds on a GPU, a minute on the CPU
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def probe(lm: Any, data_dir: Path) -> dict[str, Any]:
    """Numbers to compare across devices: scorer log-perplexities, a loss, its gradient, an objective."""
    import torch

    from scrutable.metrics.perplexity import sequence_perplexities
    from scrutable.tasks import get_task
    from scrutable.tasks.inputs import token_ids
    from scrutable.trainables.common import init_from_tokens

    task = get_task("sst2", data_dir=data_dir, seed=13)
    perplexities = sequence_perplexities(lm, [token_ids(lm, text) for text in PROBE_TEXTS])
    prompt = init_from_tokens(lm, torch.tensor(token_ids(lm, " It was really"))).requires_grad_(True)
    loss = task.loss(lm, prompt, task.examples("train")[:8])
    loss.backward()
    assert prompt.grad is not None
    objective = task.evaluate(lm, prompt.detach(), "dev", limit=16).objective
    return {
        "log_ppl": [math.log(value) for value, _ in perplexities],
        "loss": float(loss),
        "grad": prompt.grad.detach().float().cpu(),
        "objective": objective,
    }


def counted_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class StepClock:
    """A method's `progress` callback: counts step 2 (FLOPs, tokens), times steps 3 on.

    `progress(step)` is called after each step and before any evaluation, so the time between
    two calls is one training step; step 1 (kernels, the prefix cache's encodings) is excluded."""

    def __init__(self, sync: Callable[[], None], lm: Any) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        self.sync = sync
        self.counter: Any = FlopCounterMode(display=False)
        self.counting = False
        self.flops: int | None = None
        self.tokens = 0
        self.times: list[float] = []
        self.mark = 0.0
        # The frozen models (task model, scorer, policy: one object here) all run through the
        # base model, also on the prefix cache's path; count the positions it is given.
        self.hook = lm.model.base_model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self.counting:
            return
        inputs = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        if inputs is None and args:
            inputs = args[0]
        if inputs is not None:
            self.tokens += int(inputs.shape[0] * inputs.shape[1])

    def __call__(self, step: int, values: dict[str, float]) -> None:
        self.sync()
        now = time.perf_counter()
        if step == 1:
            self.counter.__enter__()
            self.counting = True
        elif step == 2:
            self.counter.__exit__(None, None, None)
            self.counting = False
            self.flops = int(self.counter.get_total_flops())
        else:
            self.times.append(now - self.mark)
        self.mark = time.perf_counter()

    def close(self) -> None:
        if self.counting:  # the run ended early: leave no dispatch mode behind
            self.counter.__exit__(None, None, None)
            self.counting = False
        self.hook.remove()


if __name__ == "__main__":
    sys.exit(main())
