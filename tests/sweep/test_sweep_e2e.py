"""End-to-end sweeps on tiny models: Optuna's study really has two directions, MLflow
holds one parent and one child per trial, one scorer actor serves every trial (its batching:
test_scorer_actor.py), the Pareto files exist, every shipped spec runs in smoke mode, and a killed
driver resumes without re-running finished trials or duplicating MLflow runs."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import ray
import yaml

from helpers import evaluation_steps
from scrutable.sweep.artifacts import local_path
from scrutable.sweep.launcher import run_sweep
from scrutable.sweep.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
SWEEPS = sorted((REPO / "sweeps").rglob("*.yaml"))  # sweeps/results/ too
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # whole sweeps, a kill and a resume


@pytest.fixture(scope="module", autouse=True)
def _ray():
    yield
    ray.shutdown()


def smoke_spec(name, tmp_path, **overrides):
    """`name` relative to sweeps/, e.g. "quickstart.yaml" or "results/sst2_pez.yaml"."""
    values = {"storage": str(tmp_path), "data_dir": os.environ["SCRUTABLE_DATA_DIR"], **overrides}
    return load_spec(REPO / "sweeps" / name, {k: str(v) for k, v in values.items()}, smoke=True)


def children(folder):
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == folder.name]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("scrutable.role") == "parent"]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, kids


def test_quickstart_smoke_sweep_end_to_end(tmp_path):
    """Six trials (issue 18): alpha = 0 once per length, outside the study; four spread over
    the log range, held in Optuna as the real alpha with their dev-objective curves; no two
    trials with the same (alpha, length, seed)."""
    import csv

    spec = smoke_spec("quickstart.yaml", tmp_path, trials=6)
    summary = run_sweep(spec)
    folder = tmp_path / "quickstart"
    assert summary["trials_finished"] == 6 and not summary["interrupted"]
    rows = list(csv.DictReader((folder / "pareto" / "trials.csv").open()))
    configs = {(float(r["alpha"]), int(r["prompt_length"]), int(r["seed"])) for r in rows}
    assert len(rows) == len(configs) == 6  # nothing ran twice
    assert sorted((a, length) for a, length, _ in configs if a == 0) == [(0.0, 3), (0.0, 6)]
    alphas = sorted(a for a, _, _ in configs if a > 0)
    # One per quarter of log10 alpha over [0.1, 30]: below 0.42, 0.42-1.7, 1.7-7.2, above 7.2.
    assert alphas[0] < 0.42 and alphas[-1] > 7.2 and any(0.41 < a < 7.3 for a in alphas[1:-1])

    study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == spec.metric_names == ["task/dev_objective", "interp/perplexity"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 and all(len(t.values) == 2 for t in complete)
    searched = {(float(r["alpha"]), int(r["prompt_length"])): r for r in rows if float(r["alpha"]) > 0}
    for trial in complete:  # the real alpha; what the study holds and what ran agree
        assert set(trial.params) == {"alpha", "prompt_length"} and trial.distributions["alpha"].log
        row = searched[(trial.params["alpha"], trial.params["prompt_length"])]
        assert trial.user_attrs["seed"] == int(row["seed"]) and trial.user_attrs["tune_trial_id"] == row["trial_id"]
        assert trial.user_attrs["mlflow_run_id"] and trial.intermediate_values  # an evaluation per step
        assert trial.intermediate_values[max(trial.intermediate_values)] == pytest.approx(
            float(row["task/dev_objective"])
        )
    assert len([k for k in study.user_attrs if k.startswith("baseline")]) == 2

    parents, kids = children(folder)
    assert len(parents) == 1 and len(kids) == 6
    assert {k.data.tags["mlflow.parentRunId"] for k in kids} == {parents[0].info.run_id}
    assert all({"alpha", "prompt_length", "method", "model", "scorer", "seed"} <= set(k.data.params) for k in kids)
    assert {int(k.data.params["seed"]) for k in kids} == {seed for _, _, seed in configs}  # each trial's own
    assert all({"task/dev_metric", "task/dev_objective", "interp/perplexity"} <= set(k.data.metrics) for k in kids)
    # Folder-relative artifact URIs (served by `scrutable ui`), the files under mlartifacts/.
    root = local_path(folder, kids[0].info.artifact_uri)
    assert root is not None and {"card.json", "card.txt", "prompts"} <= {p.name for p in root.iterdir()}
    assert not (Path.cwd() / "mlflow.db").exists()  # no stray store in the working directory

    assert summary["scorer"]["trials"] == 6  # one actor served every trial
    for name in ("pareto.csv", "pareto.json", "pareto.png", "pareto.html", "trials.csv"):
        assert (folder / "pareto" / name).stat().st_size > 0
    frontier = json.loads((folder / "pareto" / "pareto.json").read_text())
    # Tiny random models seldom beat a uniform guess: the frontier may be empty, the baseline is stated.
    assert "frontier" in frontier and "hypervolume" in frontier and frontier["baseline"]["value"] < 0


def test_every_record_of_a_trial_describes_the_same_prompt_and_values(tmp_path):
    """Alpha 0, a small and a large alpha read the same in Tune's trial config, the Optuna
    study, MLflow's params and the Pareto CSV; and each trial's prompt, objectives and test
    metric agree across the CSV, Optuna and MLflow's final card."""
    import csv

    overrides = {"sampler": "grid", "trials": 3, "search.alpha.grid_points": 2, "search.prompt_length.values": "[2]"}
    spec = smoke_spec("quickstart.yaml", tmp_path, **overrides)
    run_sweep(spec)
    folder = tmp_path / "quickstart"
    rows = {row["trial_id"]: row for row in csv.DictReader((folder / "pareto" / "trials.csv").open())}
    assert sorted(float(row["alpha"]) for row in rows.values()) == [0.0, 0.1, 30.0]  # 0, low, high
    tune_params = {
        json.loads((path.parent / "result.json").read_text().splitlines()[-1])["trial_id"]: json.loads(path.read_text())
        for path in folder.glob("tune/*/params.json")
    }
    study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{folder / 'optuna.db'}")
    trials = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    _, kids = children(folder)
    runs = {k.data.tags["scrutable.trial_id"]: k for k in kids}
    assert set(rows) == set(tune_params) == set(trials) == set(runs)
    for trial_id, row in rows.items():
        alpha = float(row["alpha"])
        assert tune_params[trial_id]["alpha"] == alpha == trials[trial_id].params["alpha"]
        assert float(runs[trial_id].data.params["alpha"]) == alpha
        run_id = runs[trial_id].info.run_id
        assert row["mlflow_run_id"] == run_id == trials[trial_id].user_attrs["mlflow_run_id"]
        card = json.loads((local_path(folder, runs[trial_id].info.artifact_uri) / "card.json").read_text())
        assert card["final"] and card["split"] == "test"
        assert row["prompt_text"] == card["unembedded_text"] == trials[trial_id].user_attrs["prompt/text"]
        assert row["token_ids"] == " ".join(str(t["token_id"]) for t in card["tokens"])
        assert float(row["interp/perplexity"]) == pytest.approx(card["perplexity"])
        assert float(row["task/test_metric"]) == pytest.approx(card["metric_unembedded"])
        assert [float(row[m]) for m in spec.metric_names] == pytest.approx(trials[trial_id].values)
        assert runs[trial_id].data.metrics["interp/perplexity"] == pytest.approx(card["perplexity"])


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: str(p.relative_to(REPO / "sweeps")))
def test_every_spec_runs_in_smoke_mode_as_the_readme_shows(path, tmp_path, monkeypatch, capsys):
    """`scrutable sweep sweeps/X.yaml --smoke` from the repository root, with no --out and no
    storage setting: the spec's default `storage: runs` must reach Tune as an absolute path.
    The working directory is a stand-in for the root (its `sweeps/` is the repository's), so
    the sweep lands in tmp_path/runs, not in the checkout."""
    from scrutable.cli import main

    (tmp_path / "sweeps").symlink_to(REPO / "sweeps")
    monkeypatch.chdir(tmp_path)
    relative = path.relative_to(REPO)
    assert main(["sweep", str(relative), "--smoke", "--json"]) == 0
    spec = load_spec(relative, smoke=True)
    storage = yaml.safe_load(path.read_text()).get("storage", "runs")  # relative in every shipped spec
    folder = tmp_path.resolve() / storage / spec.name
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # --json: stdout is one JSON document, the rest went to stderr
    assert "starting Ray" in captured.err and "first trial started" in captured.err
    assert document["folder"] == str(folder.resolve()) and document["trials_finished"] == spec.trials
    assert document["pareto"]["counts"]["trials"] == spec.trials
    assert document["pareto"]["files"]["pareto.csv"] == str(folder.resolve() / "pareto" / "pareto.csv")
    assert len(document["pareto"]["frontier"]) == document["pareto"]["counts"]["frontier"]
    assert main(["pareto", str(folder), "--json"]) == 0  # the frontier re-exported, for scripts
    exported = json.loads(capsys.readouterr().out)
    assert exported["frontier"] == json.loads((folder / "pareto" / "pareto.json").read_text())["frontier"]
    assert exported["files"] == document["pareto"]["files"]
    assert (folder / "pareto" / "trials.csv").is_file() and (folder / "tune").is_dir()
    stored = yaml.safe_load((folder / "spec.yaml").read_text())
    assert stored["storage"] == str(tmp_path.resolve() / storage)  # resolved once, against the launching folder
    assert stored["local_dir"] == str(tmp_path.resolve() / "runs")


TORCH_WATCH = """
import os, sys

class _Watch:  # records, for the test, which processes import torch (then steps aside)
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            with open(os.environ["TORCH_IMPORTS"], "a") as log:
                log.write(f"{os.getpid()}\\n")
            sys.meta_path.remove(self)
        return None

sys.meta_path.insert(0, _Watch())
"""


def test_the_driver_never_imports_torch(tmp_path):
    """A sweep's driver validates, starts Ray, tracks and exports, but runs no model: torch
    (and transformers) load in the trials and the scorer actor only, not in the command's own
    process, where they would cost seconds of start-up (docs/benchmarks.md, section 3)."""
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "sitecustomize.py").write_text(TORCH_WATCH)  # every Python process of the run loads it
    imports = tmp_path / "torch-imports.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(watch), os.environ.get("PYTHONPATH")])),
        "TORCH_IMPORTS": str(imports),
    }
    args = [sys.executable, "-m", "scrutable.cli", "sweep", str(REPO / "sweeps" / "quickstart.yaml"), "--smoke"]
    args += ["--set", f"storage={tmp_path}", "--set", f"data_dir={os.environ['SCRUTABLE_DATA_DIR']}"]
    driver = subprocess.Popen([*args, "--set", "trials=2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output.decode()[-3000:]
    pids = imports.read_text().split() if imports.exists() else []
    assert pids, "no process imported torch: the watch is not installed, so this test would prove nothing"
    assert str(driver.pid) not in pids, "the driver imported torch"
    assert len(list((tmp_path / "quickstart").glob("tune/*/result.json"))) == 2  # the trials ran, and reported


def test_resume_after_killing_the_driver(tmp_path):
    args = [
        sys.executable,
        "-m",
        "scrutable.cli",
        "sweep",
        str(REPO / "sweeps" / "quickstart.yaml"),
        "--smoke",
        "--set",
        f"storage={tmp_path}",
        "--set",
        f"data_dir={os.environ['SCRUTABLE_DATA_DIR']}",
        "--set",
        "trials=4",
        "--set",
        "concurrency=1",
        "--set",
        "training.steps=6",
    ]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in first.stdout:  # kill once the first trial has finished (bounded by the test's timeout)
            seen.append(line)
            if "1/4 trials done" in line:
                break
        assert any("1/4 trials done" in line for line in seen), "".join(seen[-20:])
        # Mid-sweep (three trials to go), so the SIGTERM lands inside Tune's run, where the
        # sweep turns it into Ctrl-C: a clean stop with exit code 130.
        assert first.poll() is None, "".join(seen[-20:])
        first.send_signal(signal.SIGTERM)  # `kill`: handled like Ctrl-C
        rest, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, "".join(seen[-20:]) + rest[-3000:]

    folder = tmp_path / "quickstart"
    done_before = {
        path.parent.parent.name
        for path in folder.glob("tune/*/checkpoint_*/card.json")
        if json.loads(path.read_text())["final"]
    }

    second = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]

    results = sorted(folder.glob("tune/*/result.json"))
    assert len(results) == 4
    for path in results:
        reports = [json.loads(line) for line in path.read_text().splitlines()]
        evaluation_steps(reports, path.parent.name)  # nothing re-ran but, at most, an unregistered report
    assert done_before  # at least one trial had finished before the kill
    parents, kids = children(folder)
    assert len(parents) == 1 and len(kids) == 4  # no duplicated MLflow runs
    study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{folder / 'optuna.db'}")
    baselines = [k for k in study.user_attrs if k.startswith("baseline ")]  # alpha = 0, run outside the study
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) + len(baselines) == 4
