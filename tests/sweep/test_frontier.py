"""Tests for scrutable.sweep.results and .frontier: reading a real Tune experiment and
writing the frontier.

The module fixture runs a real (tiny) Ray Tune grid with a fake trainable that reports
the sweep's metric keys from alpha and prompt length, checkpoints `state.pt` + `card.json`
like the adapter, and fails on one grid point; the tracking callback writes the MLflow
child runs. No model is loaded, and the trial config leaves out the spec object: a worker
unpickling it imports `scrutable.sweep.spec`, hence torch (~5 s per trial on two cores).
Synthetic records cover the edge cases (one objective, no completed trial, three
objectives) without Ray.
Run: python -m pytest tests/sweep/test_frontier.py -q
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

# Before Ray is imported: the old output engine, no auth token, no usage stats.
os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import numpy as np
import pytest

from scrutable.metrics import keys
from scrutable.sweep.frontier import export_pareto, render_summary
from scrutable.sweep.pareto import default_reference, hypervolume
from scrutable.sweep.results import TrialRecord, collect_trials
from scrutable.sweep.spec import Dimension, Mode, Objective, SweepSpec, Tracking

MAX, MIN = "maximize", "minimize"
# Plain strings for the worker side: referencing `keys` there would import scrutable.metrics (torch).
DEV, TEST, PPL, DIST = keys.TASK_DEV, keys.TASK_TEST, keys.PERPLEXITY, keys.DISTANCE_EUCLIDEAN
OBJ = keys.TASK_DEV_OBJECTIVE
MSE, TOP1, PDIFF, STEP = keys.OUTPUT_MSE, keys.TOP1_AGREEMENT, keys.PERFORMANCE_DIFF, keys.TRAIN_STEP
FAIL_MESSAGE = "fake trainable refuses prompt_length 8 at alpha 0"
ALPHA = Dimension(low=0.01, high=10.0, log=True, zero=True)


def make_spec(storage: Path | str = "runs", **changes) -> SweepSpec:
    spec = SweepSpec(
        name="export-test",
        method="pez",
        task="sst2",
        model="tiny-gpt2",
        scorer="tiny-gpt2",
        search={"alpha": ALPHA, "prompt_length": Dimension(values=[3, 8])},
        # The synthetic records below speak of the dev metric; the real sweep's rows carry both.
        objectives=[Objective(keys.TASK_DEV, Mode.MAX), Objective(keys.PERPLEXITY, Mode.MIN)],
        storage=str(storage),
    )
    return replace(spec, **changes)


def fake_metrics(alpha: float, length: int, step: int) -> dict:
    """Accuracy falls and perplexity improves with alpha; length 8 is worse at both."""
    dev = 0.9 - 0.02 * math.log1p(10 * alpha) - 0.01 * length + 0.001 * step
    perplexity = math.inf if alpha == 0 and length == 3 else 500 / (1 + 10 * alpha) + 10 * length
    return {
        DEV: dev,
        OBJ: math.log(dev),
        TEST: dev - 0.05,
        PPL: perplexity,
        DIST: 0.1 * length,
        MSE: alpha / 10,
        TOP1: 1.0 - alpha / 20,
        PDIFF: 0.01,
        STEP: step,
        "prompt/text": f"great movie {length} alpha {alpha:g}",
        "prompt/token_ids": " ".join(str(100 + i) for i in range(length)),
    }


def fake_trainable(config: dict) -> None:
    from ray import tune

    alpha = config["alpha"]  # decoded by the searcher (search_space.py), as in a sweep
    length = config["prompt_length"]
    if alpha == 0 and length == 8:
        raise RuntimeError(FAIL_MESSAGE)
    for step in (10, 20):
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / "state.pt").write_bytes(b"fake")
            (Path(directory) / "card.json").write_text(json.dumps({"final": step == 20, "step": step}))
            tune.report(fake_metrics(alpha, length, step), checkpoint=tune.Checkpoint.from_directory(directory))


def brute_frontier(records: list[TrialRecord], metrics: list[str], directions: list[str]) -> set[str]:
    def gains(r):
        return [r.objectives[m] * (1 if d == MAX else -1) for m, d in zip(metrics, directions, strict=True)]

    ok = [r for r in records if r.status == "TERMINATED" and all(math.isfinite(r.objectives[m]) for m in metrics)]
    return {
        p.trial_id
        for p in ok
        if not any(all(a >= b for a, b in zip(gains(q), gains(p), strict=True)) and gains(q) != gains(p) for q in ok)
    }


# --- a real Tune experiment ----------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    import ray
    import ray.cloudpickle
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from scrutable.sweep import tracking

    # pytest imports this file under a name Ray workers cannot import: ship it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    storage = tmp_path_factory.mktemp("sweeps")
    spec = make_spec(storage)
    folder = spec.folder()
    folder.mkdir(parents=True)
    uri = tracking.default_uri(folder)
    experiment_id, parent_id = tracking.connect(uri, spec.name, folder)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        tuner = tune.Tuner(
            fake_trainable,
            param_space={
                "alpha": tune.grid_search([0.0, 0.1, 10.0]),
                "prompt_length": tune.grid_search([3, 8]),
            },
            tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),  # halves the run time
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(folder),
                verbose=0,
                # The JSON logger explicitly, so both of collect_trials' sources get tested.
                callbacks=[
                    tracking.MlflowTracking(
                        uri, experiment_id, parent_id, {"method": "fake"}, ["alpha", "prompt_length"], folder
                    ),
                    JsonLoggerCallback(),
                ],
            ),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    return spec, folder, results, uri


@pytest.mark.slow
def test_collect_trials_reads_statuses_results_and_run_ids(sweep):
    import mlflow

    from scrutable.sweep.tracking import TRIAL_TAG

    spec, folder, results, uri = sweep
    records = collect_trials(folder, spec)
    assert len(records) == 6 == len(results)
    # Same trials and outcomes as Tune's own ResultGrid.
    expected = {Path(r.path).name: r.error is not None for r in results}
    assert {r.path.name: r.status == "ERROR" for r in records} == expected
    failed = [r for r in records if r.status == "ERROR"]
    assert len(failed) == 1 and failed[0].error == f"RuntimeError: {FAIL_MESSAGE}"
    assert failed[0].params == {"alpha": 0.0, "prompt_length": 8} and failed[0].checkpoint is None
    assert all(r.status == "TERMINATED" for r in records if r is not failed[0])

    client = mlflow.MlflowClient(tracking_uri=uri)
    for record in records:
        assert record.mlflow_run_id is not None
        assert client.get_run(record.mlflow_run_id).data.tags[TRIAL_TAG] == record.trial_id
        if record.status != "TERMINATED":
            continue
        alpha, length = record.params["alpha"], record.params["prompt_length"]
        assert alpha in (0.0, 0.1, 10.0) and length in (3, 8)
        last = fake_metrics(alpha, length, 20)  # the LAST report, not the first
        assert record.objectives == pytest.approx({m: last[m] for m in spec.metric_names})
        assert record.test_metric == pytest.approx(last[keys.TASK_TEST])
        assert record.faithfulness[keys.DISTANCE_EUCLIDEAN] == pytest.approx(0.1 * length)
        assert record.prompt_text == last["prompt/text"]
        assert record.token_ids == list(range(100, 100 + length))
        assert record.checkpoint is not None and record.checkpoint.name == "checkpoint_000001"
        assert json.loads((record.checkpoint / "card.json").read_text())["final"] is True
    baseline = next(r for r in records if r.params == {"alpha": 0.0, "prompt_length": 3})
    assert baseline.objectives[keys.PERPLEXITY] == math.inf


def _comparable(records: list[TrialRecord]) -> list[tuple]:
    return [
        (r.trial_id, r.status, r.params, r.objectives, r.prompt_text, r.checkpoint and r.checkpoint.name, r.error)
        for r in records
    ]


@pytest.mark.slow
def test_collect_trials_reads_any_of_its_sources(sweep, tmp_path):
    spec, folder, _, _ = sweep
    records = collect_trials(folder, spec)
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    without_store = replace(spec, tracking=Tracking(uri=missing))
    assert all(r.mlflow_run_id is None for r in collect_trials(folder, without_store))
    assert not (tmp_path / "missing.db").exists()  # looking up never creates a store

    # The launcher's default: the experiment state only (no JSON logger).
    state_only = tmp_path / "state_only"
    shutil.copytree(folder / "tune", state_only / "tune")
    for log in [*(state_only / "tune").glob("*/result.json"), *(state_only / "tune").glob("*/params.*")]:
        log.unlink()
    assert _comparable(collect_trials(state_only, without_store)) == _comparable(records)

    # A driver killed before saving its state: the trial folders alone.
    folders_only = tmp_path / "folders_only"
    shutil.copytree(folder / "tune", folders_only / "tune")
    for state in (folders_only / "tune").glob("experiment_state-*.json"):
        state.unlink()
    assert _comparable(collect_trials(folders_only, without_store)) == _comparable(records)


@pytest.mark.slow
def test_export_pareto_matches_brute_force_and_writes_files(sweep, tmp_path):
    spec, folder, _, _ = sweep
    records = collect_trials(folder, spec)
    directions = [MAX, MIN]
    summary = export_pareto(records, spec, tmp_path / "pareto")

    frontier = {r.trial_id for r in summary.frontier}
    assert frontier == brute_frontier(records, spec.metric_names, directions)
    assert {(r.params["alpha"], r.params["prompt_length"]) for r in summary.frontier} == {(0.1, 3), (10.0, 3)}
    assert (summary.n_trials, summary.n_completed, summary.n_failed, summary.n_excluded) == (6, 5, 1, 1)

    eligible = [r for r in records if r.status == "TERMINATED" and math.isfinite(r.objectives[keys.PERPLEXITY])]
    points = np.array([[r.objectives[m] for m in spec.metric_names] for r in eligible])
    reference = default_reference(points, directions)
    reference[0] = 0.5  # the baseline, a uniform guess over SST-2's 2 labels, is the task coordinate
    assert all(r.objectives[keys.TASK_DEV] > 0.5 for r in eligible)  # every trial beats it here
    assert summary.reference == pytest.approx(list(reference))
    assert summary.hypervolume == pytest.approx(hypervolume(points, directions, reference))

    files = summary.files
    assert set(files) == {"trials.csv", "pareto.csv", "pareto.json", "pareto.png", "pareto.html"}
    trial_rows = list(csv.DictReader(files["trials.csv"].open()))
    assert len(trial_rows) == 6
    failed_row = next(row for row in trial_rows if row["status"] == "ERROR")
    assert FAIL_MESSAGE in failed_row["excluded"] and failed_row["on_frontier"] == "False"
    pareto_rows = list(csv.DictReader(files["pareto.csv"].open()))
    assert {row["trial_id"] for row in pareto_rows} == frontier
    assert all(row["mlflow_run_id"] and row["checkpoint"] and row["prompt_text"] for row in pareto_rows)

    saved = json.loads(files["pareto.json"].read_text())
    assert {"sweep", "objectives", "counts", "hypervolume", "reference", "frontier", "failures"} <= set(saved)
    assert saved["reference"]["values"] == pytest.approx(dict(zip(spec.metric_names, reference, strict=True)))
    assert saved["hypervolume"] == pytest.approx(summary.hypervolume)
    entry = saved["frontier"][0]
    assert {
        "objectives",
        "params",
        "prompt_text",
        "token_ids",
        "faithfulness",
        "test_metric",
        "mlflow_run_id",
        "checkpoint",
    } <= set(entry)
    assert entry["token_ids"] == [100, 101, 102] and Path(entry["checkpoint"]).is_dir()

    assert files["pareto.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files["pareto.png"].stat().st_size > 10_000
    page = files["pareto.html"].read_text()
    assert summary.frontier[0].prompt_text in page
    assert '<script src="http' not in page and "cdn.plot.ly/plotly" not in page

    text = render_summary(summary)
    flat = " ".join(text.split())  # wrapped at 80 columns
    assert "2 on the Pareto frontier" in flat and FAIL_MESSAGE in flat and "hypervolume" in flat
    assert len(text.splitlines()) < 25
    assert all(len(line) <= 80 or " " not in line.strip() for line in text.splitlines()), text  # a long path alone


def test_summary_fits_80_columns_and_shows_prompts_as_read(tmp_path):
    long_prompt = " understandynamda History technical heart and a great deal more text than fits"
    records = [
        record("a1b2c3d4", dev_objective=-0.6446, perplexity=4.292e5),
        record("e5f6a7b8", dev_objective=-0.68, perplexity=1.96e5),
    ]
    records = [replace(records[0], prompt_text=long_prompt), replace(records[1], prompt_text=" ADD unacceptablescrib")]
    spec = make_spec(objectives=[Objective(keys.TASK_DEV_OBJECTIVE, Mode.MAX), Objective(keys.PERPLEXITY, Mode.MIN)])
    text = render_summary(export_pareto(records, spec, tmp_path / "out"))
    table = [line for line in text.splitlines() if line.startswith("  ")]
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert any(line.endswith("' ADD unacceptablescrib'") for line in table), text  # leading space kept
    assert any("' understandynamda History" in line and line.endswith("…'") for line in table), text
    flat = " ".join(text.split())
    assert "dev_objective = task/dev_objective (max)" in flat and "perplexity = interp/perplexity (min)" in flat


# --- edge cases without Ray ----------------------------------------------------------------


def record(trial_id: str, status: str = "TERMINATED", **objectives: float) -> TrialRecord:
    values = {f"task/{k}" if k.startswith("dev") else f"interp/{k}": v for k, v in objectives.items()}
    return TrialRecord(
        trial_id=trial_id,
        status=status,
        params={"alpha": 0.5, "prompt_length": 3},
        objectives=values,
        metrics=dict(values),
        prompt_text=f"prompt of {trial_id}",
        error="ValueError: nope" if status == "ERROR" else None,
    )


def test_single_objective_frontier_is_the_best_trials(tmp_path):
    spec = make_spec(objectives=[Objective(keys.TASK_DEV, Mode.MAX)])
    records = [
        record("a", dev_metric=0.7),
        record("b", dev_metric=0.9),
        record("c", dev_metric=0.9),
        record("d", "ERROR"),
    ]
    summary = export_pareto(records, spec, tmp_path)
    assert [r.trial_id for r in summary.frontier] == ["b", "c"]
    assert summary.hypervolume == pytest.approx(0.9 - 0.5)  # against the baseline, a uniform guess over 2 labels
    assert summary.files["pareto.png"].stat().st_size > 0 and summary.files["pareto.html"].is_file()
    assert "single objective" in render_summary(summary)


def test_no_completed_trial_writes_trials_csv_and_skips_plots(tmp_path):
    (tmp_path / "pareto.png").write_bytes(b"stale")
    records = [record("a", "ERROR"), record("b", "RUNNING"), record("c", dev_metric=0.8, perplexity=math.inf)]
    summary = export_pareto(records, make_spec(), tmp_path)
    assert summary.frontier == [] and summary.hypervolume is None and summary.reference is None
    assert "pareto.png" not in summary.files and not (tmp_path / "pareto.png").exists()
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [row["excluded"].split(":")[0].split(" (")[0] for row in rows] == [
        "failed",
        "not completed",
        "non-finite interp/perplexity=inf",
    ]
    assert json.loads((tmp_path / "pareto.json").read_text())["frontier"] == []
    text = " ".join(render_summary(summary).split())  # wrapped at 80 columns
    assert "0 on the Pareto frontier" in text and "no completed trial" in text


def test_trial_folders_without_logs_or_state(tmp_path):
    """The launcher's setup (no JSON logger) after a driver died before saving its state."""
    tune_dir = tmp_path / "tune"
    failed = tune_dir / "trainable_1b1b6aa7_2_alpha=-0.5155,prompt_length=3_2026-11-25_10-07-23"
    failed.mkdir(parents=True)
    (failed / "error.txt").write_text("Failure # 1\n\x1b[36mray::ImplicitFunc.train()\x1b[39m\nValueError: nope\n\n")
    done = tune_dir / "trainable_8734c7fb_3_alpha=-0.5241,prompt_length=6_2026-11-25_10-07-42"
    for index, final in ((0, False), (1, True)):
        (done / f"checkpoint_00000{index}").mkdir(parents=True)
        (done / f"checkpoint_00000{index}" / "card.json").write_text(json.dumps({"final": final}))
    records = collect_trials(tmp_path, make_spec(tracking=Tracking(uri=f"sqlite:///{tmp_path / 'none.db'}")))
    assert [(r.trial_id, r.status, r.error) for r in records] == [
        ("1b1b6aa7", "ERROR", "ValueError: nope"),
        ("8734c7fb", "TERMINATED", None),
    ]
    assert records[1].checkpoint == done / "checkpoint_000001" and records[1].objectives == {}


def test_explicit_reference_and_three_objectives(tmp_path):
    spec = make_spec(
        objectives=[
            Objective(keys.TASK_DEV, Mode.MAX),
            Objective(keys.PERPLEXITY, Mode.MIN),
            Objective(keys.DISTANCE_EUCLIDEAN, Mode.MIN),
        ]
    )
    rng = np.random.default_rng(0)
    records = [
        TrialRecord(
            trial_id=f"t{i}",
            status="TERMINATED",
            params={"alpha": float(i)},
            objectives={keys.TASK_DEV: float(d), keys.PERPLEXITY: float(p), keys.DISTANCE_EUCLIDEAN: float(x)},
            prompt_text=f"p{i}",
        )
        for i, (d, p, x) in enumerate(zip(rng.random(12), rng.uniform(5, 500, 12), rng.random(12), strict=True))
    ]
    reference = [0.0, 1000.0, 2.0]
    summary = export_pareto(records, spec, tmp_path, reference=reference)
    directions = [MAX, MIN, MIN]
    assert {r.trial_id for r in summary.frontier} == brute_frontier(records, spec.metric_names, directions)
    points = [[r.objectives[m] for m in spec.metric_names] for r in records]
    assert summary.hypervolume == pytest.approx(hypervolume(points, directions, reference))
    assert summary.reference_source == "given" and (tmp_path / "pareto.png").stat().st_size > 0
    with pytest.raises(ValueError, match="3 objectives"):
        export_pareto(records, spec, tmp_path, reference=[0.0, 1.0])
