"""MLflow tracking for a sweep: one parent run, one child run per trial, from the driver.

The driver owns every MLflow write, through a Ray Tune callback (`MlflowTracking`, here):
workers never import MLflow, so no trial can log to a stray `mlflow.db` in its working
directory, and a trial that is retried or resumed finds its child run again by the
`scrutable.trial_id` tag instead of creating a duplicate. The sweep's tracking is in four
modules, one job each, and every name stays importable from here:

    tracking_store.py   the store: reaching it, the experiment and parent run, params, outcome
    tracking.py         the Tune callback writing each trial's run as its reports come
    tracking_repair.py  the repair of every run from Tune's results at the end of a sweep
    tracking_cards.py   what an ended trial leaves for its run: its card or its error

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

    callback = MlflowTracking(uri, experiment_id, parent_id, params, searched, folder)
    tune.Tuner(..., run_config=tune.RunConfig(callbacks=[callback])).fit()
    lost = callback.repair(collect_trials(folder, spec))
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from scrutable.metrics import keys
from scrutable.sweep import tracking_repair
from scrutable.sweep.artifacts import ArtifactWriter
from scrutable.sweep.folder import CARD_FILE, CARD_TEXT_FILE
from scrutable.sweep.tracking_cards import error_reason, final_card, final_card_text
from scrutable.sweep.tracking_store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    PARAM_CHARS,
    PARENT_TAG,
    RETRY_DELAYS_S,
    SWEEP_TAG,
    TRIAL_TAG,
    check_reachable,
    config_params,
    connect,
    default_uri,
    find_run,
    finish_parent,
    flat_params,
    log_sweep_params,
    mark_frontier,
    mlflow_client,
    numeric,
    param_value,
    save_views,
    step_metrics,
)
from scrutable.sweep.ui import PROMPT_TAG

# Every name of the tracking API stays importable from here (`tracking.connect`, ...).
__all__ = ["MlflowTracking", "error_reason", "final_card", "final_card_text", "step_metrics", "numeric"]
__all__ += ["RETRY_DELAYS_S", "PARENT_TAG", "TRIAL_TAG", "SWEEP_TAG", "EXPERIMENT_KIND_TAG", "EXPERIMENT_KIND"]
__all__ += ["PARAM_CHARS", "default_uri", "check_reachable", "connect", "find_run", "mark_frontier", "save_views"]
__all__ += ["param_value", "flat_params", "log_sweep_params", "config_params", "finish_parent"]


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
            self._client = mlflow_client(self.uri)
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
        if existing:  # a resumed driver's trial: replays of its stored steps are written once
            run_id = self.runs[trial_id] = existing[0].info.run_id
            if run_id not in self.written:
                self.written[run_id] = self._stored_steps(run_id, existing[0].data.metrics)
            return run_id
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

    def _stored_steps(self, run_id: str, metrics: dict[str, float]) -> dict[str, int]:
        """Metric key -> the last step the store holds for it. A driver resumed after a kill
        that came between a report and Tune's registration of its checkpoint sees that
        report again (the trial restarts from the checkpoint before it): without these, the
        replay would be a second point at the same step in a fresh driver's run history."""
        return {key: max((m.step for m in self.client.get_metric_history(run_id, key)), default=-1) for key in metrics}

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
                self.reconnect()  # a fresh client after a broken connection
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

    def reconnect(self) -> None:
        """Drop the client: the next write opens a fresh connection (after a broken one)."""
        self._client = None

    def repair(self, records: list[Any]) -> list[str]:
        """Make every child run match Tune's results; return what could not be written
        (`tracking_repair.repair`)."""
        return tracking_repair.repair(self, records)

    def close_finished(self, run_id: str, trial: Any) -> None:
        """Close a finished trial's run with its card (`tracking_cards.py`)."""
        card = final_card(trial)
        if card is not None:
            self.artifacts.json(run_id, card, CARD_FILE)
            self.client.set_tag(run_id, "final_prompt", str(card.get("unembedded_text", ""))[:250])
        card_text = final_card_text(trial)
        if card_text is not None:
            self.artifacts.text(run_id, card_text, CARD_TEXT_FILE)
        self.client.set_terminated(run_id, "FINISHED")

    def close_failed(self, run_id: str, trial: Any) -> None:
        """Close a failed trial's run with the last line of its error."""
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
        self._safely(lambda: self.close_finished(self.run_id(trial), trial), f"end of trial {trial.trial_id}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._safely(lambda: self.close_failed(self.run_id(trial), trial), f"failure of trial {trial.trial_id}")
