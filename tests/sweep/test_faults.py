"""Fault injection on tiny smoke sweeps (slow): each test kills or blocks one part of a
running sweep and checks that the sweep finishes with exactly one record per trial in Ray
Tune, Optuna and MLflow, and no step reported twice or missing.

- a trial worker SIGKILLed mid-trial: retried from its last checkpoint (max_failures
  defaults to 1), one MLflow run, step metrics 1..N without gap or repeat;
- the scorer actor SIGKILLed: Ray restarts it, the sweep completes, and the perplexities
  the trials reported equal the scorer's own numbers for their prompts;
- the driver SIGKILLed, the folder copied elsewhere, the copy resumed: the copy finishes,
  the original is byte-for-byte untouched;
- the MLflow tracking server stopped for a while: writes are retried, buffered and
  repaired; nothing is lost and the summary says how many writes failed at first.

The sweeps run the driver as a subprocess (`python -m scrutable.cli`), so SIGKILL hits
real processes; processes are found among the driver's own descendants only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
# Timing-dependent by nature (a kill lands wherever the process is when polling sees a
# file): one rerun, so a defect must fail twice in a row.
pytestmark = [pytest.mark.slow, pytest.mark.flaky(reruns=1)]


def sweep_args(storage: Path, *extra: str, trials: int = 2, steps: int = 8) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scrutable.cli",
        "sweep",
        str(REPO / "sweeps" / "quickstart.yaml"),
        "--smoke",
        "--set",
        f"storage={storage}",
        "--set",
        f"data_dir={os.environ['SCRUTABLE_DATA_DIR']}",
        "--set",
        f"trials={trials}",
        "--set",
        "concurrency=1",
        "--set",
        f"training.steps={steps}",
        *extra,
    ]


def start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ, SCRUTABLE_STATE_KEY=str(tmp_path / "state.key"), PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)


def ray_processes(driver: subprocess.Popen, title: str) -> list[psutil.Process]:
    """The driver's descendant processes whose title (`ray::...`) contains `title`."""
    found = []
    for child in psutil.Process(driver.pid).children(recursive=True):
        try:
            if title in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def result_rows(trial_dir: Path) -> list[dict]:
    """The trial's evaluation reports (step reports between them carry only `progress/*`)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if "train/step" in row]


def trial_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "tune").iterdir() if p.is_dir() and p.name.startswith("trainable"))


def assert_steps(seen: list[int], steps: int, killed: bool, what: str) -> None:
    """Steps 1..N, none repeated. A trial whose worker was SIGKILLed may miss the one report
    in flight at the kill: Ray Tune's worker persists the checkpoint before the driver
    receives the report, so the retry continues after it while its row never reached the
    driver (seen once in four CI runs; documented in the README's resume section)."""
    expected = list(range(1, steps + 1))
    if not killed:
        assert seen == expected, (what, seen)
        return
    assert seen == sorted(set(seen)) and seen[-1] == steps, (what, seen)  # no repeat, finished
    assert len(set(expected) - set(seen)) <= 1, (what, seen)  # at most the report in flight


def assert_one_record_per_trial(
    folder: Path, trials: int, steps: int, uri: str | None = None, killed: Path | None = None
) -> None:
    """Tune, Optuna and MLflow each hold exactly one complete record per trial (`killed`:
    the folder of a trial whose worker was SIGKILLed, see `assert_steps`)."""
    dirs = trial_dirs(folder)
    assert len(dirs) == trials
    for trial_dir in dirs:
        seen = [row["train/step"] for row in result_rows(trial_dir)]
        assert_steps(seen, steps, trial_dir == killed, trial_dir.name)
    study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * trials, states
    client = mlflow.MlflowClient(uri or f"sqlite:///{folder / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == folder.name]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("scrutable.role") == "parent"]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(kids) == trials and all(k.info.status == "FINISHED" for k in kids)
    assert len({k.data.tags["scrutable.trial_id"] for k in kids}) == trials
    killed_id = None if killed is None else result_rows(killed)[-1]["trial_id"]
    for kid in kids:
        logged = [int(m.value) for m in client.get_metric_history(kid.info.run_id, "train/step")]
        killed_run = kid.data.tags["scrutable.trial_id"] == killed_id
        assert_steps(sorted(logged), steps, killed_run, kid.info.run_name)


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = process.communicate(timeout=timeout)
    return out


def test_killed_trial_worker_and_scorer_actor_are_survived(tmp_path):
    started = time.monotonic()
    steps = 8
    driver = start(sweep_args(tmp_path, trials=2, steps=steps), tmp_path)
    folder = tmp_path / "quickstart"
    try:
        # 1. SIGKILL the first trial's worker once it has reported (and checkpointed) twice.
        wait_for(lambda: (folder / "tune").is_dir() and trial_dirs(folder), 300, "the first trial")
        first = trial_dirs(folder)[0]
        wait_for(lambda: len(result_rows(first)) >= 2, 300, "two reports")
        workers = ray_processes(driver, "ray::ImplicitFunc") or ray_processes(driver, "ray::trainable")
        assert workers, [" ".join(p.cmdline())[:80] for p in psutil.Process(driver.pid).children(recursive=True)]
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
        # 2. SIGKILL the scorer actor while the second trial runs.
        wait_for(lambda: len(trial_dirs(folder)) >= 2 and result_rows(trial_dirs(folder)[1]), 300, "trial 2")
        actors = ray_processes(driver, "ray::ScorerService")
        assert actors
        for actor in actors:
            actor.send_signal(signal.SIGKILL)
        out = finish(driver)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out[-3000:]
    assert_one_record_per_trial(folder, trials=2, steps=steps, killed=first)

    # The scorer that came back scores like the one that died: recompute every reported perplexity.
    from scrutable.metrics.perplexity import LocalScorer, ScoreRequest
    from scrutable.models import tiny_gpt2

    scorer = LocalScorer(tiny_gpt2(os.environ["SCRUTABLE_DATA_DIR"]))
    checked = 0
    for trial_dir in trial_dirs(folder):
        for row in result_rows(trial_dir):
            if row.get("prompt/token_ids") and "interp/perplexity" in row:
                ids = tuple(int(t) for t in str(row["prompt/token_ids"]).split())
                (expected,) = scorer.perplexity([ScoreRequest(token_ids=ids)])
                assert row["interp/perplexity"] == pytest.approx(expected.perplexity, rel=1e-4)
                checked += 1
    assert checked >= 2 * steps - 1  # the killed trial may miss the report in flight
    print(f"worker + scorer-actor kill test: {time.monotonic() - started:.0f} s")


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_killed_driver_then_a_copied_folder_resumed_leaves_the_original_untouched(tmp_path):
    started = time.monotonic()
    steps = 4
    original_storage, copy_storage = tmp_path / "a", tmp_path / "b"
    driver = start(sweep_args(original_storage, trials=3, steps=steps), tmp_path)
    lines = []
    try:
        descendants = []
        for line in driver.stdout:
            lines.append(line)
            if not descendants:
                descendants = psutil.Process(driver.pid).children(recursive=True)
            if "1/3 trials done" in line:
                break
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        for process in descendants:  # the Ray processes this driver started
            with contextlib.suppress(psutil.Error):
                process.kill()
    assert any("1/3 trials done" in line for line in lines), "".join(lines[-20:])
    time.sleep(2)  # let the killed Ray processes release their files
    original = original_storage / "quickstart"
    shutil.copytree(original, copy_storage / "quickstart", symlinks=True)
    before = tree_digest(original)

    resumed = start(
        [sys.executable, "-m", "scrutable.cli", "sweep", str(copy_storage / "quickstart"), "--resume"], tmp_path
    )
    out = finish(resumed)
    assert resumed.returncode == 0, out[-3000:]
    assert tree_digest(original) == before  # nothing written into the original
    assert_one_record_per_trial(copy_storage / "quickstart", trials=3, steps=steps)
    print(f"driver kill + copied-folder resume test: {time.monotonic() - started:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mlflow_server(tmp_path: Path, port: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "server-artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_for(up, 120, "the MLflow server")
    return server


def stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)


def test_mlflow_server_down_for_a_while_loses_nothing(tmp_path):
    started = time.monotonic()
    steps = 8
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = mlflow_server(tmp_path, port)
    driver = start(sweep_args(tmp_path, "--set", f"tracking.uri={uri}", trials=2, steps=steps), tmp_path)
    folder = tmp_path / "quickstart"
    try:
        wait_for(lambda: (folder / "tune").is_dir() and trial_dirs(folder), 300, "the first trial")
        wait_for(lambda: len(result_rows(trial_dirs(folder)[0])) >= 1, 300, "a report")
        stop(server)  # the store is gone: every write fails now
        down_from = len(result_rows(trial_dirs(folder)[0]))
        wait_for(lambda: len(result_rows(trial_dirs(folder)[0])) >= down_from + 3, 300, "reports while down")
        server = mlflow_server(tmp_path, port)
        out = finish(driver)
        assert driver.returncode == 0, out[-3000:]
        assert "write(s) failed at first and were repaired" in out, out[-2000:]
        assert "could not be made" not in out
        assert_one_record_per_trial(folder, trials=2, steps=steps, uri=uri)
    finally:
        if driver.poll() is None:
            driver.kill()
        if server.poll() is None:
            stop(server)
    print(f"MLflow outage test: {time.monotonic() - started:.0f} s")


def test_a_sweep_whose_every_trial_fails_exits_non_zero(tmp_path):
    started = time.monotonic()
    args = sweep_args(tmp_path, "--set", "training.learning_rate=1e38", "--set", "max_failures=0", trials=2, steps=2)
    driver = start(args, tmp_path)
    out = finish(driver)
    assert driver.returncode == 1, out[-3000:]
    assert "every one of its 2 trials failed" in out
    folder = tmp_path / "quickstart"
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(kids) == 2 and all(k.info.status == "FAILED" and "overflowed" in k.data.tags["error"] for k in kids)
    assert [r.info.status for r in runs if r.data.tags.get("scrutable.role") == "parent"] == ["FAILED"]
    print(f"all-trials-fail test: {time.monotonic() - started:.0f} s")
