"""The MLflow views `scrutable ui` links to, read back from a real SQLite MLflow store: the
saved-view tags parse as MLflow 3.17's UI parses them, their filters and sort run through
MLflow's own search, and the printed links open them."""

import json

import mlflow
import pytest
import yaml

from scrutable.metrics import keys
from scrutable.sweep import tracking, ui

METRICS = [keys.TASK_DEV_OBJECTIVE, keys.PERPLEXITY]
DIRECTIONS = ["max", "min"]
SEARCHED = ["alpha", "prompt_length"]


@pytest.fixture
def store(tmp_path):
    """A sweep folder whose store holds a parent run and three trial runs, as a sweep writes them."""
    folder = tmp_path / "qs"
    folder.mkdir()
    (folder / "spec.yaml").write_text(yaml.safe_dump({"name": "qs"}))
    uri = tracking.default_uri(folder)
    experiment_id, parent_id = tracking.connect(uri, "qs", folder)
    client = mlflow.MlflowClient(uri)
    trials = {"t1": (-0.60, 900.0), "t2": (-0.70, 50.0), "t3": (-0.72, 800.0)}  # t3 is dominated by t2
    for trial_id, (objective, perplexity) in trials.items():
        run = client.create_run(
            experiment_id, tags={"mlflow.parentRunId": parent_id, tracking.TRIAL_TAG: trial_id, ui.PROMPT_TAG: " x"}
        )
        client.log_metric(run.info.run_id, keys.TASK_DEV_OBJECTIVE, objective)
        client.log_metric(run.info.run_id, keys.PERPLEXITY, perplexity)
        client.log_param(run.info.run_id, "alpha", 0.1)
    return folder, uri, client, experiment_id, parent_id


def views(client, experiment_id):
    """{view key: (name, state)} decoded the way MLflow's UI does (envelope, then JSON state)."""
    tags = client.get_experiment(experiment_id).tags
    out = {}
    for key, value in tags.items():
        if key.startswith(ui.VIEW_TAG_PREFIX):
            envelope = json.loads(value)
            assert isinstance(envelope["name"], str) and isinstance(envelope["createdAt"], int)
            out[key.removeprefix(ui.VIEW_TAG_PREFIX)] = (envelope["name"], json.loads(envelope["state"]))
    return out


def trial_ids(client, experiment_id, state):
    order = f"{state['orderByKey']} {'ASC' if state['orderByAsc'] else 'DESC'}"
    found = client.search_runs([experiment_id], filter_string=state["searchFilter"], order_by=[order])
    return [run.data.tags[tracking.TRIAL_TAG] for run in found]


def test_views_show_objectives_searched_values_and_prompt(store):
    folder, uri, client, experiment_id, parent_id = store
    assert ui.stored_views(folder / "mlflow.db", experiment_id) == set()  # an older sweep: no views
    tracking.save_views(uri, experiment_id, METRICS, DIRECTIONS, SEARCHED)
    saved = views(client, experiment_id)
    assert set(saved) == {ui.RUNS_VIEW, ui.FRONTIER_VIEW} == ui.stored_views(folder / "mlflow.db", experiment_id)
    _, state = saved[ui.RUNS_VIEW]
    columns = ["params.`alpha`", "params.`prompt_length`", "metrics.`task/dev_objective`"]
    columns += ["metrics.`interp/perplexity`", "tags.`prompt`"]
    assert all(column in state["selectedColumns"] for column in columns)
    assert state["columnOrder"][0] == ui.RUN_NAME_COLUMN and set(state["columnWidths"]) >= set(columns)
    # MLflow's own search runs the filter and sort: the trials only, best dev objective first.
    assert trial_ids(client, experiment_id, state) == ["t1", "t2", "t3"]


def test_frontier_view_charts_the_frontier_runs(store):
    folder, uri, client, experiment_id, parent_id = store
    tracking.save_views(uri, experiment_id, METRICS, DIRECTIONS, SEARCHED)
    tracking.mark_frontier(client, parent_id, {"t1", "t2"})
    _, state = views(client, experiment_id)[ui.FRONTIER_VIEW]
    assert trial_ids(client, experiment_id, state) == ["t1", "t2"]
    parallel, scatter = state["compareRunCharts"]
    assert parallel["type"] == "PARALLEL" and parallel["selectedParams"] == SEARCHED
    assert parallel["selectedMetrics"] == METRICS  # not MLflow's default step/loss
    assert scatter["xaxis"]["key"] == keys.PERPLEXITY and scatter["yaxis"]["key"] == keys.TASK_DEV_OBJECTIVE
    assert {card["metricSectionId"] for card in state["compareRunCharts"]} == {state["compareRunSections"][0]["uuid"]}
    tracking.mark_frontier(client, parent_id, {"t3"})  # a resumed sweep's new frontier replaces the old
    assert trial_ids(client, experiment_id, state) == ["t3"]


def test_links_open_the_views(store, monkeypatch, capsys):
    folder, uri, client, experiment_id, _ = store
    assert ui.frontier_url(folder) is None  # no views yet: no link to print
    tracking.save_views(uri, experiment_id, METRICS, DIRECTIONS, SEARCHED)
    assert ui.frontier_url(folder, 5123) == (
        f"http://127.0.0.1:5123/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        "&viewStateShareKey=scrutable-frontier&compareRunsMode=CHART"
    )
    commands = []
    monkeypatch.setattr(ui, "_exec", commands.append)
    monkeypatch.setattr(ui, "check_port", lambda port: None)
    ui.serve(folder, 5123, open_browser=False)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith(
        f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=scrutable"
    )
    assert printed[1].endswith(ui.frontier_url(folder, 5123))
    assert commands and "--port" in commands[0]
