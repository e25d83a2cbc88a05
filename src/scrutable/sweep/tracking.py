"""MLflow tracking for a sweep: one parent run, one child run per trial, from the driver.

The driver owns every MLflow write, through a Ray Tune callback: workers never import
MLflow, so no trial can log to a stray `mlflow.db` in its working directory, and a trial
that is retried or resumed finds its child run again by the `scrutable.trial_id` tag
instead of creating a duplicate. The default store is SQLite under the sweep folder
(MLflow 3 rejects `file:` stores) with artifacts beside it; on a cluster, give a server URI.

Child runs carry params (alpha, prompt length, method, model, scorer, seed, ...), step
metrics under the namespaced keys, the prompt text at every evaluation
(`prompts/step_000040.txt`) and the final interpretability card (`card.json`,
`card.txt`), with tags for the compare view (method, task, final prompt).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from scrutable.errors import UserError
from scrutable.metrics import keys

PARENT_TAG = "scrutable.role"
TRIAL_TAG = "scrutable.trial_id"
SWEEP_TAG = "scrutable.sweep"


def default_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def _client(uri: str) -> Any:
    import logging

    import mlflow

    # mlflow sets its logger up on import; its INFO lines (database migrations) are noise here.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return mlflow.MlflowClient(tracking_uri=uri)


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
            artifacts = (folder / "mlartifacts").resolve()
            location = artifacts.as_uri() if uri.startswith("sqlite:") else None
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        else:
            experiment_id = found.experiment_id
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


def find_run(uri: str, experiment_id: str, trial_id: str) -> str | None:
    """The child run of a Tune trial, or None (also when the store does not answer)."""
    try:
        found = _client(uri).search_runs([experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{trial_id}'")
    except Exception:  # tracking never stops a sweep; the link is a convenience
        return None
    return str(found[0].info.run_id) if found else None


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if "/" in key and math.isfinite(float(value)):
            out[key] = float(value)
    return out


class MlflowTracking(Callback):
    """Ray Tune callback writing the sweep's MLflow runs (driver side)."""

    def __init__(
        self, uri: str, experiment_id: str, parent_id: str, params: dict[str, Any], searched: list[str]
    ) -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_id = parent_id
        self.params = params  # sweep-level params logged on every child
        self.searched = searched  # names of the searched values, decoded in the trial config
        self.runs: dict[str, str] = {}
        self._client: Any = None
        self.failed_writes = 0

    def __getstate__(self) -> dict[str, Any]:  # pickled into Tune's experiment state
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

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

        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def _safely(self, action: Any) -> None:
        # Tracking must never kill the sweep: Tune's own results stay complete on disk.
        try:
            action()
        except Exception:
            self.failed_writes += 1

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._safely(lambda: self.run_id(trial))

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        def write() -> None:
            from mlflow.entities import Metric

            run_id = self.run_id(trial)
            step = int(result.get(keys.TRAIN_STEP, iteration))
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, step) for k, v in numeric(result).items()]
            self.client.log_batch(run_id, metrics=metrics)
            if keys.PROMPT_TEXT in result:
                self.client.log_text(run_id, str(result[keys.PROMPT_TEXT]), f"prompts/step_{step:06d}.txt")
                self.client.set_tag(run_id, "prompt", str(result[keys.PROMPT_TEXT])[:250])

        self._safely(write)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        def write() -> None:
            run_id = self.run_id(trial)
            card = final_card(trial)
            if card is not None:
                self.client.log_dict(run_id, card, "card.json")
                self.client.set_tag(run_id, "final_prompt", str(card.get("unembedded_text", ""))[:250])
            self.client.set_terminated(run_id, "FINISHED")

        self._safely(write)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        def write() -> None:
            run_id = self.run_id(trial)
            reason = error_reason(trial)
            self.client.set_tag(run_id, "error", reason[:5000])
            self.client.set_terminated(run_id, "FAILED")

        self._safely(write)


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


def error_reason(trial: Any) -> str:
    """The last line of the trial's error: the `UserError`/exception message, not a traceback."""
    path = getattr(trial, "error_file", None)
    text = ""
    if path and Path(path).is_file():
        text = Path(path).read_text()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def finish_parent(uri: str, parent_id: str, summary: dict[str, Any]) -> None:
    client = _client(uri)
    client.log_dict(parent_id, summary, "sweep_summary.json")
    client.set_terminated(parent_id, "FINISHED")
