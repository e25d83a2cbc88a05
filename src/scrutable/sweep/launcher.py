"""`scrutable sweep`: Ray Tune + Optuna multi-objective search over alpha and prompt length.

`run_sweep` is the recipe, one named step per line:

    check_before_start  the folder, storage kind, tracking server; on resume, what may change
    start_ray_for       local (127.0.0.1 only) or a cluster (`ray_start.py`), the folder and
                        spec.yaml, and (`open_tracking`, in the background) MLflow's store,
                        parent run and saved views (`tracking_store.py`)
    start_scorer        the shared perplexity actor (`scorer_actor.py`), loading in the background
    make_callbacks      MLflow, the live table, the folder's signature, the bucket upload
    fit                 Tune runs the method's trainable under `OptunaSearch` (`searcher.py`)
    export              stop the actor, read the trials, repair MLflow, the Pareto files
    finish              close the parent run, print the summary and what to do next

Start-up is what a short sweep mostly waits for, so the slow steps overlap: MLflow's store
(an SQLite schema of some forty migrations) is set up while a local Ray starts, and the
scorer's model loads in its actor while Optuna's study and the trials start; each trial
waits for it only at its first score (`trainable.py`). `benchmarks/startup.py` times each
step (`timing.mark`).

The study (SQLite beside the results by default) has one direction per objective;
`metric`/`mode` go to the searcher only, never to `TuneConfig`, which would silently
collapse the search to one objective.

Ctrl-C (or SIGTERM) stops the sweep cleanly; `scrutable sweep SPEC --resume` then
finishes it from Tune's experiment state without re-running finished trials, and the
interrupted trials continue from their checkpoints.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from scrutable.errors import UserError
from scrutable.sweep.folder import PARETO_DIR, SCORER_STATS, SPEC_FILE, TUNE_DIR, mlflow_uri, optuna_uri
from scrutable.sweep.ray_start import QUIET_ENV, _loopback_only, start_ray
from scrutable.sweep.searcher import DUPLICATE_ATTR, make_search_alg, make_searcher
from scrutable.sweep.spec import SweepSpec
from scrutable.sweep.timing import mark

if TYPE_CHECKING:
    from scrutable.sweep.frontier import ParetoSummary

T = TypeVar("T")

__all__ = ["DUPLICATE_ATTR", "QUIET_ENV", "_loopback_only", "make_searcher", "run_sweep", "start_ray"]


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Tune stops cleanly on SIGINT only; treat SIGTERM (kill, a scheduler) the same way."""
    previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_storage(folder: Path) -> None:
    """The sweep folder must be creatable and writable: checked before anything is written."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"storage {existing} is a file, not a folder: set storage to a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"storage {existing} is not writable: set storage to a folder you can write")


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
            # A finished trial's worker runs the next one: its process, imports, frozen models
            # (`trainables.common.cached_model`) and kept test encodings are already there.
            # Every trial builds its own config, generator, prompt and optimizer.
            reuse_actors=True,
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
    run = Run(spec, resume, address, time.monotonic() if started is None else started)  # before Ray's start-up
    quiet_logs()
    check_before_start(run, trust_folder=trust_folder, shared_storage=shared_storage)
    tracking = start_ray_for(run)  # and the sweep folder; MLflow's store opens meanwhile
    scorer = start_scorer(run)  # its model loads meanwhile
    tracking.result()  # the experiment and parent run, before Tune's callbacks name them
    callbacks = make_callbacks(run)
    fit(run, callbacks)
    summary, frontier = export(run, scorer)
    finish(run, summary, frontier)
    return summary


@dataclass
class Run:
    """One sweep run's places and handles, filled in step by step."""

    spec: SweepSpec
    resume: bool
    address: str | None
    started: float
    folder: Path = field(init=False)  # the driver's files
    location: str = field(init=False)  # Tune's experiment: <storage>/<name>/tune, a path or a URI
    tune_dir: Path = field(init=False)  # local: the experiment itself; URI storage: its copy
    local: bool = field(init=False)
    uri: str = field(init=False)  # MLflow's
    experiment_id: str = ""
    parent_id: str = ""
    mlflow_callback: Any = None
    uploader: Any = None  # the driver folder's copy in the bucket (URI storage)
    elapsed: float = 0.0  # seconds from the command's start to the end of Tune's run

    def __post_init__(self) -> None:
        from scrutable.sweep import storage

        self.folder = self.spec.folder()
        self.location = self.spec.tune_location()
        self.tune_dir = self.folder / TUNE_DIR
        self.local = not storage.is_uri(self.location)
        self.uri = self.spec.tracking.uri or mlflow_uri(self.folder)

    def say(self, message: str) -> None:
        from scrutable.sweep.terminal import say

        say(self.started, message)


def quiet_logs() -> None:
    # RAY_AUTH_MODE is start_ray's to set: a cluster joined by address keeps its own mode
    # (a head started where ~/.ray/auth_token exists requires the token; "disabled" here
    # would make every connection fail with InvalidAuthToken).
    os.environ.update({k: v for k, v in QUIET_ENV.items() if k != "RAY_AUTH_MODE"})
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def check_before_start(run: Run, *, trust_folder: bool, shared_storage: bool) -> None:
    """Everything that can be refused before anything is written or Ray starts."""
    from scrutable.sweep import cluster, storage, trust
    from scrutable.sweep import resume as resuming
    from scrutable.sweep.tracking_store import check_reachable  # not tracking.py: it imports ray.tune

    spec, folder, location = run.spec, run.folder, run.location
    storage.check_ray_client(cluster.resolve_address(run.address), spec.storage, spec.tracking.uri, spec.optuna_storage)
    storage.check_kind(spec.storage, cluster.resolve_address(run.address), shared=shared_storage)
    check_storage(folder)
    storage.check_writable(spec.storage)
    if run.resume:
        from ray import tune  # seconds to import: only where a state is read

        if not tune.Tuner.can_restore(location):
            raise UserError(f"nothing to resume in {location}: run the sweep without --resume")
        resuming.check_compatible(resuming.stored_spec(folder), spec, folder)  # before spec.yaml changes
        resuming.check_stores(folder, spec)  # mlflow.db / optuna.db: readable, locations inside the folder
        if run.local and not trust_folder:
            trust.verify(run.tune_dir)  # before Ray unpickles anything from the folder
    elif Path(location).exists() if run.local else _can_restore(location):
        raise UserError(
            f"{location} already holds sweep '{spec.name}': pass --resume to finish it, or --out NEW_FOLDER "
            "to start another"
        )
    if spec.tracking.uri:  # a server: check it answers before creating anything on disk
        check_reachable(run.uri)


def _can_restore(location: str) -> bool:
    from ray import tune

    return bool(tune.Tuner.can_restore(location))


def start_ray_for(run: Run) -> Future[None]:
    """Ray (local or a cluster), the sweep folder with its spec (written whole), and MLflow's
    store opened in a background thread (`open_tracking`; the future says when it is done).

    A local Ray is one node, this machine, whose folder it is: the folder is written and
    the store opens while Ray starts (seconds each). On a cluster, only once Ray has
    confirmed that every node sees the storage."""
    from scrutable.sweep import storage

    ray_address = run.address or os.environ.get("RAY_ADDRESS")
    run.say(f"starting Ray ({'local, 127.0.0.1 only' if not ray_address else 'cluster at ' + ray_address})")
    if not ray_address:
        tracking = write_folder_and_open_tracking(run)
        start_ray(run.spec, run.address)
    else:
        start_ray(run.spec, run.address)
        storage.check_shared(run.spec.storage)  # a node-local path on a multi-node cluster: refused, nothing written
        tracking = write_folder_and_open_tracking(run)
    mark("ray started")
    return tracking


def write_folder_and_open_tracking(run: Run) -> Future[None]:
    from scrutable.paths import write_atomically

    run.folder.mkdir(parents=True, exist_ok=True)
    write_atomically(run.folder / SPEC_FILE, yaml.safe_dump(run.spec.to_dict(), sort_keys=False))  # never half
    run.say(f"MLflow at {run.uri}")
    return in_background(lambda: open_tracking(run), "mlflow")


def in_background(work: Callable[[], T], name: str) -> Future[T]:
    """Run `work` in a daemon thread (never holding up an exit); its result or error in the future."""
    done: Future[T] = Future()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # for whoever waits for it
            done.set_exception(exc)
            return
        done.set_result(result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return done


def open_tracking(run: Run) -> None:
    """MLflow's experiment and parent run, with the sweep's parameters and saved views."""
    from scrutable.sweep import tracking_store

    spec = run.spec
    experiment = spec.tracking.experiment or spec.name
    run.experiment_id, run.parent_id = tracking_store.connect(run.uri, experiment, run.folder)
    tracking_store.log_sweep_params(run.uri, run.parent_id, spec.to_dict())
    tracking_store.save_views(run.uri, run.experiment_id, spec.metric_names, spec.directions, list(spec.search))
    mark("mlflow ready")


def start_scorer(run: Run) -> Future[Any]:
    """The one perplexity actor every trial shares, its model loading in the background.

    Returns once the actor is registered under its name (milliseconds), so that a trial
    started right after finds it; the future then holds its handle once the model is
    loaded, or the error that stopped the loading (raised by `export`)."""
    from scrutable.sweep.scorer_actor import start_scorer as start_actor

    spec = run.spec
    gpu = f", {spec.scorer_resources.gpu:g} GPU" if spec.scorer_resources.gpu else ""
    run.say(f"loading the scorer {spec.scorer} in the shared actor{gpu}, while the rest starts")

    def load() -> Any:
        handle = start_actor(  # returns once the actor has loaded the model
            spec.name,
            spec.scorer,
            spec.fixed_config().get("data_dir"),
            num_gpus=spec.scorer_resources.gpu,
            num_cpus=spec.scorer_resources.cpu,
            dtype=spec.scorer_resources.dtype,
            max_batch=spec.scorer_resources.max_batch,
            max_wait_ms=spec.scorer_resources.max_wait_ms,
            stats_path=str(run.folder / SCORER_STATS),  # the counts survive actor restarts and --resume
        )
        mark("scorer loaded")
        return handle

    loading = in_background(load, "scorer")
    _until_registered(spec.name, loading)
    return loading


def _until_registered(sweep_name: str, loading: Future[Any]) -> None:
    """Wait until the scorer actor can be looked up by name, or its start failed (raised here)."""
    import ray

    from scrutable.sweep.scorer_actor import NAMESPACE, actor_name

    while True:
        try:
            ray.get_actor(actor_name(sweep_name), namespace=NAMESPACE)
            return
        except ValueError:  # not registered yet
            if loading.done():
                loading.result()  # the error that stopped it
                return
            time.sleep(0.01)


def make_callbacks(run: Run) -> list[Any]:
    """MLflow's runs, the live table, the folder's signature (local) or its upload (bucket),
    then Tune's CSV and JSON loggers (each trial's progress.csv and result.json), named here
    because Tune's automatic loggers are off (`ray_start.QUIET_ENV`): the third of them,
    TensorBoard's, imports torch into the driver (2 s of start-up) for files MLflow holds."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from scrutable.sweep import driver_sync, tracking, trust
    from scrutable.sweep.progress import SweepProgress, TuneProgress

    spec = run.spec
    example_config = spec.trial_config(spec.space.example_point())
    progress = SweepProgress(spec, steps_per_trial=example_config.steps, started=run.started)
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
    run.mlflow_callback = tracking.MlflowTracking(
        run.uri, run.experiment_id, run.parent_id, params, spec.space.names, run.folder
    )
    callbacks = [run.mlflow_callback, TuneProgress(progress)]
    if run.local:  # URI storage: the state lives in the bucket, whose access control guards it
        callbacks.append(trust.signer_callback(run.tune_dir))
    if not run.local:  # the driver's folder follows each trial into the bucket
        run.uploader = driver_sync.Uploader(run.folder, spec.storage, spec.name)
        callbacks.append(driver_sync.callback(run.uploader))
    return [*callbacks, CSVLoggerCallback(), JsonLoggerCallback()]  # where Tune's defaults would go


def fit(run: Run, callbacks: list[Any]) -> None:
    """Tune's run (or its restore), with Tune's warnings in tune.log and SIGTERM as Ctrl-C."""
    from scrutable.sweep import trust
    from scrutable.sweep.progress import stop_all
    from scrutable.sweep.trainable import with_spec
    from scrutable.sweep.tune_log import tune_log  # a failed restore is refused there

    spec = run.spec
    wrapped = with_spec(spec.to_dict(), {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    run.say(f"Tune: {spec.trials} trials of {spec.method} on {spec.task}, {spec.concurrency} at a time")
    tracking = (run.uri, run.experiment_id)
    with tune_log(run.folder, resume=run.resume):  # Tuner.restore reads the state here too
        tuner = build_tuner(spec, run.folder, run.location, wrapped, callbacks, tracking, resume=run.resume)
    mark("tuner built")
    try:
        with sigterm_as_interrupt(), tune_log(run.folder, resume=run.resume):
            tuner.fit()
    finally:
        stop_all()
        if run.local:
            trust.sign(run.tune_dir)


def export(run: Run, scorer: Future[Any]) -> tuple[dict[str, Any], ParetoSummary]:
    """Stop the actor, read every trial back, repair MLflow from them, write the Pareto files."""
    import ray

    from scrutable.sweep import storage
    from scrutable.sweep.frontier import export_pareto, summary_json
    from scrutable.sweep.results import collect_trials

    spec, folder = run.spec, run.folder
    actor = scorer.result()  # loaded long ago, unless its loading failed: that error, here
    stats = ray.get(actor.batch_stats.remote())
    ray.kill(actor, no_restart=True)
    run.elapsed = elapsed = time.monotonic() - run.started
    if storage.is_uri(run.location):  # the export reads a local copy of the experiment
        storage.mirror(run.location, run.tune_dir)
    records = collect_trials(folder, spec)
    lost = run.mlflow_callback.repair(records)  # fill MLflow from Tune's results
    finished = sum(r.status in ("TERMINATED", "ERROR") for r in records)
    failed = sum(r.status == "ERROR" for r in records)
    frontier = export_pareto(records, spec, folder / PARETO_DIR)
    summary: dict[str, Any] = {
        "sweep": spec.name,
        "folder": str(folder),
        "tune_storage": run.location,
        "wall_time_s": round(elapsed, 1),
        "trials_finished": finished,
        "trials_failed": failed,
        "trials_planned": spec.trials,
        "scorer": stats,
        "tracking_uri": run.uri,
        "optuna_storage": optuna_uri(spec, folder),
        "mlflow_failed_writes": run.mlflow_callback.failed_writes,
        "mlflow_retried_writes": run.mlflow_callback.retried_writes,
        "mlflow_lost_writes": lost,
    }
    summary["pareto"] = {**summary_json(frontier), "files": {k: str(v) for k, v in frontier.files.items()}}
    summary["interrupted"] = len(records) < spec.trials or finished < len(records)
    summary["all_failed"] = not summary["interrupted"] and failed == len(records)
    return summary, frontier


def finish(run: Run, summary: dict[str, Any], frontier: ParetoSummary) -> None:
    """Print the summary, close the parent run, upload the folder's last state, say what next."""
    from scrutable.sweep import tracking
    from scrutable.sweep.frontier import render_summary
    from scrutable.sweep.terminal import fit as fit_line
    from scrutable.sweep.ui import frontier_url

    stats, lost, folder = summary["scorer"], summary["mlflow_lost_writes"], run.folder
    interrupted, all_failed = summary["interrupted"], summary["all_failed"]
    print(render_summary(frontier))
    print(
        fit_line(
            f"scorer actor: {stats['batches']} batches, mean batch {stats['mean_batch_size']:.2f} sequences, "
            f"{stats['mixed_batch_share']:.0%} mixed trials (counted since the actor last started)"
        )
    )
    if lost:
        print(
            fit_line(
                f"warning: {len(lost)} MLflow write(s) could not be made after retries and repair: "
                + "; ".join(lost[:5])
                + (" ..." if len(lost) > 5 else "")
            ),
            flush=True,
        )
    elif summary["mlflow_failed_writes"]:
        print(
            fit_line(
                f"MLflow: {summary['mlflow_failed_writes']} write(s) failed at first and were repaired "
                "from Tune's results"
            )
        )
    parent_summary = {k: v for k, v in summary.items() if k not in ("interrupted", "all_failed")}
    try:
        tracking.finish_parent(
            run.uri,
            run.parent_id,
            parent_summary,
            folder=folder,
            hypervolume=frontier.hypervolume,
            frontier_size=len(frontier.frontier),
            files=list(frontier.files.values()),
            status=None if interrupted else ("FAILED" if all_failed else "FINISHED"),
        )
    except Exception as exc:  # the results are on disk; the parent run is a view of them
        print(f"warning: could not write the parent MLflow run ({type(exc).__name__}: {exc})", file=sys.stderr)
    if run.uploader is not None:  # the final MLflow rows, pareto/ and the summary, for a resume on another head
        run.uploader.try_upload()
    if interrupted:
        run.say(f"sweep interrupted: run `scrutable sweep {folder} --resume` to finish it")
    elif all_failed:
        failed = summary["trials_failed"]
        run.say(f"sweep failed: every one of its {failed} trials failed (reasons above); nothing to compare")
    else:
        run.say(f"sweep finished in {run.elapsed:.0f} s; MLflow: scrutable ui {folder}")
        compare = frontier_url(folder)
        if compare:  # a URL is never cut to the terminal's width
            print(f"frontier runs charted in MLflow (once `scrutable ui` serves it):\n  {compare}")
