"""The sweep folder: its layout, named once here, and the one way to open it.

A sweep writes everything it knows under one folder, `<storage>/<name>/` (or
`<local_dir>/<name>/` when `storage` is a bucket URI, which then holds `tune/` and a copy of
this folder under `driver/`):

    spec.yaml                 the spec the sweep was started with, every field written out
    mlflow.db, mlartifacts/   MLflow's store: runs, metrics, cards (`tracking.py`, `artifacts.py`)
    optuna.db                 Optuna's study (unless the spec names another `optuna_storage`)
    tune/                     Ray Tune's experiment: state, one folder per trial
        <trial>/result.json   one JSON line per report
        <trial>/checkpoint_*  state.pt + card.json
    tune.log                  Tune's warnings and errors (`tune_log.py`)
    scorer_stats.json         the shared scorer actor's batch counts
    reference_perplexity.json English phrases' perplexities, cached by `scrutable report`
    pareto/                   trials.csv, pareto.csv, pareto.json, pareto.png, pareto.html

Every other module takes these names from here, so a change of layout is one edit and a
moved or copied folder opens the same way everywhere:

    folder = SweepFolder.open("runs/quickstart")
    folder.spec          # validated once, its paths re-rooted where the folder now is
    folder.trials()      # every Tune trial as a `TrialRecord` (`results.py`)
    folder.history(r)    # a trial's reports, one per step
    folder.frontier()    # the trials on the Pareto frontier (`frontier.py`)
    folder.mlflow_uri      # tracking.uri, else the folder's SQLite store

One validation policy, in two depths. Reading (`spec`: pareto, report) validates the file
as a sweep file is validated, without the checks against this machine: a folder copied off
a cluster names the cluster's model paths and data folder, and reading its results needs
neither. Running trials from it (`runnable_spec`: `--resume`) adds those checks, exactly as
`scrutable sweep` runs them on a sweep file. Viewing the runs (`scrutable ui`) needs only
the name and the tracking settings, read from the same parse (`experiment`, `mlflow_uri`).
A checkpoint's state.pt is the method's (`trainables/common.py`), which also runs without a
sweep (`scrutable train`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrutable.errors import UserError

if TYPE_CHECKING:
    from scrutable.sweep.results import TrialRecord
    from scrutable.sweep.spec import SweepSpec

# --- the layout -----------------------------------------------------------------------------
SPEC_FILE = "spec.yaml"
MLFLOW_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"  # MLflow's artifacts, served by `scrutable ui` (`artifacts.py`)
OPTUNA_DB = "optuna.db"
TUNE_DIR = "tune"  # Tune's experiment folder under <storage>/<name>/
# Tune's files in each trial's folder under tune/ (Ray 2.60's names)
PARAMS_FILE = "params.json"  # the trial's config
RESULT_FILE = "result.json"  # one JSON line per report
ERROR_FILE = "error.txt"  # a failed trial's traceback
# In each checkpoint_* folder, beside the method's state.pt (`trainables/common.py`):
CARD_FILE = "card.json"  # the checkpoint's interpretability card (`final` marks the last)
CARD_TEXT_FILE = "card.txt"  # the same card, rendered for reading
TUNE_LOG = "tune.log"
SCORER_STATS = "scorer_stats.json"
REFERENCE_CACHE = "reference_perplexity.json"
DRIVER_DIR = "driver"  # <storage URI>/<name>/driver/: this folder, copied (`driver_sync.py`)
PARETO_DIR = "pareto"
TRIALS_CSV = "trials.csv"
PARETO_CSV = "pareto.csv"
PARETO_JSON = "pareto.json"
PARETO_PNG = "pareto.png"
PARETO_HTML = "pareto.html"


def is_sweep_folder(path: Path) -> bool:
    """A folder made by `scrutable sweep` (it holds spec.yaml)."""
    return (Path(path) / SPEC_FILE).is_file()


def not_a_sweep_folder(path: Path, fix: str = "pass runs/<sweep name>") -> UserError:
    """The one message for a path that is not a sweep folder, with the caller's fix."""
    return UserError(f"{path} is not a sweep folder (no {SPEC_FILE}): {fix}")


@dataclass
class SweepFolder:
    """A sweep folder on this machine, opened once; see the module docstring."""

    path: Path  # absolute
    raw: dict[str, Any]  # spec.yaml as parsed (safe YAML, size-limited)
    overrides: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(
        cls, path: str | Path, overrides: dict[str, str] | None = None, *, fix: str = "pass runs/<sweep name>"
    ) -> SweepFolder:
        """Read spec.yaml (one line naming the problem and `fix` if the path is no sweep folder)."""
        from scrutable.sweep.spec import parse_yaml

        given = Path(path)
        spec_file = given / SPEC_FILE
        if not spec_file.is_file():
            raise not_a_sweep_folder(given, fix)
        try:
            text = spec_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{spec_file} is not UTF-8 text (byte {exc.start}): restore it from a copy") from None
        raw = parse_yaml(text, SPEC_FILE)
        if not isinstance(raw, dict) or not raw.get("name"):
            raise UserError(f"{spec_file} names no sweep: restore it from the MLflow parent run's spec.yaml artifact")
        return cls(given.resolve(), raw, dict(overrides or {}))

    # --- the files -------------------------------------------------------------------------
    @property
    def spec_file(self) -> Path:
        return self.path / SPEC_FILE

    @property
    def pareto_dir(self) -> Path:
        return self.path / PARETO_DIR

    @property
    def name(self) -> str:
        return str(self.raw["name"])

    @property
    def experiment(self) -> str:
        """The MLflow experiment: tracking.experiment, else the sweep's name."""
        return str(self._tracking.get("experiment") or self.name)

    @property
    def mlflow_uri(self) -> str:
        """tracking.uri, else the SQLite store in this folder."""
        return str(self._tracking.get("uri") or mlflow_uri(self.path))

    @property
    def _tracking(self) -> dict[str, Any]:
        tracking = self.raw.get("tracking")
        return tracking if isinstance(tracking, dict) else {}

    # --- the spec --------------------------------------------------------------------------
    @cached_property
    def spec(self) -> SweepSpec:
        """The stored spec, validated as a file (not against this machine: its model paths
        and data folder may be a cluster's), with `storage` (or `local_dir` for a URI
        storage) re-rooted at this folder's parent: the folder may have moved."""
        from scrutable.sweep.spec import spec_from_mapping

        return spec_from_mapping(self.raw, SPEC_FILE, self._rerooted(), checks=False)

    def runnable_spec(self) -> SweepSpec:
        """The stored spec, re-rooted, and checked against this machine as `scrutable sweep`
        checks a sweep file (names resolve, the search fits the model, Optuna's database
        opens, the data folder exists): what running trials from this folder needs."""
        from scrutable.sweep.spec import check_loaded

        check_loaded(self.spec, SPEC_FILE)
        return self.spec

    def _rerooted(self) -> dict[str, str]:
        from scrutable.sweep.storage import is_uri

        stored_storage = self.raw.get("storage")
        where = "local_dir" if isinstance(stored_storage, str) and is_uri(stored_storage) else "storage"
        return {**self.overrides, where: str(self.path.parent)}

    # --- the results -----------------------------------------------------------------------
    def trials(self) -> list[TrialRecord]:
        """Every Tune trial of the sweep, in the order Tune created them (`results.py`)."""
        from scrutable.sweep.results import collect_trials

        return collect_trials(self.path, self.spec)

    def history(self, record: TrialRecord) -> list[dict[str, Any]]:
        return trial_history(record)

    def frontier(self, records: Sequence[TrialRecord] | None = None) -> list[TrialRecord]:
        """The completed trials that beat the baseline and that no other dominates, best first."""
        from scrutable.sweep.frontier import select

        return select(self.trials() if records is None else records, self.spec).frontier


def mlflow_uri(folder: Path) -> str:
    """The SQLite MLflow store of a sweep folder."""
    return f"sqlite:///{Path(folder).resolve() / MLFLOW_DB}"


def optuna_uri(spec: SweepSpec, folder: Path) -> str:
    """The spec's Optuna storage, else the SQLite study in the sweep folder."""
    return spec.optuna_storage or f"sqlite:///{Path(folder) / OPTUNA_DB}"


def trial_history(record: TrialRecord) -> list[dict[str, Any]]:
    """Every report of a trial (Tune's result.json), one per step, in step order."""
    import json

    from scrutable.metrics import keys

    path = None if record.path is None else record.path / RESULT_FILE
    if path is None or not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a killed trial's half line
        if isinstance(row, dict) and isinstance(row.get(keys.TRAIN_STEP), int | float):
            by_step[int(row[keys.TRAIN_STEP])] = row  # a resumed trial's repeat: the later wins
    return [by_step[step] for step in sorted(by_step)]
