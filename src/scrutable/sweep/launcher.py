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
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.sweep.folder import PARETO_DIR, SCORER_STATS, SPEC_FILE, TUNE_DIR, optuna_uri
from scrutable.sweep.pareto import directions_of
from scrutable.sweep.spec import Sampler, SweepSpec

TUNE_TRIAL_ATTR = "tune_trial_id"
MLFLOW_RUN_ATTR = "mlflow_run_id"
QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # the new output engine ignores our reporter and prints tracebacks
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Step reports (`progress/*`, between evaluations) carry no objectives; Tune's strict check
    # would fail them. The objectives' names are checked when the spec loads instead.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}
LOOPBACK = "127.0.0.1"  # a local sweep's Ray listens here only


# Trials a sampler draws at random before it models anything (Optuna's defaults, named here
# so that the space-filling start replaces exactly them): TPE's and GP's start-up trials,
# NSGA-II's first generation, and as many for the random sampler.
START_TRIALS = 10
NSGA2_POPULATION = 50
DUPLICATE_ATTR = "duplicate_of"  # a study trial closed unrun: the trial whose configuration it repeated
MAX_RESAMPLES = 32  # asks for an untried configuration before the search ends


def make_searcher(spec: SweepSpec, folder: Path, tracking: tuple[str, str] | None = None) -> Any:
    """Ray's OptunaSearch over `spec.space` (define-by-run: the real values under their own
    names), on a study created here so that it carries the objectives' names
    (`study.metric_names`) for optuna-dashboard and `load_study`. The alpha = 0 baselines run
    first, outside the study; a fresh study gets the space-filling start enqueued
    (`search_space.py` says why and how)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = spec.space
    samplers = {
        Sampler.TPE: lambda: optuna.samplers.TPESampler(
            seed=spec.seed, multivariate=True, n_startup_trials=START_TRIALS
        ),
        Sampler.NSGA2: lambda: optuna.samplers.NSGAIISampler(seed=spec.seed, population_size=NSGA2_POPULATION),
        Sampler.GP: lambda: optuna.samplers.GPSampler(seed=spec.seed, n_startup_trials=START_TRIALS),
        Sampler.RANDOM: lambda: optuna.samplers.RandomSampler(seed=spec.seed),
        Sampler.GRID: lambda: optuna.samplers.GridSampler(
            {name: space.grid_values(name) for name in spec.search}, seed=spec.seed
        ),
    }
    storage = optuna.storages.RDBStorage(optuna_uri(spec, folder))  # OptunaSearch wants an object
    study = optuna.create_study(
        storage=storage,
        study_name=spec.name,
        directions=directions_of(spec.directions),
        load_if_exists=True,
    )
    with warnings.catch_warnings():  # "experimental since 3.2": stable in every release since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(spec.metric_names)
    baselines = space.baseline_configs()[: spec.trials]
    if not study.trials:  # a fresh study; a resumed one keeps what is still waiting
        start = NSGA2_POPULATION if spec.sampler is Sampler.NSGA2 else START_TRIALS
        for point in space.start_design(min(start, spec.trials - len(baselines))):
            study.enqueue_trial(point)
    searcher = _searcher_class()(
        space=space.define,
        metric=spec.metric_names,
        mode=spec.directions,
        sampler=samplers[spec.sampler](),
        storage=storage,
        study_name=spec.name,
    )
    searcher.tracking = tracking
    searcher.search_space = space
    searcher.sweep_seed = spec.seed
    searcher.pending_baselines = baselines
    return searcher


def _searcher_class() -> Any:
    import math
    import pickle

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from scrutable.sweep.search_space import SEED, trial_seed
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

        tracking: tuple[str, str] | None = None  # (MLflow URI, experiment id) to link runs
        search_space: Any = None  # the spec's SearchSpace
        sweep_seed = 0
        pending_baselines: list[dict[str, Any]] = []  # alpha = 0 configs not handed out yet
        baselines: dict[str, dict[str, Any]] = {}  # Tune trial id -> config, for trials outside the study
        handed_out = 0  # trials handed to Tune so far: the index of each one's derived seed

        def suggest(self, trial_id: str) -> Any:  # a config, or FINISHED when the space is used up
            """A baseline while any is left, else an Optuna trial whose configuration no other
            trial has (a repeat is closed as pruned, `duplicate_of`, and the sampler asked again);
            with the trial's derived seed (`search_space.trial_seed`) where the spec has one."""
            if self.pending_baselines:
                config = self._with_seed(dict(self.pending_baselines[0]), None)
                self.pending_baselines = self.pending_baselines[1:]
                self.baselines = {**self.baselines, trial_id: config}
                return config
            for _ in range(MAX_RESAMPLES):
                params: dict[str, Any] = super().suggest(trial_id)
                ot_trial = self._ot_trials[trial_id]
                repeated = self._repeated(params, ot_trial.number)
                if repeated is None:
                    ot_trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
                    return self._with_seed(params, ot_trial)
                ot_trial.set_user_attr(DUPLICATE_ATTR, repeated)
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)  # type: ignore[union-attr]
                del self._ot_trials[trial_id]
            print(
                f"search: no untried configuration in {MAX_RESAMPLES} samples: the space is used up; widen a range "
                "or add values for more trials",
                flush=True,
            )
            return self.FINISHED

        def _repeated(self, params: dict[str, Any], number: int) -> str | None:
            """Which trial (finished, running or waiting) already has this configuration."""
            key = self.search_space.key(params)
            for tune_id, config in self.baselines.items():
                if self.search_space.key(config) == key:
                    return f"baseline {tune_id}"
            study: Any = self._ot_study
            for other in study.get_trials(deepcopy=False):
                values = other.system_attrs.get("fixed_params", {}) if other.params == {} else other.params
                unrun = DUPLICATE_ATTR in other.user_attrs
                if other.number != number and not unrun and values and self.search_space.key(values) == key:
                    return f"trial {other.number}"
            return None

        def _with_seed(self, config: dict[str, Any], ot_trial: Any) -> dict[str, Any]:
            index, self.handed_out = self.handed_out, self.handed_out + 1
            if not self.search_space.derive_seed:
                return config
            seed = trial_seed(self.sweep_seed, index)
            if ot_trial is not None:
                ot_trial.set_user_attr(SEED, seed)
            return {**config, SEED: seed}

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            """Each evaluation's first objective (the dev objective) as the trial's intermediate
            value at its training step (the last step's is the kept prompt's, the best one):
            learning curves in optuna-dashboard. Optuna's
            `Trial.report` (and Ray's `on_trial_result`, which calls it) is single-objective
            only, so a multi-objective study gets it through the storage, where the dashboard
            lists it on the trial's page (it draws the chart for single-objective studies)."""
            ot_trial = self._ot_trials.get(trial_id)
            metric = self.metric[0] if isinstance(self.metric, list) else self.metric
            value = result.get(metric)
            if ot_trial is None or trial_id in self._completed_trials or not isinstance(value, int | float):
                return  # a baseline, or a step report between evaluations
            if math.isfinite(value):
                step = int(result.get(keys.TRAIN_STEP, result.get("training_iteration", 0)))
                ot_trial.storage.set_trial_intermediate_value(ot_trial._trial_id, step, float(value))

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            if trial_id in self.baselines:  # run outside the study: its values as a study attribute
                if result and not error and trial_id not in self._completed_trials:
                    values = {m: result.get(m) for m in self.metric}
                    self._ot_study.set_user_attr(  # type: ignore[union-attr]
                        f"baseline {trial_id}", {**self.baselines[trial_id], **values}
                    )
                self._completed_trials.add(trial_id)
                return
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


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Tune stops cleanly on SIGINT only; treat SIGTERM (kill, a scheduler) the same way."""
    previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_ray(spec: SweepSpec, address: str | None = None) -> None:
    """Connect to a cluster (`address`, else $RAY_ADDRESS) or start a local Ray bound to 127.0.0.1.

    `address` is `auto` (the cluster this machine belongs to, e.g. on the head node or in a
    `ray job submit` job), a GCS address `HOST:6379`, or a Ray Client URI `ray://HOST:10001`.
    With neither, Ray starts on this machine with every port bound to the loopback
    interface: a local sweep opens nothing to the network (Ray's ports run unauthenticated).
    """
    import ray

    from scrutable.sweep import cluster
    from scrutable.sweep.scorer_actor import NAMESPACE

    if ray.is_initialized():
        return
    address = cluster.resolve_address(address)  # an http:// job-submission address: refused with the fix
    # An existing cluster keeps its own auth mode: forcing ours would break a token-auth cluster.
    quiet = {k: v for k, v in QUIET_ENV.items() if address is None or k != "RAY_AUTH_MODE"}
    # Before ray.init: the cluster and its workers must agree (e.g. on RAY_AUTH_MODE), or
    # worker start-up fails.
    os.environ.update(quiet)
    options: dict[str, Any] = {
        "namespace": NAMESPACE,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": cluster.forwarded_env_vars(quiet)},  # none a job's runtime_env sets
    }
    if address is None:
        with _loopback_only():
            # "local": always this sweep's own Ray; without an address, ray.init joins the
            # newest cluster recorded in /tmp/ray (another user's sweep on this machine).
            ray.init(address="local", include_dashboard=False, _node_ip_address=LOOPBACK, **options)
        return
    _check_reachable(address)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"cannot connect to the Ray cluster at {address} ({str(exc).splitlines()[0][:200]}): start it with "
            "`ray up cluster.yaml` (or `ray start --head`), or drop --address / RAY_ADDRESS for a local sweep"
        ) from None


def _check_reachable(address: str) -> None:
    """A wrong HOST:PORT is one line in seconds (ray.init would retry it for minutes)."""
    if address == "auto":
        return  # ray.init reads this machine's cluster address file and fails fast without one
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot reach a Ray cluster at {address} ({exc}): check HOST:PORT (GCS port 6379, or ray://HOST:10001), "
            "start it with `ray up cluster.yaml`, or drop --address / RAY_ADDRESS for a local sweep"
        ) from None


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Make a local Ray advertise, and so bind, 127.0.0.1 only.

    On Linux, Ray rewrites a node IP of 127.0.0.1 to the machine's routable address and its
    servers then listen on every interface; it keeps loopback where clusters are switched off
    (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, the macOS/Windows default). Set for the processes
    ray.init spawns (inherited environment) and for this one (read at import), then restored.
    """
    from ray._private import ray_constants

    previous_env = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    previous = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous
        if previous_env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = previous_env


def check_storage(folder: Path) -> None:
    """The sweep folder must be creatable and writable: checked before anything is written."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"storage {existing} is a file, not a folder: set storage to a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"storage {existing} is not writable: set storage to a folder you can write")


def make_search_alg(spec: SweepSpec, folder: Path, location: str, tracking: tuple[str, str] | None = None) -> Any:
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
            storage = StorageContext(
                storage_path=location.rsplit("/", 1)[0], experiment_dir_name=old.experiment_dir_name
            )
            storage._timestamp = old._timestamp  # the restored run keeps its staging folder
            experiment.storage = storage
            experiment.spec["storage"] = storage
            limiter.max_concurrent = spec.concurrency  # restored with the old limit

    return FolderSearchGenerator(limiter)


def build_tuner(
    spec: SweepSpec,
    folder: Path,
    location: str,
    trainable: Any,
    callbacks: list[Any],
    tracking: tuple[str, str] | None = None,
    *,
    resume: bool,
) -> Any:
    """A Tuner for `folder`, built from this run's objects even when resuming.

    `Tuner.restore` would bring back the callbacks and searcher pickled in `tuner.pkl`, with
    the absolute paths of the folder that first ran the sweep. Building a Tuner first
    rewrites `tuner.pkl` (under `location`, Tune's experiment: a path or a URI) with fresh
    ones bound to `folder`; `restore` then reads that file,
    continues the trials from the experiment state and restores the searcher's state into
    the fresh searcher (`LinkedOptunaSearch.restore`)."""
    from ray import tune

    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_search_alg(spec, folder, location, tracking),  # limits concurrency itself
            num_samples=spec.trials,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=location.rsplit("/", 1)[0],  # pyarrow opens a URI; a path is local
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0,
        ),
    )
    if not resume:
        return tuner
    return tune.Tuner.restore(location, trainable=trainable, resume_errored=True)


def run_sweep(
    spec: SweepSpec,
    *,
    resume: bool = False,
    address: str | None = None,
    started: float | None = None,
    trust_folder: bool = False,
    shared_storage: bool = False,
) -> dict[str, Any]:
    """Run the sweep; `started` (time.monotonic() at the command's start) times the summary."""
    started = time.monotonic() if started is None else started  # before Ray's start-up, which it counts
    import ray
    from ray import tune

    from scrutable.paths import write_atomically
    from scrutable.sweep import cluster, driver_sync, storage, tracking, trust
    from scrutable.sweep import resume as resuming
    from scrutable.sweep.frontier import export_pareto, render_summary, summary_json
    from scrutable.sweep.progress import SweepProgress, TuneProgress, stop_all
    from scrutable.sweep.results import collect_trials
    from scrutable.sweep.scorer_actor import start_scorer
    from scrutable.sweep.terminal import fit, say
    from scrutable.sweep.trainable import with_spec
    from scrutable.sweep.ui import frontier_url

    # --- setup --------------------------------------------------------------------------
    # RAY_AUTH_MODE is start_ray's to set: a cluster joined by address keeps its own mode
    # (a head started where ~/.ray/auth_token exists requires the token; "disabled" here
    # would make every connection fail with InvalidAuthToken).
    os.environ.update({k: v for k, v in QUIET_ENV.items() if k != "RAY_AUTH_MODE"})
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    folder = spec.folder()  # the driver's files
    location = spec.tune_location()  # Tune's experiment: <storage>/<name>/tune, a path or a URI
    tune_dir = folder / TUNE_DIR  # local: the experiment itself; URI storage: its copy
    local = not storage.is_uri(location)
    storage.check_ray_client(
        cluster.resolve_address(address), spec.storage, spec.tracking.uri, spec.optuna_storage
    )
    storage.check_kind(spec.storage, cluster.resolve_address(address), shared=shared_storage)
    check_storage(folder)
    storage.check_writable(spec.storage)
    if resume:
        if not tune.Tuner.can_restore(location):
            raise UserError(f"nothing to resume in {location}: run the sweep without --resume")
        resuming.check_compatible(resuming.stored_spec(folder), spec, folder)  # before spec.yaml changes
        resuming.check_stores(folder, spec)  # mlflow.db / optuna.db: readable, locations inside the folder
        if local and not trust_folder:
            trust.verify(tune_dir)  # before Ray unpickles anything from the folder
    elif tune.Tuner.can_restore(location) if not local else Path(location).exists():
        raise UserError(
            f"{location} already holds sweep '{spec.name}': pass --resume to finish it, or --out NEW_FOLDER "
            "to start another"
        )
    uri = spec.tracking.uri or tracking.default_uri(folder)
    if spec.tracking.uri:  # a server: check it answers before creating anything on disk
        tracking.check_reachable(uri)
    ray_address = address or os.environ.get("RAY_ADDRESS")
    say(started, f"starting Ray ({'local, 127.0.0.1 only' if not ray_address else 'cluster at ' + ray_address})")
    start_ray(spec, address)
    storage.check_shared(spec.storage)  # a node-local path on a multi-node cluster: refused, nothing written
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / SPEC_FILE, yaml.safe_dump(spec.to_dict(), sort_keys=False))  # never half a spec
    say(started, f"MLflow at {uri}")
    experiment_id, parent_id = tracking.connect(uri, spec.tracking.experiment or spec.name, folder)
    tracking.log_sweep_params(uri, parent_id, spec.to_dict())
    tracking.save_views(uri, experiment_id, spec.metric_names, spec.directions, list(spec.search))
    gpu = f", {spec.scorer_resources.gpu:g} GPU" if spec.scorer_resources.gpu else ""
    say(started, f"loading the scorer {spec.scorer} in the shared actor{gpu}")
    actor = start_scorer(
        spec.name,
        spec.scorer,
        spec.fixed_config().get("data_dir"),
        num_gpus=spec.scorer_resources.gpu,
        num_cpus=spec.scorer_resources.cpu,
        dtype=spec.scorer_resources.dtype,
        max_batch=spec.scorer_resources.max_batch,
        max_wait_ms=spec.scorer_resources.max_wait_ms,
        stats_path=str(folder / SCORER_STATS),  # the counts survive actor restarts and --resume
    )
    example_config = spec.trial_config(spec.space.example_point())
    progress = SweepProgress(spec, steps_per_trial=example_config.steps, started=started)
    params = {
        "sweep": spec.name,
        "method": spec.method,
        "task": spec.task,
        "model": spec.model,
        "scorer": spec.scorer,
        "seed": spec.seed,
        "sampler": spec.sampler.value,
        **tracking.config_params(example_config, spec.space.names),  # the method config's fixed fields
    }
    mlflow_callback = tracking.MlflowTracking(uri, experiment_id, parent_id, params, spec.space.names, folder)
    callbacks = [mlflow_callback, TuneProgress(progress)]
    if local:  # URI storage: the state lives in the bucket, whose access control guards it
        callbacks.append(trust.signer_callback(tune_dir))
    uploader = None if local else driver_sync.Uploader(folder, spec.storage, spec.name)
    if uploader is not None:  # the driver's folder follows each trial into the bucket
        callbacks.append(driver_sync.callback(uploader))
    wrapped = with_spec(spec.to_dict(), {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})

    # --- sweep --------------------------------------------------------------------------
    say(started, f"Tune: {spec.trials} trials of {spec.method} on {spec.task}, {spec.concurrency} at a time")
    from scrutable.sweep.tune_log import tune_log  # Tune's warnings to folder/tune.log; a failed restore refused

    with tune_log(folder, resume=resume):  # Tuner.restore reads the state here too
        tuner = build_tuner(spec, folder, location, wrapped, callbacks, (uri, experiment_id), resume=resume)
    try:
        with sigterm_as_interrupt(), tune_log(folder, resume=resume):
            tuner.fit()
    finally:
        stop_all()
        if local:
            trust.sign(tune_dir)

    # --- cleanup ------------------------------------------------------------------------
    stats = ray.get(actor.batch_stats.remote())
    ray.kill(actor, no_restart=True)
    elapsed = time.monotonic() - started
    if storage.is_uri(location):  # the export reads a local copy of the experiment
        storage.mirror(location, folder / TUNE_DIR)
    records = collect_trials(folder, spec)
    lost = mlflow_callback.repair(records)  # fill MLflow from Tune's results
    finished = sum(r.status in ("TERMINATED", "ERROR") for r in records)
    failed = sum(r.status == "ERROR" for r in records)
    summary_data = export_pareto(records, spec, folder / PARETO_DIR)
    summary: dict[str, Any] = {
        "sweep": spec.name,
        "folder": str(folder),
        "tune_storage": location,
        "wall_time_s": round(elapsed, 1),
        "trials_finished": finished,
        "trials_failed": failed,
        "trials_planned": spec.trials,
        "scorer": stats,
        "tracking_uri": uri,
        "optuna_storage": optuna_uri(spec, folder),
        "mlflow_failed_writes": mlflow_callback.failed_writes,
        "mlflow_retried_writes": mlflow_callback.retried_writes,
        "mlflow_lost_writes": lost,
    }
    summary["pareto"] = {**summary_json(summary_data), "files": {k: str(v) for k, v in summary_data.files.items()}}
    print(render_summary(summary_data))
    print(
        fit(
            f"scorer actor: {stats['batches']} batches, mean batch {stats['mean_batch_size']:.2f} sequences, "
            f"{stats['mixed_batch_share']:.0%} mixed trials (counted since the actor last started)"
        )
    )
    if lost:
        print(
            fit(
                f"warning: {len(lost)} MLflow write(s) could not be made after retries and repair: "
                + "; ".join(lost[:5])
                + (" ..." if len(lost) > 5 else "")
            ),
            flush=True,
        )
    elif mlflow_callback.failed_writes:
        print(
            fit(
                f"MLflow: {mlflow_callback.failed_writes} write(s) failed at first and were repaired "
                "from Tune's results"
            )
        )
    interrupted = len(records) < spec.trials or finished < len(records)
    all_failed = not interrupted and failed == len(records)
    try:
        tracking.finish_parent(
            uri,
            parent_id,
            summary,
            folder=folder,
            hypervolume=summary_data.hypervolume,
            frontier_size=len(summary_data.frontier),
            files=list(summary_data.files.values()),
            status=None if interrupted else ("FAILED" if all_failed else "FINISHED"),
        )
    except Exception as exc:  # the results are on disk; the parent run is a view of them
        print(f"warning: could not write the parent MLflow run ({type(exc).__name__}: {exc})", file=sys.stderr)
    if uploader is not None:  # the final MLflow rows, pareto/ and the summary, for a resume on another head
        uploader.try_upload()
    summary["interrupted"] = interrupted
    summary["all_failed"] = all_failed
    if interrupted:
        say(started, f"sweep interrupted: run `scrutable sweep {folder} --resume` to finish it")
    elif all_failed:
        say(started, f"sweep failed: every one of its {failed} trials failed (reasons above); nothing to compare")
    else:
        say(started, f"sweep finished in {elapsed:.0f} s; MLflow: scrutable ui {folder}")
        compare = frontier_url(folder)
        if compare:  # a URL is never cut to the terminal's width
            print(f"frontier runs charted in MLflow (once `scrutable ui` serves it):\n  {compare}")
    return summary
