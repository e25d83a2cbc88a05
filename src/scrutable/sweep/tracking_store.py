"""The sweep's MLflow store: reaching it, the experiment and parent run, the params, the outcome.

The first of the three parts of the sweep's tracking (`tracking.py` holds the Ray Tune
callback that writes the trial runs, `tracking_repair.py` the repair after a crash or a
resume). Everything here runs on the driver, around `tune.Tuner.fit`:

    uri = default_uri(folder)                      # SQLite under the sweep folder, or a server's URI
    check_reachable(uri)                           # a server that does not answer: one error line
    experiment_id, parent_id = connect(uri, "quickstart", folder)
    log_sweep_params(uri, parent_id, spec.to_dict())        # search.alpha.low, training.steps, ...
    save_views(uri, experiment_id, metrics, directions, searched)
    ...                                            # the trials run (`tracking.MlflowTracking`)
    finish_parent(uri, parent_id, summary, folder=folder, hypervolume=hv, frontier_size=n,
                  files=pareto_files, status="FINISHED")

The default store is SQLite under the sweep folder (MLflow 3 rejects `file:` stores), with
artifacts beside it under folder-relative URIs (`artifacts.py`, so a copied folder keeps
them); on a cluster, give a server URI. The experiment is tagged as a model-training one, so
MLflow 3's UI opens its runs table. Runs are found again by their tags (`TRIAL_TAG`,
`SWEEP_TAG`, `PARENT_TAG`), so a resumed sweep reuses its parent run and trial runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from enum import Enum
from pathlib import Path
from typing import Any

from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.sweep.artifacts import ArtifactWriter, experiment_location
from scrutable.sweep.folder import PARETO_DIR, SPEC_FILE, mlflow_uri
from scrutable.sweep.ui import FRONTIER_TAG, view_tags

RETRY_DELAYS_S = (0.2, 0.5, 1.0)  # backoff between tries of one write; the driver loop waits
PARENT_TAG = "scrutable.role"
TRIAL_TAG = "scrutable.trial_id"
SWEEP_TAG = "scrutable.sweep"
# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces); this
# value makes it a model-training experiment whose home is the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
PARAM_CHARS = 250  # MLflow accepts 6000; longer values make an unreadable table


def default_uri(folder: Path) -> str:
    """The sweep folder's own SQLite store (`folder.mlflow_uri`)."""
    return mlflow_uri(folder)


def mlflow_client(uri: str) -> Any:
    import logging

    import mlflow

    # mlflow sets its logger up on import; its INFO lines (database migrations) are noise here.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return mlflow.MlflowClient(tracking_uri=uri)


def _fail_fast(uri: str) -> None:
    """One try of at most 10 s against a server, instead of MLflow's minutes of retries."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _unreachable(uri: str, exc: Exception) -> UserError:
    return UserError(
        f"MLflow tracking store {uri} is unreachable ({type(exc).__name__}): start the server, fix "
        "tracking.uri, or remove it to use SQLite under the sweep folder"
    )


def check_reachable(uri: str) -> None:
    """A tracking server must answer before anything is created: one line if it does not."""
    _fail_fast(uri)
    try:
        mlflow_client(uri).search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many types for "cannot reach the store"
        raise _unreachable(uri, exc) from None


def connect(uri: str, experiment: str, folder: Path) -> tuple[str, str]:
    """Check the store answers, create the experiment and parent run: (experiment id, parent id).

    Called by the driver before any trial starts. An unreachable server is one error line.
    """
    _fail_fast(uri)
    try:
        client = mlflow_client(uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            location = experiment_location(uri, experiment)
            experiment_id = client.create_experiment(
                experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        else:
            experiment_id = found.experiment_id
            if EXPERIMENT_KIND_TAG not in found.tags:
                client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        parents = client.search_runs(
            [experiment_id], filter_string=f"tags.{PARENT_TAG} = 'parent' and tags.{SWEEP_TAG} = '{folder.name}'"
        )
        if parents:
            return experiment_id, parents[0].info.run_id
        parent = client.create_run(
            experiment_id, run_name=folder.name, tags={PARENT_TAG: "parent", SWEEP_TAG: folder.name}
        )
        return experiment_id, parent.info.run_id
    except Exception as exc:  # MLflow raises many types for "cannot reach the store"
        raise _unreachable(uri, exc) from None


def save_views(uri: str, experiment_id: str, metrics: list[str], directions: list[str], searched: list[str]) -> None:
    """The saved views `scrutable ui` links to (`ui.view_tags`): the runs table with the
    objectives, searched values and prompt as columns, and the frontier's charts. Rewritten at
    every start, so a resumed sweep's views follow its spec."""
    client = mlflow_client(uri)
    for key, value in view_tags(metrics, directions, searched, TRIAL_TAG).items():
        client.set_experiment_tag(experiment_id, key, value)


def mark_frontier(client: Any, parent_id: str, frontier_trials: set[str]) -> None:
    """Tag every trial run of the sweep `pareto_frontier` yes or no (the frontier view's filter)."""
    experiment_id = client.get_run(parent_id).info.experiment_id
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'", page_token=token
        )
        for run in page:
            on = run.data.tags.get(TRIAL_TAG) in frontier_trials
            client.set_tag(run.info.run_id, FRONTIER_TAG, "yes" if on else "no")
        token = page.token
        if not token:
            return


def find_run(uri: str, experiment_id: str, trial_id: str) -> str | None:
    """The child run of a Tune trial, or None (also when the store does not answer)."""
    try:
        found = mlflow_client(uri).search_runs([experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{trial_id}'")
    except Exception:  # tracking never stops a sweep; the link is a convenience
        return None
    return str(found[0].info.run_id) if found else None


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The namespaced, finite numbers of a report (`progress/*` bookkeeping left out)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or key.startswith("progress/"):
            continue
        if "/" in key and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def step_metrics(result: dict[str, Any], timestamp_ms: int) -> list[Any]:
    """The per-step values buffered in a report (`progress/history`) as MLflow metrics."""
    from mlflow.entities import Metric

    raw = result.get(keys.PROGRESS_HISTORY)
    if not isinstance(raw, str):
        return []
    out = []
    for step, values in json.loads(raw):
        out += [Metric(k, float(v), timestamp_ms, int(step)) for k, v in values.items() if math.isfinite(float(v))]
    return out


def param_value(value: Any) -> str:
    """A readable, short param: enums by value, floats to 4 significant digits."""
    if isinstance(value, Enum):
        value = value.value
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= PARAM_CHARS else text[: PARAM_CHARS - 1] + "…"


def flat_params(mapping: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested spec as dotted params: {"search": {"alpha": {"low": 0.03}}} -> search.alpha.low."""
    out: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, name + "."))
        elif value is not None:
            out[name] = param_value(value)
    return out


def log_sweep_params(uri: str, parent_id: str, spec_dict: dict[str, Any]) -> None:
    """The spec as the parent run's params (`smoke` left out); a resumed sweep adds only new ones,
    since MLflow params cannot change."""
    from mlflow.entities import Param

    client = mlflow_client(uri)
    logged = client.get_run(parent_id).data.params
    params = flat_params({k: v for k, v in spec_dict.items() if k != "smoke"})
    new = [Param(k, v) for k, v in params.items() if k not in logged]
    for start in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(parent_id, params=new[start : start + 100])


def config_params(config: Any, searched: Any) -> dict[str, Any]:
    """A method config's fields for every child run's params (steps, batch size, learning rate,
    data seed, the method's own fields); the searched ones come per trial, data_dir (a path,
    not a setting) is left out."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in searched and k != "data_dir"}


def finish_parent(
    uri: str,
    parent_id: str,
    summary: dict[str, Any],
    *,
    folder: Path,
    hypervolume: float | None,
    frontier_size: int,
    files: list[Path],
    status: str | None,
) -> None:
    """The sweep's outcome on the parent run: metrics, the spec and Pareto files, the summary.

    Written for an interrupted sweep too (its partial frontier); the run is only closed
    (`status` FINISHED, or FAILED when every trial failed) when no trial is left to run, so
    a resumed sweep overwrites the files."""
    from mlflow.entities import Metric

    client = mlflow_client(uri)
    writer = ArtifactWriter(client, uri, folder)
    now = int(time.time() * 1000)
    values = {
        keys.PARETO_FRONTIER_SIZE: float(frontier_size),
        keys.SWEEP_TRIALS_COMPLETED: float(summary.get("trials_finished", 0)),
        keys.SWEEP_WALL_TIME: float(summary.get("wall_time_s", 0.0)),
    }
    if hypervolume is not None and math.isfinite(hypervolume):
        values[keys.PARETO_HYPERVOLUME] = float(hypervolume)
    client.log_batch(parent_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])
    frontier = summary.get("pareto", {}).get("frontier", [])
    mark_frontier(client, parent_id, {str(row["trial_id"]) for row in frontier})
    if (folder / SPEC_FILE).is_file():
        writer.file(parent_id, folder / SPEC_FILE)
    for path in files:
        if Path(path).is_file():
            writer.file(parent_id, Path(path), PARETO_DIR)
    writer.json(parent_id, summary, "sweep_summary.json")
    if status is not None:
        client.set_terminated(parent_id, status)
