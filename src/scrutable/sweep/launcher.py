"""`scrutable sweep`: Ray Tune + Optuna multi-objective search over alpha and prompt length.

setup: validate the spec, create the sweep folder, the MLflow store and parent run, start
Ray and the shared scorer actor. train: Tune runs the method's trainable under an
`OptunaSearch` whose study (SQLite beside the results by default) has one direction per
objective; `metric`/`mode` go to the searcher only, never to `TuneConfig`, which would
silently collapse the search to one objective. cleanup: stop the actor, export the Pareto
frontier, close the parent run, print a one-screen summary.

Ctrl-C (or SIGTERM) stops the sweep cleanly; `scrutable sweep SPEC --resume` then
finishes it from Tune's experiment state without re-running finished trials, and the
interrupted trials continue from their checkpoints.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.sweep.spec import Sampler, SweepSpec

QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # the new output engine ignores our reporter and prints tracebacks
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def make_searcher(spec: SweepSpec, folder: Path) -> Any:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space: dict[str, Any] = {}
    for name, dim in spec.search.items():
        if spec.sampler is Sampler.GRID or dim.values is not None:
            space[name] = CategoricalDistribution(dim.grid())
        elif dim.integer and not dim.log:
            low, high = dim.encoded_bounds()
            space[name] = IntDistribution(int(low), int(high))
        else:
            space[name] = FloatDistribution(*dim.encoded_bounds())
    samplers = {
        Sampler.TPE: lambda: optuna.samplers.TPESampler(seed=spec.seed, multivariate=True),
        Sampler.NSGA2: lambda: optuna.samplers.NSGAIISampler(seed=spec.seed),
        Sampler.GP: lambda: optuna.samplers.GPSampler(seed=spec.seed),
        Sampler.RANDOM: lambda: optuna.samplers.RandomSampler(seed=spec.seed),
        Sampler.GRID: lambda: optuna.samplers.GridSampler(
            {name: dim.grid() for name, dim in spec.search.items()}, seed=spec.seed
        ),
    }
    storage_url = spec.optuna_storage or f"sqlite:///{folder / 'optuna.db'}"
    baseline = spec.baseline_point()
    return OptunaSearch(
        space=space,
        metric=spec.metric_names,
        mode=spec.directions,
        sampler=samplers[spec.sampler](),
        storage=optuna.storages.RDBStorage(storage_url),  # OptunaSearch wants an object, not a URL
        study_name=spec.name,
        points_to_evaluate=[baseline] if baseline else None,
    )


class LiveTable:
    """A concise trial table, reprinted when something changed (at most every few seconds)."""

    def __init__(self, spec: SweepSpec, every_s: float = 5.0) -> None:
        self.spec = spec
        self.every_s = every_s
        self.rows: dict[str, dict[str, Any]] = {}
        self.finished: set[str] = set()
        self.failed: dict[str, str] = {}
        self.last_print = 0.0

    def update(self, trial: Any, status: str, result: dict[str, Any] | None = None, force: bool = False) -> None:
        row = self.rows.setdefault(trial.trial_id, {})
        sampled = {name: trial.config.get(name) for name in self.spec.search}
        row.update(self.spec.decode(sampled), status=status)
        if result is not None:
            row.update({m: result.get(m) for m in self.spec.metric_names}, step=result.get(keys.TRAIN_STEP))
        if force or time.monotonic() - self.last_print > self.every_s:
            print(self.render(), flush=True)
            self.last_print = time.monotonic()

    def render(self) -> str:
        params = list(self.spec.search)
        columns = ["trial", *params, "step", *self.spec.metric_names, "status"]
        lines = ["  ".join(f"{c:>14}" for c in columns)]
        for trial_id, row in self.rows.items():
            cells = [trial_id[-14:]] + [_fmt(row.get(c)) for c in columns[1:]]
            lines.append("  ".join(f"{c:>14}" for c in cells))
        done = len(self.finished) + len(self.failed)
        lines.append(f"{done}/{self.spec.trials} trials done ({len(self.failed)} failed)")
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _callback_class() -> Any:
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self, table: LiveTable) -> None:
            self.table = table

        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.table.update(trial, "RUNNING", force=True)

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            self.table.update(trial, "RUNNING", result)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.table.finished.add(trial.trial_id)
            self.table.update(trial, "DONE", force=True)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            from scrutable.sweep.tracking import error_reason

            reason = error_reason(trial)
            self.table.failed[trial.trial_id] = reason
            self.table.update(trial, "FAILED", force=True)
            print(f"trial {trial.trial_id} failed: {reason}", flush=True)

    return Progress


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Tune stops cleanly on SIGINT only; treat SIGTERM (kill, a scheduler) the same way."""
    previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_ray(spec: SweepSpec) -> None:
    import ray

    from scrutable.sweep.scorer_actor import NAMESPACE

    if ray.is_initialized():
        return
    # Before ray.init: the cluster and its workers must agree (e.g. on RAY_AUTH_MODE), or
    # worker start-up fails.
    os.environ.update(QUIET_ENV)
    env = {k: v for k, v in os.environ.items() if k.startswith(("SCRUTABLE_", "HF_", "TRANSFORMERS_"))}
    ray.init(
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {**env, **QUIET_ENV}},
    )


def run_sweep(spec: SweepSpec, *, resume: bool = False) -> dict[str, Any]:
    import ray
    from ray import tune

    from scrutable.sweep import tracking
    from scrutable.sweep.export import collect_trials, export_pareto, render_summary
    from scrutable.sweep.scorer_actor import start_scorer
    from scrutable.trainables.tune_adapter import SPEC_KEY, trainable

    # --- setup --------------------------------------------------------------------------
    os.environ.update(QUIET_ENV)
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    folder = spec.folder()
    tune_dir = folder / "tune"
    if resume and not tune.Tuner.can_restore(str(tune_dir)):
        raise UserError(f"nothing to resume in {folder}: run the sweep without --resume")
    if not resume and tune_dir.exists():
        raise UserError(
            f"{folder} already holds sweep '{spec.name}': pass --resume to finish it, or change name/storage"
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    uri = spec.tracking.uri or tracking.default_uri(folder)
    experiment_id, parent_id = tracking.connect(uri, spec.tracking.experiment or spec.name, folder)
    start_ray(spec)
    started = time.monotonic()
    actor = start_scorer(
        spec.name,
        spec.scorer,
        spec.fixed_config().get("data_dir"),
        num_gpus=spec.scorer_resources.gpu,
        max_batch=spec.scorer_resources.max_batch,
        max_wait_ms=spec.scorer_resources.max_wait_ms,
    )
    table = LiveTable(spec)
    params = {
        "method": spec.method,
        "task": spec.task,
        "model": spec.model,
        "scorer": spec.scorer,
        "seed": spec.seed,
        "sampler": spec.sampler.value,
    }
    callbacks = [tracking.MlflowTracking(uri, experiment_id, parent_id, params), _callback_class()(table)]
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    wrapped = tune.with_resources(trainable, resources)

    # --- sweep --------------------------------------------------------------------------
    if resume:
        tuner = tune.Tuner.restore(str(tune_dir), trainable=wrapped, resume_errored=True)
    else:
        tuner = tune.Tuner(
            wrapped,
            param_space={SPEC_KEY: spec.to_dict()},
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(spec, folder),
                num_samples=spec.trials,
                max_concurrent_trials=spec.concurrency,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(folder),
                callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=0,
            ),
        )
    with sigterm_as_interrupt():
        tuner.fit()

    # --- cleanup ------------------------------------------------------------------------
    stats = ray.get(actor.batch_stats.remote())
    ray.kill(actor, no_restart=True)
    elapsed = time.monotonic() - started
    records = collect_trials(folder, spec)
    finished = sum(r.status in ("TERMINATED", "ERROR") for r in records)
    summary_data = export_pareto(records, spec, folder / "pareto")
    summary: dict[str, Any] = {
        "sweep": spec.name,
        "folder": str(folder),
        "wall_time_s": round(elapsed, 1),
        "trials_finished": finished,
        "trials_planned": spec.trials,
        "scorer": stats,
        "tracking_uri": uri,
        "optuna_storage": spec.optuna_storage or f"sqlite:///{folder / 'optuna.db'}",
        "mlflow_failed_writes": callbacks[0].failed_writes,
    }
    print(render_summary(summary_data))
    print(
        f"scorer actor: {stats['batches']} batches, mean batch {stats['mean_batch_size']:.2f} sequences, "
        f"{stats['mixed_batch_share']:.0%} mixed trials"
    )
    interrupted = finished < min(spec.trials, len(records)) or len(records) < spec.trials
    if interrupted:
        print(f"sweep interrupted after {elapsed:.0f} s: run `scrutable sweep <spec> --resume` to finish it")
    else:
        tracking.finish_parent(uri, parent_id, summary)
        print(f"sweep finished in {elapsed:.0f} s; MLflow: scrutable ui {folder}")
    summary["interrupted"] = interrupted
    return summary
