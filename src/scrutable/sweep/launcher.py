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
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.sweep.spec import Sampler, SweepSpec

TUNE_TRIAL_ATTR = "tune_trial_id"
MLFLOW_RUN_ATTR = "mlflow_run_id"
QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # the new output engine ignores our reporter and prints tracebacks
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def optuna_storage_url(spec: SweepSpec, folder: Path) -> str:
    return spec.optuna_storage or f"sqlite:///{folder / 'optuna.db'}"


def make_searcher(spec: SweepSpec, folder: Path, tracking: tuple[str, str] | None = None) -> Any:
    """Ray's OptunaSearch over `spec.space` (define-by-run: decoded values in every trial's
    config and the study's user attributes), on a study created here so that it carries
    the objectives' names (`study.metric_names`) for optuna-dashboard and `load_study`."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = spec.space
    samplers = {
        Sampler.TPE: lambda: optuna.samplers.TPESampler(seed=spec.seed, multivariate=True),
        Sampler.NSGA2: lambda: optuna.samplers.NSGAIISampler(seed=spec.seed),
        Sampler.GP: lambda: optuna.samplers.GPSampler(seed=spec.seed),
        Sampler.RANDOM: lambda: optuna.samplers.RandomSampler(seed=spec.seed),
        Sampler.GRID: lambda: optuna.samplers.GridSampler(
            {name: space.grid_values(name) for name in spec.search}, seed=spec.seed
        ),
    }
    storage = optuna.storages.RDBStorage(optuna_storage_url(spec, folder))  # OptunaSearch wants an object
    study = optuna.create_study(
        storage=storage,
        study_name=spec.name,
        directions=["maximize" if d == "max" else "minimize" for d in spec.directions],
        load_if_exists=True,
    )
    with warnings.catch_warnings():  # "experimental since 3.2": stable in every release since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(spec.metric_names)
    baseline = space.baseline_point()
    searcher = _searcher_class()(
        space=space.define,
        metric=spec.metric_names,
        mode=spec.directions,
        sampler=samplers[spec.sampler](),
        storage=storage,
        study_name=spec.name,
        points_to_evaluate=[baseline] if baseline else None,
    )
    searcher.tracking = tracking
    return searcher


def _searcher_class() -> Any:
    import pickle

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from scrutable.sweep.tracking import find_run

    class LinkedOptunaSearch(OptunaSearch):
        """OptunaSearch whose study trials name their Tune trial and their prompt, and whose
        saved state names no storage, so a resumed copy of a sweep folder stays a copy.

        Ray's `OptunaSearch.save` pickles the study with its storage URL, and `restore`
        brings that URL back: a copied or moved sweep folder would then write into the
        original's `optuna.db` (unpickling alone opens it). Here the saved state keeps the
        sampler, the pending trials' ids and the bookkeeping, and `restore` binds them to
        the study (and MLflow link) of the searcher built for the folder being resumed.
        """

        _BOUND_TO_FOLDER = ("_ot_study", "_storage", "tracking")

        def save(self, checkpoint_path: str) -> None:
            state = {k: v for k, v in self.__dict__.items() if k not in self._BOUND_TO_FOLDER}
            state["_ot_trials"] = {trial_id: trial._trial_id for trial_id, trial in self._ot_trials.items()}
            with open(checkpoint_path, "wb") as handle:
                pickle.dump(state, handle)

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "rb") as handle:
                state = pickle.load(handle)
            trial_ids = state.pop("_ot_trials")
            self.__dict__.update(state)
            assert self._storage is not None  # make_searcher always passes the folder's storage
            study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler)
            self._ot_study = study  # type: ignore[assignment]
            self._ot_trials = {
                trial_id: optuna.trial.Trial(study, optuna_id) for trial_id, optuna_id in trial_ids.items()
            }

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            params: dict[str, Any] | None = super().suggest(trial_id)
            if trial_id in self._ot_trials:
                self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            return params

        tracking: tuple[str, str] | None = None  # (MLflow URI, experiment id) to link runs

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            # Before `tell`: a finished Optuna trial takes no more attributes.
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and trial_id not in self._completed_trials:
                # A driver killed after `tell` but before saving this searcher's state: the
                # study already holds the trial's record; a second one would fail (or duplicate).
                study: Any = self._ot_study
                finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
                if ot_trial.number in finished:
                    self._completed_trials.add(trial_id)
                    return
                for key in (keys.PROMPT_TEXT, keys.PROMPT_TOKEN_IDS, keys.TASK_TEST):
                    if result and result.get(key) is not None:
                        ot_trial.set_user_attr(key, result[key])
                run_id = None if self.tracking is None else find_run(*self.tracking, trial_id)
                if run_id is not None:
                    ot_trial.set_user_attr(MLFLOW_RUN_ATTR, run_id)
            super().on_trial_complete(trial_id, result=result, error=error)

    return LinkedOptunaSearch


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
        row.update(self.spec.space.decoded(trial.config), status=status)
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
        # "local": always start this sweep's own Ray. Without an address, ray.init joins
        # the newest cluster recorded in /tmp/ray (another user's sweep on this machine).
        address="local",
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {**env, **QUIET_ENV}},
    )


def check_storage(folder: Path) -> None:
    """The sweep folder must be creatable and writable: checked before anything is written."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"storage {existing} is a file, not a folder: set storage to a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"storage {existing} is not writable: set storage to a folder you can write")


def make_search_alg(spec: SweepSpec, folder: Path, tracking: tuple[str, str] | None = None) -> Any:
    """Tune's search chain (generator, concurrency limit, Optuna), re-bound to `folder` on resume.

    On restore, Ray's `SearchGenerator` brings back its pickled `Experiment`, whose storage
    (where new trials are created) and trial config name the folder that first ran the
    sweep, and the `ConcurrencyLimiter` brings back the old limit. Here both are replaced
    by this run's: new trials land in `folder`, with this run's concurrency (the spec itself
    reaches trials through the trainable, `with_spec`, which `Tuner.restore` takes fresh)."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    limiter = ConcurrencyLimiter(make_searcher(spec, folder, tracking), max_concurrent=spec.concurrency)

    class FolderSearchGenerator(SearchGenerator):
        def restore_from_dir(self, dirpath: str) -> None:
            super().restore_from_dir(dirpath)
            experiment: Any = self._experiment
            old = experiment.storage
            storage = StorageContext(storage_path=str(folder), experiment_dir_name=old.experiment_dir_name)
            storage._timestamp = old._timestamp  # the restored run keeps its staging folder
            experiment.storage = storage
            experiment.spec["storage"] = storage
            limiter.max_concurrent = spec.concurrency  # restored with the old limit

    return FolderSearchGenerator(limiter)


def build_tuner(
    spec: SweepSpec,
    folder: Path,
    trainable: Any,
    callbacks: list[Any],
    tracking: tuple[str, str] | None = None,
    *,
    resume: bool,
) -> Any:
    """A Tuner for `folder`, built from this run's objects even when resuming.

    `Tuner.restore` would bring back the callbacks and searcher pickled in `tuner.pkl`, with
    the absolute paths of the folder that first ran the sweep. Building a Tuner first
    rewrites `tuner.pkl` with fresh ones bound to `folder`; `restore` then reads that file,
    continues the trials from the experiment state and restores the searcher's state into
    the fresh searcher (`LinkedOptunaSearch.restore`)."""
    from ray import tune

    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_search_alg(spec, folder, tracking),  # limits concurrency itself
            num_samples=spec.trials,
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
    if not resume:
        return tuner
    return tune.Tuner.restore(str(folder / "tune"), trainable=trainable, resume_errored=True)


def run_sweep(spec: SweepSpec, *, resume: bool = False, trust_folder: bool = False) -> dict[str, Any]:
    import ray
    from ray import tune

    from scrutable.sweep import resume as resuming
    from scrutable.sweep import tracking, trust
    from scrutable.sweep.frontier import export_pareto, render_summary
    from scrutable.sweep.results import collect_trials
    from scrutable.sweep.scorer_actor import start_scorer
    from scrutable.sweep.trainable import with_spec

    # --- setup --------------------------------------------------------------------------
    os.environ.update(QUIET_ENV)
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    folder = spec.folder()
    tune_dir = folder / "tune"
    check_storage(folder)
    if resume:
        if not tune.Tuner.can_restore(str(tune_dir)):
            raise UserError(f"nothing to resume in {folder}: run the sweep without --resume")
        resuming.check_compatible(resuming.stored_spec(folder), spec, folder)  # before spec.yaml changes
        if not trust_folder:
            trust.verify(tune_dir)  # before Ray unpickles anything from the folder
    elif tune_dir.exists():
        raise UserError(
            f"{folder} already holds sweep '{spec.name}': pass --resume to finish it, or change name/storage"
        )
    uri = spec.tracking.uri or tracking.default_uri(folder)
    if spec.tracking.uri:  # a server: check it answers before creating anything on disk
        tracking.check_reachable(uri)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
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
        "sweep": spec.name,
        "method": spec.method,
        "task": spec.task,
        "model": spec.model,
        "scorer": spec.scorer,
        "seed": spec.seed,
        "sampler": spec.sampler.value,
    }
    mlflow_callback = tracking.MlflowTracking(uri, experiment_id, parent_id, params, list(spec.search))
    callbacks = [mlflow_callback, _callback_class()(table), trust.signer_callback(tune_dir)]
    wrapped = with_spec(spec.to_dict(), {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})

    # --- sweep --------------------------------------------------------------------------
    tuner = build_tuner(spec, folder, wrapped, callbacks, (uri, experiment_id), resume=resume)
    try:
        with sigterm_as_interrupt():
            tuner.fit()
    finally:
        trust.sign(tune_dir)

    # --- cleanup ------------------------------------------------------------------------
    stats = ray.get(actor.batch_stats.remote())
    ray.kill(actor, no_restart=True)
    elapsed = time.monotonic() - started
    records = collect_trials(folder, spec)
    lost = mlflow_callback.repair(records)  # fill MLflow from Tune's results
    finished = sum(r.status in ("TERMINATED", "ERROR") for r in records)
    failed = sum(r.status == "ERROR" for r in records)
    summary_data = export_pareto(records, spec, folder / "pareto")
    summary: dict[str, Any] = {
        "sweep": spec.name,
        "folder": str(folder),
        "wall_time_s": round(elapsed, 1),
        "trials_finished": finished,
        "trials_failed": failed,
        "trials_planned": spec.trials,
        "scorer": stats,
        "tracking_uri": uri,
        "optuna_storage": optuna_storage_url(spec, folder),
        "mlflow_failed_writes": mlflow_callback.failed_writes,
        "mlflow_retried_writes": mlflow_callback.retried_writes,
        "mlflow_lost_writes": lost,
    }
    print(render_summary(summary_data))
    print(
        f"scorer actor: {stats['batches']} batches, mean batch {stats['mean_batch_size']:.2f} sequences, "
        f"{stats['mixed_batch_share']:.0%} mixed trials (counted since the actor last started)"
    )
    if lost:
        print(
            f"warning: {len(lost)} MLflow write(s) could not be made after retries and repair: "
            + "; ".join(lost[:5])
            + (" ..." if len(lost) > 5 else ""),
            flush=True,
        )
    elif mlflow_callback.failed_writes:
        print(f"MLflow: {mlflow_callback.failed_writes} write(s) failed at first and were repaired from Tune's results")
    interrupted = len(records) < spec.trials or finished < len(records)
    summary["interrupted"] = interrupted
    summary["all_failed"] = not interrupted and failed == len(records)
    if interrupted:
        print(f"sweep interrupted after {elapsed:.0f} s: run `scrutable sweep <spec> --resume` to finish it")
    else:
        tracking.finish_parent(uri, parent_id, summary, "FAILED" if summary["all_failed"] else "FINISHED")
        if summary["all_failed"]:
            print(f"sweep failed: every one of its {failed} trials failed (reasons above); nothing to compare")
        else:
            print(f"sweep finished in {elapsed:.0f} s; MLflow: scrutable ui {folder}")
    return summary
