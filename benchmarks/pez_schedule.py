"""PEZ's dev-objective curve under a few step sizes and schedules (issue 18, item 5).

    python benchmarks/pez_schedule.py                    # SmolLM2-135M, the quickstart's task settings
    python benchmarks/pez_schedule.py --model tiny-gpt2 --steps 4 --eval-interval 2 --seeds 0   # seconds

Each run is the real `pez.run()` with `eval_at_start`, so the curve starts at the initial
prompt (step 0). Every dev evaluation is recorded (the loop's `evaluate_prompt`, wrapped):
the evaluated prompt's dev objective, not the best so far. At the end, the kept prompt (best
on dev) is tested on `--test-limit` SST-2 test sentences. Runs go `--jobs` at a time, one
thread each. Prints a table, writes the JSON and draws the curves.

This is a study of training dynamics, not of speed: its numbers do not depend on the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

SETTINGS = {  # name -> PezConfig fields; batch 8 of the 32 few-shot training sentences unless named
    "reference (0.1, constant)": {"learning_rate": 0.1, "lr_schedule": "constant"},
    "0.03, constant": {"learning_rate": 0.03, "lr_schedule": "constant"},
    "0.01, constant": {"learning_rate": 0.01, "lr_schedule": "constant"},
    "0.1, cosine": {"learning_rate": 0.1, "lr_schedule": "cosine"},
    "0.03, cosine": {"learning_rate": 0.03, "lr_schedule": "cosine"},
    "0.3, cosine": {"learning_rate": 0.3, "lr_schedule": "cosine"},
    "0.1, constant, batch 32": {"learning_rate": 0.1, "lr_schedule": "constant", "batch_size": 32},
    "0.1, cosine, batch 32": {"learning_rate": 0.1, "lr_schedule": "cosine", "batch_size": 32},
}


def one_run(name: str, seed: int, args: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from scrutable.metrics import keys
    from scrutable.trainables import common
    from scrutable.trainables.pez import PezConfig, run

    curve: list[dict[str, Any]] = []
    real = common.evaluate_prompt

    def recorded(*a: Any, **kw: Any) -> Any:
        record, card = real(*a, **kw)
        if kw.get("split", "dev") == "dev":
            curve.append(
                {
                    "step": kw["step"],
                    "dev_objective": record.metrics[keys.TASK_DEV_OBJECTIVE],
                    "dev_accuracy": record.metrics[keys.TASK_DEV],
                    "prompt": record.text,
                }
            )
        return record, card

    common.evaluate_prompt = recorded  # type: ignore[assignment]
    setting = {"batch_size": 8, **SETTINGS[name]}
    config = PezConfig(
        task="sst2",
        model=args["model"],
        scorer=args["model"],
        data_dir=args["data_dir"],
        data_seed=13,
        dev_pool="glue",
        eval_limit=64,
        test_limit=args["test_limit"],
        prompt_length=args["prompt_length"],
        alpha=args["alpha"],
        steps=args["steps"],
        eval_interval=args["eval_interval"],
        seed=seed,
        eval_at_start=True,
        **setting,
    )
    train_loss: dict[int, float] = {}  # step -> mean training task loss since the previous evaluation

    def report(evaluation: Any) -> None:
        if keys.TRAIN_TASK_LOSS in evaluation.metrics:
            train_loss[evaluation.step] = evaluation.metrics[keys.TRAIN_TASK_LOSS]

    start = time.perf_counter()
    result = run(config, report=report)
    for point in curve:
        point["train_task_loss"] = train_loss.get(point["step"])
    best_step = int(result.metrics[keys.PROMPT_STEP])
    peak = max(curve, key=lambda point: point["dev_objective"])
    return {
        "setting": name,
        **setting,
        "seed": seed,
        "curve": curve,
        "kept_step": best_step,
        "kept_dev_objective": result.metrics[keys.TASK_DEV_OBJECTIVE],
        "kept_test_accuracy": result.metrics[keys.TASK_TEST],
        "kept_prompt": result.metrics[keys.PROMPT_TEXT],
        "kept_perplexity": result.metrics[keys.PERPLEXITY],
        "start_dev_objective": curve[0]["dev_objective"],
        "end_dev_objective": curve[-1]["dev_objective"],
        "peak_is_first_evaluation": peak["step"] == curve[1]["step"] if len(curve) > 1 else False,
        "seconds": time.perf_counter() - start,
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name in SETTINGS:
        mine = [r for r in runs if r["setting"] == name]
        if not mine:
            continue

        def mean(key: str, runs: list[dict[str, Any]] = mine) -> float:
            return statistics.fmean(r[key] for r in runs)

        rows.append(
            {
                "setting": name,
                "runs": len(mine),
                "start": mean("start_dev_objective"),
                "end": mean("end_dev_objective"),
                "kept": mean("kept_dev_objective"),
                "kept_step": mean("kept_step"),
                "peak_first": sum(r["peak_is_first_evaluation"] for r in mine),
                "test_acc": mean("kept_test_accuracy"),
                "test_accs": [round(r["kept_test_accuracy"], 3) for r in mine],
            }
        )
    return rows


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    colours = dict(zip(SETTINGS, plt.get_cmap("tab10").colors, strict=False))
    for r in runs:
        steps = [p["step"] for p in r["curve"]]
        values = [p["dev_objective"] for p in r["curve"]]
        label = (
            f"{r['setting']} (test acc. of kept: "
            + ", ".join(f"{x['kept_test_accuracy']:.2f}" for x in runs if x["setting"] == r["setting"])
            + ")"
        )
        first = r is next(x for x in runs if x["setting"] == r["setting"])
        ax.plot(steps, values, color=colours[r["setting"]], alpha=0.85, marker=".", label=label if first else None)
    ax.axhline(-0.6931, color="grey", linestyle=":", linewidth=1)
    ax.text(0, -0.6931, " uniform guess (-log 2)", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("PEZ step (0 = the initial prompt)")
    ax.set_ylabel("dev objective (mean log p(correct label), higher is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=96)
    parser.add_argument("--eval-interval", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=6)
    parser.add_argument("--alpha", type=float, default=0.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS)[:5], choices=list(SETTINGS))
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/pez_schedule.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/pez_schedule.png"))
    a = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = {
        "model": a.model,
        "steps": a.steps,
        "eval_interval": a.eval_interval,
        "prompt_length": a.prompt_length,
        "alpha": a.alpha,
        "test_limit": a.test_limit,
        "data_dir": os.environ.get("SCRUTABLE_DATA_DIR", str(Path("../shared/data").resolve())),
    }
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    jobs = [(name, seed) for name in a.settings for seed in a.seeds]
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        runs = list(pool.map(one_run, *zip(*jobs, strict=True), [args] * len(jobs)))
    wall = time.perf_counter() - start
    rows = summarise(runs)
    print(
        f"PEZ on SST-2 (seed 13 split, 64 GLUE dev phrases), {a.model}, L {a.prompt_length}, alpha {a.alpha:g}, "
        f"{a.steps} steps, evaluated every {a.eval_interval} and at step 0; seeds {a.seeds}; "
        f"{wall:.0f} s wall; load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(
        "| setting | runs | dev obj. at step 0 | at the last step | kept | kept at step (mean) "
        "| peak at the first evaluation | test acc. of kept (mean; each) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['runs']} | {r['start']:.3f} | {r['end']:.3f} | {r['kept']:.3f} | "
            f"{r['kept_step']:.0f} | {r['peak_first']}/{r['runs']} | "
            f"{r['test_acc']:.3f} ({', '.join(map(str, r['test_accs']))}) |"
        )
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(
        json.dumps(
            {"args": args, "seeds": a.seeds, "wall_s": wall, "load_before": load_before, "summary": rows, "runs": runs},
            indent=1,
        )
    )
    plot(runs, a.plot, f"PEZ dev-objective curves: {a.model}, L {a.prompt_length}, alpha {a.alpha:g}, seeds {a.seeds}")
    print(f"wrote {a.json} and {a.plot}")


if __name__ == "__main__":
    main()
