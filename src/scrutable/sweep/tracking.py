"""MLflow tracking for a sweep: one parent run, one child run per trial, from the driver.

The driver owns every MLflow write, through a Ray Tune callback: workers never import
MLflow, so no trial can log to a stray `mlflow.db` in its working directory, and a trial
that is retried or resumed finds its child run again by the `scrutable.trial_id` tag
instead of creating a duplicate. The default store is SQLite under the sweep folder
(MLflow 3 rejects `file:` stores) with artifacts beside it under folder-relative URIs
(`sweep/artifacts.py`, so a copied folder keeps them); on a cluster, give a server URI.
The experiment is tagged as a model-training one, so MLflow 3's UI opens its runs table.

The parent run holds the sweep: the spec as params (`search.alpha.low`, `training.steps`,
...), and at the end the hypervolume, frontier size and trial count as metrics and
`spec.yaml` plus the Pareto files (`pareto/pareto.{png,html,csv,json}`, `trials.csv`) as
artifacts. Child runs carry the trial's whole method config as params (steps, batch size,
learning rate, data seed, alpha, prompt length and the method's own fields), the loss (and
reward) of every step (`step/*`), the evaluation metrics under the namespaced keys, the
prompt text at every evaluation (`prompts/step_000040.txt`) and the final interpretability
card (`card.json`, `card.txt`), with tags for the compare view (method, task, final prompt).
Nothing is dropped silently: a write that fails is retried with backoff (`RETRY_DELAYS_S`),
then buffered and replayed in order once the store answers again; at the end of the sweep
`MlflowTracking.repair` compares every child run with Tune's results (which hold every
report) and writes what is missing, and the summary lists whatever still could not be
written.
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

from ray.tune import Callback

from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.sweep.artifacts import ArtifactWriter, experiment_location
from scrutable.sweep.ui import FRONTIER_TAG, PROMPT_TAG, view_tags

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
    return f"sqlite:///{folder / 'mlflow.db'}"


def _client(uri: str) -> Any:
    import logging

    import mlflow

    # mlflow sets its logger up on import; its INFO lines (database migrations) are noise here.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return mlflow.MlflowClient(tracking_uri=uri)


def check_reachable(uri: str) -> None:
    """A tracking server must answer before anything is created: one line if it does not."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many types for "cannot reach the store"
        raise UserError(
            f"MLflow tracking store {uri} is unreachable ({type(exc).__name__}): start the server, fix "
            "tracking.uri, or remove it to use SQLite under the sweep folder"
        ) from None


def connect(uri: str, experiment: str, folder: Path) -> tuple[str, str]:
    """Check the store answers, create the experiment and parent run: (experiment id, parent id).

    Called by the driver before any trial starts. An unreachable server is one error line.
    """
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        client = _client(uri)
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
        raise UserError(
            f"MLflow tracking store {uri} is unreachable ({type(exc).__name__}): start the server, fix "
            "tracking.uri, or remove it to use SQLite under the sweep folder"
        ) from None


def save_views(uri: str, experiment_id: str, metrics: list[str], directions: list[str], searched: list[str]) -> None:
    """The saved views `scrutable ui` links to (`ui.view_tags`): the runs table with the
    objectives, searched values and prompt as columns, and the frontier's charts. Rewritten at
    every start, so a resumed sweep's views follow its spec."""
    client = _client(uri)
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
        found = _client(uri).search_runs([experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{trial_id}'")
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

    client = _client(uri)
    logged = client.get_run(parent_id).data.params
    params = flat_params({k: v for k, v in spec_dict.items() if k != "smoke"})
    new = [Param(k, v) for k, v in params.items() if k not in logged]
    for start in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(parent_id, params=new[start : start + 100])


class MlflowTracking(Callback):
    """Ray Tune callback writing the sweep's MLflow runs (driver side)."""

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        parent_id: str,
        params: dict[str, Any],
        searched: list[str],
        folder: Path,
    ) -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_id = parent_id
        self.params = params  # sweep-level params logged on every child
        self.searched = searched  # names of the searched values, decoded in the trial config
        self.folder = folder  # where proxied artifacts are written (`sweep/artifacts.py`)
        self.runs: dict[str, str] = {}
        self._client: Any = None
        self._artifacts: ArtifactWriter | None = None
        self.failed_writes = 0  # writes that failed even after retries (then buffered)
        self.retried_writes = 0  # tries that failed and were retried
        self.repaired_writes = 0  # steps written by `repair` from Tune's results
        self.pending: list[tuple[str, Any]] = []  # (description, write) waiting for the store
        # run id -> metric key -> the last step written: a trial retried from an earlier
        # checkpoint reports its steps after that checkpoint again; each is one point, not two.
        self.written: dict[str, dict[str, int]] = {}

    def __getstate__(self) -> dict[str, Any]:  # pickled into Tune's experiment state
        state = dict(self.__dict__)
        state["_client"] = state["_artifacts"] = None
        state["pending"] = []  # closures over live trials; `repair` rebuilds from Tune's results
        return state

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

    @property
    def artifacts(self) -> ArtifactWriter:
        if self._artifacts is None:
            self._artifacts = ArtifactWriter(self.client, self.uri, self.folder)
        return self._artifacts

    def run_id(self, trial: Any) -> str:
        trial_id = trial.trial_id
        if trial_id in self.runs:
            return self.runs[trial_id]
        existing = self.client.search_runs([self.experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{trial_id}'")
        if existing:
            self.runs[trial_id] = existing[0].info.run_id
            return self.runs[trial_id]
        decoded = {name: trial.config[name] for name in self.searched if name in trial.config}
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{trial_id} "
            + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in decoded.items()),
            tags={
                "mlflow.parentRunId": self.parent_id,
                TRIAL_TAG: trial_id,
                SWEEP_TAG: str(self.params.get("sweep", "")),
                "method": str(self.params.get("method", "")),
                "task": str(self.params.get("task", "")),
            },
        )
        self.runs[trial_id] = run.info.run_id
        params = {**self.params, **decoded}
        from mlflow.entities import Param

        logged = [Param(k, param_value(v)) for k, v in params.items()]
        for start in range(0, len(logged), 100):  # MLflow's batch limit for params
            self.client.log_batch(run.info.run_id, params=logged[start : start + 100])
        return run.info.run_id

    def _safely(self, action: Any, what: str) -> None:
        """Write now (retrying with backoff), or buffer the write behind earlier failed ones.

        Tracking must never stop the sweep: Tune's own results stay complete on disk and
        `repair` fills MLflow from them at the end."""
        self.flush()
        if self.pending:  # keep the order: a later step never lands before an earlier one
            self.pending.append((what, action))
            return
        if not self._try(action, RETRY_DELAYS_S):
            self.failed_writes += 1
            self.pending.append((what, action))

    def _try(self, action: Any, delays: tuple[float, ...]) -> bool:
        for delay in (*delays, None):
            try:
                action()
                return True
            except Exception:
                self._client = None  # a fresh client after a broken connection
                if delay is None:
                    return False
                self.retried_writes += 1
                time.sleep(delay)
        return False

    def flush(self, delays: tuple[float, ...] = ()) -> None:
        """Replay buffered writes in order; stop at the first that still fails."""
        while self.pending:
            _, action = self.pending[0]
            if not self._try(action, delays):
                return
            self.pending.pop(0)

    def repair(self, records: list[Any]) -> list[str]:
        """Make every child run match Tune's results; return what could not be written.

        `records` are `TrialRecord`s (trial id, status, trial folder, checkpoint). For each
        trial: the run exists, every reported step's metrics and prompt are logged, and a
        finished or failed trial's run is closed with its card or error."""
        self.flush(RETRY_DELAYS_S)
        self.pending.clear()  # replaced by the comparison below, which covers them
        lost: list[str] = []
        for record in records:
            try:
                self._repair_one(record)
            except Exception as exc:
                lost.append(f"trial {record.trial_id}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return lost

    def _repair_one(self, record: Any) -> None:
        from mlflow.entities import Metric

        trial = _RecordTrial(record)
        run_id = self._with_retries(lambda: self.run_id(trial))
        logged = {
            int(m.step) for m in self._with_retries(lambda: self.client.get_metric_history(run_id, keys.TRAIN_STEP))
        }
        rows = _result_rows(record.path)
        for row in rows:
            step = int(row.get(keys.TRAIN_STEP, -1))
            if step < 0 or step in logged:
                continue
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, step) for k, v in numeric(row).items()]
            self._with_retries(lambda m=metrics: self.client.log_batch(run_id, metrics=m))
            if keys.PROMPT_TEXT in row:
                text = str(row[keys.PROMPT_TEXT])
                self._with_retries(lambda t=text, s=step: self.artifacts.text(run_id, t, f"prompts/step_{s:06d}.txt"))
            self.repaired_writes += 1
        run = self._with_retries(lambda: self.client.get_run(run_id))
        if run.info.status != "RUNNING":
            return
        if record.status == "TERMINATED":
            self._with_retries(lambda: self._close_finished(run_id, trial))
        elif record.status == "ERROR":
            self._with_retries(lambda: self._close_failed(run_id, trial))

    def _with_retries(self, action: Any) -> Any:
        for delay in (*RETRY_DELAYS_S, None):
            try:
                return action()
            except Exception:
                self._client = None
                if delay is None:
                    raise
                time.sleep(delay)
        return None

    def _close_finished(self, run_id: str, trial: Any) -> None:
        card = final_card(trial)
        if card is not None:
            self.artifacts.json(run_id, card, "card.json")
            self.client.set_tag(run_id, "final_prompt", str(card.get("unembedded_text", ""))[:250])
        card_text = final_card_text(trial)
        if card_text is not None:
            self.artifacts.text(run_id, card_text, "card.txt")
        self.client.set_terminated(run_id, "FINISHED")

    def _close_failed(self, run_id: str, trial: Any) -> None:
        self.client.set_tag(run_id, "error", error_reason(trial)[:5000])
        self.client.set_terminated(run_id, "FAILED")

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._safely(lambda: self.run_id(trial), f"start of trial {trial.trial_id}")

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        # One timestamp for every try: a retried write whose first try reached the store is
        # then the same metric row, which the store keeps once, not a second point.
        now = int(time.time() * 1000)

        def write() -> None:
            from mlflow.entities import Metric

            run_id = self.run_id(trial)
            metrics = step_metrics(result, now)
            if keys.TRAIN_STEP in result:  # an evaluation (a step report holds only progress/*)
                step = int(result[keys.TRAIN_STEP])
                metrics += [Metric(k, v, now, step) for k, v in numeric(result).items()]
            written = self.written.setdefault(run_id, {})
            metrics = [m for m in metrics if m.step > written.get(m.key, -1)]  # a retry's repeats: once
            for start in range(0, len(metrics), 1000):  # MLflow's batch limit
                self.client.log_batch(run_id, metrics=metrics[start : start + 1000])
            for metric in metrics:
                written[metric.key] = max(metric.step, written.get(metric.key, -1))
            if keys.PROMPT_TEXT in result and keys.TRAIN_STEP in result:
                step = int(result[keys.TRAIN_STEP])
                self.artifacts.text(run_id, str(result[keys.PROMPT_TEXT]), f"prompts/step_{step:06d}.txt")
                self.client.set_tag(run_id, PROMPT_TAG, str(result[keys.PROMPT_TEXT])[:250])

        self._safely(write, f"trial {trial.trial_id} step {result.get(keys.TRAIN_STEP)}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._safely(lambda: self._close_finished(self.run_id(trial), trial), f"end of trial {trial.trial_id}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._safely(lambda: self._close_failed(self.run_id(trial), trial), f"failure of trial {trial.trial_id}")


class _RecordTrial:
    """A `TrialRecord` read from disk, shaped like the Tune trial the callbacks receive."""

    def __init__(self, record: Any) -> None:
        self.trial_id = record.trial_id
        self.config = _trial_config(record.path)
        self.checkpoint = _Checkpoint(record.checkpoint) if record.checkpoint is not None else None
        error = record.path / "error.txt" if record.path is not None else None
        self.error_file = str(error) if error is not None and error.is_file() else None


class _Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = str(path)


def _trial_config(path: Path | None) -> dict[str, Any]:
    params = path / "params.json" if path is not None else None
    if params is None or not params.is_file():
        return {}
    loaded: dict[str, Any] = json.loads(params.read_text())
    return loaded


def _result_rows(path: Path | None) -> list[dict[str, Any]]:
    results = path / "result.json" if path is not None else None
    if results is None or not results.is_file():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def final_card(trial: Any) -> dict[str, Any] | None:
    checkpoint = trial.checkpoint
    if checkpoint is None:
        return None
    # Through the checkpoint's own filesystem: with `storage: s3://...` it lives in the bucket.
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/card.json") as stream:
            loaded: dict[str, Any] = json.loads(stream.read())
    except OSError:  # no card in this checkpoint (pyarrow raises FileNotFoundError, an OSError)
        return None
    return loaded


def final_card_text(trial: Any) -> str | None:
    """The rendered card the trainable wrote beside card.json (`card.txt`)."""
    checkpoint = trial.checkpoint
    if checkpoint is None:
        return None
    try:  # through the checkpoint's filesystem, like `final_card`
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/card.txt") as stream:
            return str(stream.read().decode())
    except OSError:
        return None


def config_params(config: Any, searched: Any) -> dict[str, Any]:
    """A method config's fields for every child run's params (steps, batch size, learning rate,
    data seed, the method's own fields); the searched ones come per trial, data_dir (a path,
    not a setting) is left out."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in searched and k != "data_dir"}


def error_reason(trial: Any) -> str:
    """The last line of the trial's error: the `UserError`/exception message, not a traceback."""
    path = getattr(trial, "error_file", None)
    text = ""
    if path and Path(path).is_file():
        text = Path(path).read_text()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


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

    client = _client(uri)
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
    if (folder / "spec.yaml").is_file():
        writer.file(parent_id, folder / "spec.yaml")
    for path in files:
        if Path(path).is_file():
            writer.file(parent_id, Path(path), "pareto")
    writer.json(parent_id, summary, "sweep_summary.json")
    if status is not None:
        client.set_terminated(parent_id, status)
