"""Where a sweep's wall time goes: trial computation, start-up, scheduling, MLflow.

    python benchmarks/sweep_overhead.py                        # quickstart PEZ, 8 trials, SmolLM2-135M
    python benchmarks/sweep_overhead.py --smoke --trials 4     # tiny models, seconds per trial

Runs `run_sweep` (the code behind `scrutable sweep`) in this process on
sweeps/quickstart.yaml with `--trials` trials of `--steps` steps each (`--set`-style
overrides), timed from this script's start, so Ray's start-up counts as it does for the
command. Reports:
- wall: start to the end of `run_sweep` (summary printed, Pareto files written);
- trial computation share: the time inside the trials' training functions (Tune's
  `time_total_s`: set-up, steps, evaluations, checkpoints) summed over trials, over
  concurrency x wall, i.e. the share of the trial slots' wall time spent computing;
- time to first trial: start to the first trial's start (Ray, scorer actor, MLflow parent,
  Optuna study, the trial process), from the driver's `on_trial_start`;
- MLflow: time inside the tracking callback's methods in the driver (the trials never wait
  on it: they only report to Tune) and its share of the wall;
- tail: the end of the last trial to the end of `run_sweep` (summary, Pareto export).
Writes JSON to --out.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # before the imports below, as `scrutable sweep` counts

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from tables import render, write  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "sweeps" / "quickstart.yaml")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="training steps per trial")
    parser.add_argument("--eval-interval", type=int, default=4)
    parser.add_argument("--smoke", action="store_true", help="the spec's smoke section (tiny models)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args()

    import ray

    from scrutable.sweep import tracking
    from scrutable.sweep.launcher import run_sweep
    from scrutable.sweep.spec import load_spec

    # MLflow's cost: time every method of the driver-side tracking callback, and note when
    # each trial starts and ends as the driver sees it.
    mlflow_s: dict[str, float] = defaultdict(float)
    events: dict[str, dict[str, float]] = defaultdict(dict)

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            begin = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                mlflow_s[name] += time.perf_counter() - begin

        return wrapper

    def noting(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, *a: Any, **k: Any) -> Any:
            trial = k["trial"] if "trial" in k else a[2]  # (iteration, trials, trial)
            events[trial.trial_id].setdefault(name, time.monotonic())
            return fn(self, *a, **k)

        return wrapper

    callback = tracking.MlflowTracking
    for name in ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error"):
        setattr(callback, name, timed(name, getattr(callback, name)))
    for name in ("on_trial_start", "on_trial_complete"):
        setattr(callback, name, noting(name, getattr(callback, name)))
    for name in ("connect", "finish_parent"):
        setattr(tracking, name, timed(name, getattr(tracking, name)))

    storage = Path(tempfile.mkdtemp(prefix="sweep_overhead_"))
    overrides = {
        "storage": str(storage),
        "trials": str(args.trials),
        "concurrency": str(args.concurrency),
        "training.steps": str(args.steps),
        "training.eval_interval": str(args.eval_interval),
    }
    if os.environ.get("SCRUTABLE_DATA_DIR"):
        overrides["data_dir"] = os.environ["SCRUTABLE_DATA_DIR"]
    spec = load_spec(args.spec, overrides, smoke=args.smoke)
    try:
        summary = run_sweep(spec, started=STARTED)
    finally:
        ray.shutdown()
    finished = time.monotonic()
    wall = finished - STARTED

    trials = []
    for path in sorted((storage / spec.name / "tune").glob("*/result.json")):
        results = [json.loads(line) for line in path.read_text().splitlines()]
        trials.append({"trial": results[-1]["trial_id"], "compute_s": results[-1]["time_total_s"]})
    starts = [e["on_trial_start"] for e in events.values() if "on_trial_start" in e]
    ends = [e["on_trial_complete"] for e in events.values() if "on_trial_complete" in e]
    compute = sum(t["compute_s"] for t in trials)
    mlflow_total = sum(mlflow_s.values())
    row = {
        "trials": len(trials),
        "concurrency": args.concurrency,
        "wall_s": wall,
        "summary_wall_s": summary["wall_time_s"],
        "mean_trial_s": compute / max(1, len(trials)),
        "compute_share": compute / (args.concurrency * wall),
        "first_trial_s": min(starts) - STARTED if starts else float("nan"),
        "tail_s": finished - max(ends) if ends else float("nan"),
        "mlflow_s": mlflow_total,
        "mlflow_share": mlflow_total / wall,
    }
    print(f"spec {args.spec.name}{' (smoke)' if args.smoke else ''}: {args.trials} trials of {args.steps} steps")
    print(render([row], list(row)))
    print("MLflow time by callback: " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(mlflow_s.items())))
    record = {"args": vars(args) | {"out": str(args.out), "spec": str(args.spec)}, "row": row, "trials": trials,
              "mlflow_s": dict(mlflow_s), "scorer": summary["scorer"]}  # fmt: skip
    print(f"wrote {write(args.out, 'sweep_overhead', record)}")


if __name__ == "__main__":
    main()
