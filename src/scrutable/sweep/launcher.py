"""`scrutable sweep`: Ray Tune + Optuna multi-objective search over alpha and prompt length.

`run_sweep` is the recipe, one named step per line:

    check_before_start  the folder, storage kind, tracking server; on resume, what may change
    start_ray_for       local (127.0.0.1 only) or a cluster (`ray_start.py`); then spec.yaml
    open_tracking       MLflow store, parent run, saved views (`tracking.py`)
    start_scorer        the shared perplexity actor (`scorer_actor.py`)
    make_callbacks      MLflow, the live table, the folder's signature, the bucket upload
    fit                 Tune runs the method's trainable under `OptunaSearch` (`searcher.py`)
    export              stop the actor, read the trials, repair MLflow, the Pareto files
    finish              close the parent run, print the summary and what to do next

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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from scrutable.errors import UserError
from scrutable.sweep.folder import PARETO_DIR, SCORER_STATS, SPEC_FILE, TUNE_DIR, mlflow_uri, optuna_uri
from scrutable.sweep.ray_start import QUIET_ENV, _loopback_only, start_ray
from scrutable.sweep.searcher import DUPLICATE_ATTR, make_search_alg, make_searcher
from scrutable.sweep.spec import SweepSpec

if TYPE_CHECKING:
    from scrutable.sweep.frontier import ParetoSummary

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
    start_ray_for(run)
    open_tracking(run)
    actor = start_scorer(run)
    callbacks = make_callbacks(run)
    fit(run, callbacks)
    summary, frontier = export(run, actor)
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
    from ray import tune

    from scrutable.sweep import cluster, storage, tracking, trust
    from scrutable.sweep import resume as resuming

    spec, folder, location = run.spec, run.folder, run.location
    storage.check_ray_client(cluster.resolve_address(run.address), spec.storage, spec.tracking.uri, spec.optuna_storage)
    storage.check_kind(spec.storage, cluster.resolve_address(run.address), shared=shared_storage)
    check_storage(folder)
    storage.check_writable(spec.storage)
    if run.resume:
        if not tune.Tuner.can_restore(location):
            raise UserError(f"nothing to resume in {location}: run the sweep without --resume")
        resuming.check_compatible(resuming.stored_spec(folder), spec, folder)  # before spec.yaml changes
        resuming.check_stores(folder, spec)  # mlflow.db / optuna.db: readable, locations inside the folder
        if run.local and not trust_folder:
            trust.verify(run.tune_dir)  # before Ray unpickles anything from the folder
    elif tune.Tuner.can_restore(location) if not run.local else Path(location).exists():
        raise UserError(
            f"{location} already holds sweep '{spec.name}': pass --resume to finish it, or --out NEW_FOLDER "
            "to start another"
        )
    if spec.tracking.uri:  # a server: check it answers before creating anything on disk
        tracking.check_reachable(run.uri)


def start_ray_for(run: Run) -> None:
    """Ray (local or a cluster), then the sweep folder with its spec, written whole."""
    from scrutable.paths import write_atomically
    from scrutable.sweep import storage

    ray_address = run.address or os.environ.get("RAY_ADDRESS")
    run.say(f"starting Ray ({'local, 127.0.0.1 only' if not ray_address else 'cluster at ' + ray_address})")
    start_ray(run.spec, run.address)
    storage.check_shared(run.spec.storage)  # a node-local path on a multi-node cluster: refused, nothing written
    run.folder.mkdir(parents=True, exist_ok=True)
    write_atomically(run.folder / SPEC_FILE, yaml.safe_dump(run.spec.to_dict(), sort_keys=False))  # never half


def open_tracking(run: Run) -> None:
    """MLflow's experiment and parent run, with the sweep's parameters and saved views."""
    from scrutable.sweep import tracking

    spec = run.spec
    run.say(f"MLflow at {run.uri}")
    run.experiment_id, run.parent_id = tracking.connect(run.uri, spec.tracking.experiment or spec.name, run.folder)
    tracking.log_sweep_params(run.uri, run.parent_id, spec.to_dict())
    tracking.save_views(run.uri, run.experiment_id, spec.metric_names, spec.directions, list(spec.search))


def start_scorer(run: Run) -> Any:
    """The one perplexity actor every trial shares."""
    from scrutable.sweep.scorer_actor import start_scorer as start_actor

    spec = run.spec
    gpu = f", {spec.scorer_resources.gpu:g} GPU" if spec.scorer_resources.gpu else ""
    run.say(f"loading the scorer {spec.scorer} in the shared actor{gpu}")
    return start_actor(
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


def make_callbacks(run: Run) -> list[Any]:
    """MLflow's runs, the live table, the folder's signature (local) or its upload (bucket)."""
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
    return callbacks


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
    try:
        with sigterm_as_interrupt(), tune_log(run.folder, resume=run.resume):
            tuner.fit()
    finally:
        stop_all()
        if run.local:
            trust.sign(run.tune_dir)


def export(run: Run, actor: Any) -> tuple[dict[str, Any], ParetoSummary]:
    """Stop the actor, read every trial back, repair MLflow from them, write the Pareto files."""
    import ray

    from scrutable.sweep import storage
    from scrutable.sweep.frontier import export_pareto, summary_json
    from scrutable.sweep.results import collect_trials

    spec, folder = run.spec, run.folder
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
