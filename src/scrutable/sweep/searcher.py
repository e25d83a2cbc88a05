"""The sweep's searcher: Optuna's study behind Ray Tune, bound to the sweep folder.

`make_searcher` builds Ray's `OptunaSearch` over the spec's search space on a study that
carries the objectives' names; the alpha = 0 baselines run first, outside the study, and a
fresh study gets a space-filling start (`search_space.py`). `LinkedOptunaSearch` links each
study trial to its Tune trial and MLflow run, never starts a configuration twice, reports
each evaluation as an intermediate value (optuna-dashboard's learning curves), and saves a
state that names no storage, so a copied folder resumes as a copy. `make_search_alg` wraps
it in Tune's search chain (generator, concurrency limit), re-bound to the folder on resume.

    search_alg = make_search_alg(spec, folder, spec.tune_location(), (mlflow_uri, experiment_id))
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from scrutable.metrics import keys
from scrutable.sweep.folder import optuna_uri
from scrutable.sweep.pareto import directions_of
from scrutable.sweep.spec import Sampler, SweepSpec
from scrutable.sweep.timing import mark

TUNE_TRIAL_ATTR = "tune_trial_id"
MLFLOW_RUN_ATTR = "mlflow_run_id"

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
    mark("optuna study ready")
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
                suggested = super().suggest(trial_id)
                if suggested is None:  # typed Optional by Ray; not returned with a search space
                    return None
                params: dict[str, Any] = suggested
                ot_trial = self._ot_trials[trial_id]
                repeated = self._repeated(params, ot_trial.number)
                if repeated is None:
                    ot_trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
                    return self._with_seed(params, ot_trial)
                ot_trial.set_user_attr(DUPLICATE_ATTR, repeated)
                study: Any = self._ot_study
                study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
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
                    baseline_study: Any = self._ot_study
                    baseline_study.set_user_attr(f"baseline {trial_id}", {**self.baselines[trial_id], **values})
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
