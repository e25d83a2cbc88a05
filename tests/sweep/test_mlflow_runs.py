"""What a tiny sweep leaves in MLflow, read back as a user would: the parent run tells the
story (spec params, hypervolume, frontier size, Pareto files, spec.yaml), child runs hold
the trial's config, every step's loss and the card as text, and a *moved* sweep folder's
artifacts are served by `scrutable ui` over HTTP, which leaves nothing running when stopped."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import pytest
import ray

from helpers import wait_for
from scrutable.metrics import keys
from scrutable.sweep.launcher import run_sweep
from scrutable.sweep.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # the first test pays for the sweep fixture
STEPS = 4


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    storage = tmp_path_factory.mktemp("storage")
    overrides = {
        "storage": str(storage),
        "data_dir": os.environ["SCRUTABLE_DATA_DIR"],
        "trials": "2",
        "concurrency": "1",
        "training.steps": str(STEPS),
        "training.eval_interval": "2",
    }
    ray.shutdown()  # trial workers must see the variable below (start_ray passes SCRUTABLE_*)
    os.environ["SCRUTABLE_PROGRESS_EVERY_S"] = "0"  # a step report at every step, between evaluations
    try:
        summary = run_sweep(load_spec(REPO / "sweeps" / "quickstart.yaml", overrides, smoke=True))
    finally:
        del os.environ["SCRUTABLE_PROGRESS_EVERY_S"]
        ray.shutdown()
    assert not summary["interrupted"]
    return storage / "quickstart"


def runs(folder):
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    found = client.search_runs([experiment.experiment_id])
    parent = next(r for r in found if r.data.tags.get("scrutable.role") == "parent")
    kids = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, experiment, parent, kids


def test_parent_run_holds_config_frontier_and_files(sweep):
    client, experiment, parent, kids = runs(sweep)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # runs table, not GenAI
    params = parent.data.params
    assert params["method"] == "pez" and params["sampler"] == "tpe" and params["trials"] == "2"
    assert params["search.alpha.low"] == "0.1" and params["training.steps"] == str(STEPS)
    frontier = json.loads((sweep / "pareto" / "pareto.json").read_text())
    assert parent.data.metrics[keys.PARETO_FRONTIER_SIZE] == len(frontier["frontier"]) >= 1
    assert parent.data.metrics[keys.PARETO_HYPERVOLUME] == pytest.approx(frontier["hypervolume"])
    assert parent.data.metrics[keys.SWEEP_TRIALS_COMPLETED] == 2
    assert parent.info.status == "FINISHED"
    from scrutable.sweep.artifacts import local_path

    root = local_path(sweep, parent.info.artifact_uri)
    assert (root / "spec.yaml").read_text() == (sweep / "spec.yaml").read_text()
    for name in ("pareto.png", "pareto.html", "pareto.csv", "pareto.json", "trials.csv"):
        assert (root / "pareto" / name).read_bytes() == (sweep / "pareto" / name).read_bytes()


def test_child_runs_hold_config_step_curves_and_card_text(sweep):
    client, _, _, kids = runs(sweep)
    assert len(kids) == 2
    for kid in kids:
        params = kid.data.params
        assert params["steps"] == str(STEPS) and params["batch_size"] == "4" and params["data_seed"] == "13"
        assert params["learning_rate"] and params["perplexity_source"]  # a PEZ-only field
        assert float(params["alpha"]) >= 0 and params["prompt_length"] in ("3", "6")
        history = client.get_metric_history(kid.info.run_id, keys.STEP_LOSS)
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1))  # every step, once
        evaluations = client.get_metric_history(kid.info.run_id, keys.TASK_DEV)
        assert sorted(m.step for m in evaluations) == [2, 4]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def test_ui_serves_the_artifacts_of_a_moved_folder_and_stops_cleanly(sweep, tmp_path):
    moved = tmp_path / "elsewhere" / "quickstart"
    shutil.copytree(sweep, moved)
    hidden = sweep.with_name("quickstart-hidden")
    sweep.rename(hidden)  # the original path no longer exists: only relative URIs can work
    try:
        _, experiment, _, kids = runs(moved)
        run_id = kids[0].info.run_id
        port = free_port()
        ui = subprocess.Popen(
            [sys.executable, "-m", "scrutable.cli", "ui", str(moved), "--port", str(port), "--no-browser"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            first = ui.stdout.readline()
            assert f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs" in first, first
            base = f"http://127.0.0.1:{port}"

            def healthy():
                assert ui.poll() is None, "the ui command exited: " + ui.stdout.read()[-2000:]
                try:
                    return get(base + "/health", timeout=2)
                except OSError:
                    return None

            wait_for(healthy, 300, "the MLflow server behind `scrutable ui`", 1.0)
            card = get(f"{base}/get-artifact?path=card.txt&run_uuid={run_id}").decode()
            assert card == (moved / "mlartifacts" / "quickstart" / run_id / "artifacts" / "card.txt").read_text()
            assert "Interpretability card" in card
            listed = json.loads(get(f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_id={run_id}"))
            assert {"card.json", "card.txt", "prompts"} <= {f["path"] for f in listed["files"]}
        finally:
            ui.send_signal(signal.SIGTERM)  # `kill`: the exec'd server stops with its worker
            ui.communicate(timeout=60)
        with socket.socket() as probe:  # nothing listens on the port any more
            assert probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        hidden.rename(sweep)


def test_a_retried_trial_repeating_its_steps_writes_each_point_once(tmp_path):
    """A trial retried from an earlier checkpoint reports the steps after it again (seen in a
    fault test: `train/step` 4 twice in MLflow). Each step is one point in the run's history."""
    from types import SimpleNamespace

    from scrutable.metrics import keys
    from scrutable.sweep import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id, parent_id = tracking.connect(uri, "retry", tmp_path)
    callback = tracking.MlflowTracking(uri, experiment_id, parent_id, {}, ["alpha"], tmp_path)
    trial = SimpleNamespace(trial_id="t1", config={"alpha": 0.5})
    history = json.dumps([[3, {keys.STEP_LOSS: 0.9}], [4, {keys.STEP_LOSS: 0.8}]])
    first = {keys.TRAIN_STEP: 4, keys.TASK_DEV_OBJECTIVE: -0.6, keys.PROGRESS_HISTORY: history}
    retried = {keys.TRAIN_STEP: 4, keys.TASK_DEV_OBJECTIVE: -0.6, keys.PROGRESS_HISTORY: history}
    later = {keys.TRAIN_STEP: 6, keys.TASK_DEV_OBJECTIVE: -0.5}
    for result in (first, retried, later):
        callback.on_trial_result(0, [], trial, result)
    client = mlflow.MlflowClient(uri)
    run_id = callback.run_id(trial)
    objective = [(m.step, m.value) for m in client.get_metric_history(run_id, keys.TASK_DEV_OBJECTIVE)]
    assert sorted(objective) == [(4, -0.6), (6, -0.5)]
    assert sorted(m.step for m in client.get_metric_history(run_id, keys.STEP_LOSS)) == [3, 4]


def test_a_resumed_driver_writes_a_replayed_step_once(tmp_path):
    """A kill between a trial's report and Tune's registration of its checkpoint (seen in CI on
    the S3 resume test: `train/step` 1, 2, 2, 3, 4 in result.json) makes the resumed trial
    report that step again, to a fresh driver's callback, which finds the run in the store."""
    from types import SimpleNamespace

    from scrutable.sweep import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id, parent_id = tracking.connect(uri, "resume", tmp_path)
    trial = SimpleNamespace(trial_id="t1", config={"alpha": 0.5})

    def evaluation(step: int, objective: float) -> dict:
        history = json.dumps([[step, {keys.STEP_LOSS: 1.0 / step}]])
        return {keys.TRAIN_STEP: step, keys.TASK_DEV_OBJECTIVE: objective, keys.PROGRESS_HISTORY: history}

    killed = tracking.MlflowTracking(uri, experiment_id, parent_id, {}, ["alpha"], tmp_path)
    for result in (evaluation(1, -0.7), evaluation(2, -0.6)):
        killed.on_trial_result(0, [], trial, result)
    resumed = tracking.MlflowTracking(uri, experiment_id, parent_id, {}, ["alpha"], tmp_path)
    for result in (evaluation(2, -0.6), evaluation(3, -0.5)):  # step 2 replayed from step 1's checkpoint
        resumed.on_trial_result(0, [], trial, result)
    client = mlflow.MlflowClient(uri)
    run_id = resumed.run_id(trial)
    assert run_id == killed.run_id(trial)
    objective = [(m.step, m.value) for m in client.get_metric_history(run_id, keys.TASK_DEV_OBJECTIVE)]
    assert sorted(objective) == [(1, -0.7), (2, -0.6), (3, -0.5)]
    assert sorted(m.step for m in client.get_metric_history(run_id, keys.STEP_LOSS)) == [1, 2, 3]


def test_repair_rebuilds_every_run_with_its_card_in_an_empty_store(sweep, tmp_path):
    """A store that lost everything (a crash before any write reached it): the end-of-sweep
    repair rebuilds each trial's run from Tune's files alone, closes it FINISHED and attaches
    its card, and reports nothing lost."""
    from scrutable.sweep import tracking
    from scrutable.sweep.artifacts import local_path
    from scrutable.sweep.folder import SweepFolder

    copy = tmp_path / "quickstart"
    shutil.copytree(sweep, copy, symlinks=True)
    (copy / "mlflow.db").unlink()
    shutil.rmtree(copy / "mlartifacts")
    folder = SweepFolder.open(copy)
    uri = folder.mlflow_uri
    experiment_id, parent_id = tracking.connect(uri, folder.experiment, copy)
    callback = tracking.MlflowTracking(uri, experiment_id, parent_id, {}, folder.spec.space.names, copy)
    records = folder.trials()
    assert len(records) == 2 and all(r.status == "TERMINATED" for r in records)

    lost = callback.repair(records)

    assert lost == []
    client = mlflow.MlflowClient(uri)
    kids = [r for r in client.search_runs([experiment_id]) if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert sorted(r.data.tags["scrutable.trial_id"] for r in kids) == sorted(r.trial_id for r in records)
    for run in kids:
        assert run.info.status == "FINISHED"
        record = next(r for r in records if r.trial_id == run.data.tags["scrutable.trial_id"])
        reported = {int(row[keys.TRAIN_STEP]) for row in folder.history(record)}  # Tune's result.json
        logged = {int(m.step) for m in client.get_metric_history(run.info.run_id, keys.TRAIN_STEP)}
        assert logged == reported and STEPS in logged
        card = json.loads((record.checkpoint / "card.json").read_text())
        assert run.data.tags["final_prompt"] == str(card["unembedded_text"])[:250]
        artifacts = local_path(copy, run.info.artifact_uri)  # mlartifacts/<experiment>/<run>/artifacts
        assert json.loads((artifacts / "card.json").read_text()) == card
