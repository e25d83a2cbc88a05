"""Start-up of `scrutable sweep`: where the seconds go from the command to the first trial's first step.

    python benchmarks/startup.py                                   # this checkout
    python benchmarks/startup.py --repo . --repo /tmp/b7ae3c3      # side by side with another checkout

Each checkout (`--repo`, its `src/` on PYTHONPATH, this interpreter and its packages) is
measured the same way, in order:

- interpreter: `python -c pass`, wall time;
- imports: `python -X importtime` of the modules the sweep command imports before it starts
  Ray (the CLI, the launcher, the spec), the total and the heaviest packages by self time;
- the smoke sweep, `python -m scrutable.cli sweep sweeps/quickstart.yaml --smoke` (what
  `make quickstart SMOKE=1` runs: 3 tiny-model trials, 2 at a time), timed end to end with
  real timestamps, each in seconds since the command started:
    * the driver's own lines, stamped as they arrive on its stdout: `starting Ray` (imports
      and the spec's checks done), `MLflow at`, `loading the scorer`, `Tune:`, `first trial
      started` (Tune's `on_trial_start`);
    * the first report of any trial, the moment its `result.json` row appears on disk (the
      driver writes it as the report arrives), and which step it carries;
    * where the code has them (`scrutable.sweep.timing`, switched on here through
      SCRUTABLE_STARTUP_TRACE), the marks of each step inside the driver and the trials:
      Ray up, MLflow ready, Optuna's study, the tuner built, the scorer loaded, a trial's
      process started (the worker's creation, which Ray may have made before the trial),
      the trial's function entered, its task model loaded, its first step done, and the
      start of Ray's shutdown after the summary (the rest of `end` is that shutdown).
    A checkout without the marks (b7ae3c3) shows only the lines and the reports.

The table prints the load average (`os.getloadavg()`) before and after each checkout's run;
only figures taken below a load of 1 on an otherwise idle machine are worth recording
(`--quiet-below`, waited for up to `--wait` seconds, default: do not wait). JSON goes to
--out (default benchmarks/results/startup.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tables import render, write

REPO = Path(__file__).resolve().parents[1]
TRACE_ENV = "SCRUTABLE_STARTUP_TRACE"  # scrutable.sweep.timing.TRACE_ENV, not imported: a checkout may lack it
# What `scrutable sweep` imports before Ray starts (the commands module too, where cli.py has one).
DRIVER_MODULES = ("scrutable.cli", "scrutable.sweep.launcher", "scrutable.sweep.spec")
# The driver's lines (launcher.py, progress.py) that mark a step of the start-up, by their start.
LINES = {
    "starting Ray": "line: starting Ray",
    "MLflow at": "line: MLflow at",
    "loading the scorer": "line: loading the scorer",
    "Tune:": "line: Tune",
    "first trial started": "line: first trial started",
}
STAMPED_LINE = re.compile(r"^\[\s*[0-9hms]+\] (.*)$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, action="append", default=None, help="a checkout (repeat; default: this)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter (its packages serve every checkout)")
    data_dir = os.environ.get("SCRUTABLE_DATA_DIR", str(REPO.parent / "shared" / "data"))
    parser.add_argument("--data-dir", default=data_dir, help="SCRUTABLE_DATA_DIR for the sweeps")
    parser.add_argument("--quiet-below", type=float, default=1.0, help="the load average worth measuring under")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for --quiet-below before each run")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one sweep may take")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/startup.json)")
    args = parser.parse_args()

    repos = [r.resolve() for r in (args.repo or [REPO])]
    records = []
    for repo in repos:
        wait_for_quiet(args.quiet_below, args.wait)
        records.append(measure(repo, args.python, args.data_dir, args.timeout))
    print(table(records))
    path = write(args.out, "startup", {"quiet_below": args.quiet_below, "checkouts": records})
    print(f"wrote {path}")


def wait_for_quiet(below: float, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while os.getloadavg()[0] >= below and time.monotonic() < deadline:
        time.sleep(5)


def environment(repo: Path, data_dir: str, trace: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(repo / "src"), SCRUTABLE_DATA_DIR=data_dir, PYTHONUNBUFFERED="1")
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    if trace is not None:
        env[TRACE_ENV] = str(trace)
    return env


def describe(repo: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "src"], capture_output=True)
    except OSError:
        return repo.name
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if head.returncode == 0 else repo.name


def measure(repo: Path, python: str, data_dir: str, timeout: float) -> dict[str, Any]:
    record: dict[str, Any] = {"repo": str(repo), "commit": describe(repo), "loadavg_before": os.getloadavg()}
    env = environment(repo, data_dir)
    record["interpreter_s"] = timed_run([python, "-c", "pass"], env)
    record["imports"] = imports(python, env)
    record["sweep"] = sweep(repo, python, data_dir, timeout)
    record["loadavg_after"] = os.getloadavg()
    return record


def timed_run(command: list[str], env: dict[str, str]) -> float:
    begin = time.monotonic()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.monotonic() - begin


def imports(python: str, env: dict[str, str]) -> dict[str, Any]:
    """The driver's imports before Ray starts: wall time, and self time by top-level package."""
    code = "; ".join(f"import {m}" for m in DRIVER_MODULES)
    begin = time.monotonic()
    done = subprocess.run([python, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True)
    wall = time.monotonic() - begin
    if done.returncode != 0:
        raise SystemExit(f"{code} failed:\n" + "\n".join(done.stderr.splitlines()[-20:]))
    by_package: dict[str, float] = defaultdict(float)
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        by_package[name.strip().split(".")[0]] += int(own) / 1e6
    heaviest = dict(sorted(by_package.items(), key=lambda kv: -kv[1])[:8])
    total = sum(by_package.values())
    return {"modules": list(DRIVER_MODULES), "wall_s": wall, "total_s": total, "heaviest_s": heaviest}


def sweep(repo: Path, python: str, data_dir: str, timeout: float) -> dict[str, Any]:
    """The smoke sweep from a fresh folder: each start-up event in seconds since the command."""
    with tempfile.TemporaryDirectory(prefix="scrutable-startup-") as scratch:
        folder = Path(scratch) / "quickstart-smoke"
        trace = Path(scratch) / "trace.jsonl"
        command = [python, "-m", "scrutable.cli", "sweep", str(repo / "sweeps" / "quickstart.yaml"), "--smoke"]
        command += ["--set", "name=quickstart-smoke", "--out", str(folder)]
        events: dict[str, float] = {}
        lines: list[str] = []
        started_wall, started = time.time(), time.monotonic()
        process = subprocess.Popen(
            command,
            cwd=scratch,
            env=environment(repo, data_dir, trace),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        reader = threading.Thread(target=read_lines, args=(process, started, events, lines), daemon=True)
        reader.start()
        first_report: dict[str, Any] | None = None
        while process.poll() is None:
            if time.monotonic() - started > timeout:
                process.kill()
                raise SystemExit(f"the sweep in {repo} took over {timeout:.0f} s; its output:\n" + "\n".join(lines))
            if first_report is None:
                first_report = find_first_report(folder, time.monotonic() - started)
            time.sleep(0.02)
        ended = time.monotonic() - started
        reader.join()
        if process.returncode != 0:
            raise SystemExit(f"the sweep in {repo} failed ({process.returncode}); its output:\n" + "\n".join(lines))
        if first_report is not None:
            events["first report (result.json)"] = first_report["at_s"]
        events.update(read_trace(trace, started_wall))
        events["end"] = ended
        reported = re.search(r"sweep finished in (\d+) s", "\n".join(lines))
        return {
            "events_s": dict(sorted(events.items(), key=lambda kv: kv[1])),
            "first_report_step": None if first_report is None else first_report["step"],
            "wall_s": ended,
            "reported_wall_s": int(reported.group(1)) if reported else None,
            "output": lines,
        }


def read_lines(process: subprocess.Popen[str], started: float, events: dict[str, float], lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        now = time.monotonic() - started
        lines.append(line.rstrip("\n"))
        stamped = STAMPED_LINE.match(line.strip())
        if stamped is None:
            continue
        for start, event in LINES.items():
            if stamped.group(1).startswith(start):
                events.setdefault(event, now)


def find_first_report(folder: Path, now: float) -> dict[str, Any] | None:
    """The first row of any trial's result.json, when it is there (Tune's driver writes it)."""
    for result in (folder / "tune").glob("*/result.json"):
        try:
            first = result.read_text().splitlines()[0]
            row = json.loads(first)
        except (OSError, IndexError, ValueError):  # not written yet, or half a line
            continue
        return {"at_s": now, "step": row.get("progress/step", row.get("train/step"))}
    return None


def read_trace(trace: Path, started_wall: float) -> dict[str, float]:
    """The code's own marks: the first time each event was marked, in seconds since the command."""
    if not trace.is_file():
        return {}
    marks: dict[str, float] = {}
    for line in trace.read_text().splitlines():
        mark = json.loads(line)
        marks.setdefault(f"mark: {mark['event']}", mark["time"] - started_wall)
    return marks


def table(records: list[dict[str, Any]]) -> str:
    """One column per checkout: seconds since the command, event by event; then the totals."""
    columns = {f"{r['commit']} ({i + 1})" if len(records) > 1 else r["commit"]: r for i, r in enumerate(records)}
    load = "; ".join(
        f"{name}: load {r['loadavg_before'][0]:.2f} -> {r['loadavg_after'][0]:.2f}" for name, r in columns.items()
    )
    header = f"start-up of the quickstart smoke sweep (3 trials, tiny-gpt2), seconds since the command\n{load}\n"
    first_seen: dict[str, float] = {}
    for r in records:
        for event, at in r["sweep"]["events_s"].items():
            first_seen[event] = min(first_seen.get(event, at), at)
    rows: list[dict[str, Any]] = [
        {"event": "interpreter (python -c pass)", **{n: r["interpreter_s"] for n, r in columns.items()}},
        {"event": "driver imports (importtime total)", **{n: r["imports"]["total_s"] for n, r in columns.items()}},
    ]
    for event in sorted(first_seen, key=first_seen.__getitem__):
        rows.append({"event": event, **{n: r["sweep"]["events_s"].get(event, "") for n, r in columns.items()}})
    heavy = "\n".join(
        f"{name} heaviest imports (self s): " + ", ".join(f"{k} {v:.2f}" for k, v in r["imports"]["heaviest_s"].items())
        for name, r in columns.items()
    )
    return header + render(rows, ["event", *columns]) + "\n" + heavy


if __name__ == "__main__":
    main()
