"""Resume after the corruption of any state file keeps every finished trial.

One tiny sweep runs to the end; then each state file of a copy of its folder is damaged in
turn (Tune's pickles and JSON, a trial's files, optuna.db, mlflow.db, spec.yaml, the
scorer's counts), and the copy is resumed as a user would after "not signed by you":
`scrutable sweep FOLDER --resume --trust-folder`. Either the resume refuses in one line
(exit 2) before anything is overwritten, or it goes through (exit 0), as `EXPECTED` says
for each file; never a traceback, never a restarted experiment. Afterwards the finished
trials are still in `pareto/` and, unless mlflow.db itself was the damaged file, in MLflow.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import ray

from scrutable.cli import main

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # one sweep, then a resume per damaged file


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble(path: Path) -> None:
    path.write_bytes(os.urandom(max(path.stat().st_size, 64)))


def one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert found, f"no {pattern} in {folder}"
    return found[0]


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "tuner.pkl": lambda f: truncate(f / "tune" / "tuner.pkl"),
    "experiment-state": lambda f: truncate(one(f, "tune/experiment_state-*.json")),
    "search-generator-state": lambda f: truncate(one(f, "tune/search_gen_state-*.json")),
    "searcher-state": lambda f: truncate(one(f, "tune/searcher-state-*.pkl")),  # the case of issue 17
    "trial-params": lambda f: truncate(one(f, "tune/*/params.pkl")),
    "trial-results": lambda f: truncate(one(f, "tune/*/result.json")),
    "optuna.db": lambda f: garble(f / "optuna.db"),
    "mlflow.db": lambda f: garble(f / "mlflow.db"),
    "spec.yaml": lambda f: truncate(f / "spec.yaml"),
    "scorer-stats": lambda f: truncate(f / "scorer_stats.json"),
}


# What each resume answers: the error line's fragment, or None for a resume that goes through
# (Tune rebuilds tuner.pkl from this run's objects; a trial's files are read again or skipped;
# the scorer's counts restart).
REFUSED = "Ray Tune could not restore"
EXPECTED: dict[str, str | None] = {
    "tuner.pkl": None,
    "experiment-state": REFUSED,
    "search-generator-state": REFUSED,
    "searcher-state": REFUSED,
    "trial-params": None,
    "trial-results": None,
    "optuna.db": "optuna.db cannot be read",
    "mlflow.db": "mlflow.db cannot be read",
    "spec.yaml": "spec.yaml",
    "scorer-stats": None,
}


def finished_trials(folder: Path) -> dict[str, str]:
    """trial id -> status, from the Pareto export."""
    with (folder / "pareto" / "trials.csv").open() as handle:
        return {row["trial_id"]: row["status"] for row in csv.DictReader(handle)}


def child_runs(folder: Path) -> set[str]:
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == folder.name]
    runs = client.search_runs([experiment.experiment_id])
    return {r.data.tags["scrutable.trial_id"] for r in runs if "scrutable.trial_id" in r.data.tags}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    argv = [
        "sweep",
        str(REPO / "sweeps" / "quickstart.yaml"),
        "--smoke",
        *("--set", f"storage={root}"),
        *("--set", f"data_dir={os.environ['SCRUTABLE_DATA_DIR']}"),
        *("--set", "trials=2", "--set", "concurrency=1", "--set", "training.steps=2"),
    ]
    assert main(argv) == 0
    folder = root / "quickstart"
    trials = finished_trials(folder)
    assert len(trials) == 2 and set(trials.values()) == {"TERMINATED"}
    assert child_runs(folder) == set(trials)
    yield folder, trials
    ray.shutdown()


@pytest.mark.parametrize("damage", list(CORRUPTIONS), ids=str)
def test_resume_after_a_damaged_state_file_keeps_every_finished_trial(finished, damage, tmp_path, capsys):
    original, trials = finished
    folder = tmp_path / original.name  # a copy: the folder's name is the sweep's
    shutil.copytree(original, folder, symlinks=True)
    CORRUPTIONS[damage](folder)
    capsys.readouterr()

    code = main(["sweep", str(folder), "--resume", "--trust-folder"])

    err = capsys.readouterr().err
    assert "Traceback" not in err
    expected = EXPECTED[damage]
    assert code == (0 if expected is None else 2), err[-3000:]
    if expected is not None:
        errors = [line for line in err.splitlines() if line.startswith("scrutable: error: ")]
        assert len(errors) == 1 and expected in errors[0], err[-3000:]
    assert finished_trials(folder) == trials  # the same finished trials, nothing restarted
    if damage != "mlflow.db":
        assert child_runs(folder) == set(trials)
