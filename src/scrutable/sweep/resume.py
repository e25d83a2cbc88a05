"""What `--resume` may change: the stored spec is the sweep; only its concurrency may differ.

A sweep folder keeps the spec it was started with (`spec.yaml`). Resuming with another
method, task, search space or number of trials would mix two experiments in one Optuna
study and one MLflow parent run (and a changed `trials` left every resume "interrupted"),
so `check_compatible` refuses it in one line naming the differing fields, before anything
in the folder is rewritten. What may change, because it does not change any trial's
result: `concurrency` (how many trials run at once) and `storage` / `local_dir` (where
the folder now lives: a moved or copied folder; with a URI storage the driver's folder is
under `local_dir`). More trials are not supported: Ray Tune restores the
planned number from its own state.

    scrutable sweep runs/quickstart --resume                 # the stored spec
    scrutable sweep runs/quickstart --resume --set concurrency=4
    scrutable sweep s3://bucket/sweeps/quickstart --resume   # a fresh head: the driver's folder
                                                             #   is fetched first (driver_sync.py)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scrutable.errors import UserError
from scrutable.sweep.folder import ARTIFACTS_DIR, MLFLOW_DB, OPTUNA_DB, SweepFolder, mlflow_uri
from scrutable.sweep.spec import SweepSpec

MAY_CHANGE = ("concurrency", "storage", "local_dir")


def stored_spec(folder: Path, overrides: dict[str, str] | None = None) -> SweepSpec:
    """The spec a sweep folder was started with, re-rooted where the folder is now (`SweepFolder`),
    complete, with its data here, in the folder named after the sweep: ready to run again."""
    opened = SweepFolder.open(folder, overrides)
    _check_complete(opened.raw, opened.spec_file)
    spec = opened.runnable_spec()
    if spec.name != folder.name:
        raise UserError(
            f"{folder} holds sweep '{spec.name}' (its Optuna study and MLflow experiment carry that name): "
            f"rename the folder back to {spec.name}"
        )
    return spec


def _check_complete(stored: Any, path: Path) -> None:
    """The driver writes every field of the spec; one missing means a cut or edited file,
    which would otherwise resume with defaults in place of the sweep's own values."""
    from dataclasses import fields

    if not isinstance(stored, dict):
        return  # load_spec names the problem
    missing = [f.name for f in fields(SweepSpec) if f.name not in stored and f.name not in MAY_CHANGE]
    if missing:
        raise UserError(
            f"{path} lacks {', '.join(missing)} (the sweep writes every field: the file was cut or edited): restore "
            "it from the MLflow parent run's spec.yaml artifact, or start a new sweep with --out NEW_FOLDER"
        )


def differing_fields(stored: SweepSpec, given: SweepSpec) -> list[str]:
    """Dotted names of the fields that differ, except those that may change on resume."""

    def walk(a: Any, b: Any, prefix: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            out: list[str] = []
            for key in sorted(set(a) | set(b), key=str):
                out += walk(a.get(key), b.get(key), f"{prefix}{key}.")
            return out
        return [] if a == b else [prefix.rstrip(".")]

    old, new = stored.to_dict(), given.to_dict()
    for key in MAY_CHANGE:
        old.pop(key, None)
        new.pop(key, None)
    return walk(old, new, "")


def check_compatible(stored: SweepSpec, given: SweepSpec, folder: Path) -> None:
    differing = differing_fields(stored, given)
    if differing:
        raise UserError(
            f"{folder} was started with another spec ({', '.join(differing)} differ): resume with the stored one "
            f"(`scrutable sweep {folder} --resume`; only {', '.join(MAY_CHANGE)} may change) or start a new "
            "sweep under another name"
        )


# --- the folder's databases, read before a resume writes anything ---------------------------


def check_stores(folder: Path, spec: SweepSpec) -> None:
    """Refuse a resume whose databases would send writes outside the sweep folder, or that
    cannot be read at all, before MLflow, Optuna or Tune touch them.

    The signature (`sweep/trust.py`) covers Tune's pickles only, so `mlflow.db` is read here:
    the sweep's MLflow experiment and every run in it must have a proxied artifact location
    (`mlflow-artifacts:/...`, `sweep/artifacts.py`) that resolves under
    `<folder>/mlartifacts`. A location changed to another place on disk, or `..` in it,
    would make the resumed driver write card.json, spec.yaml and the Pareto files there.
    `optuna.db` must be a readable SQLite database holding the sweep's study, so a corrupt
    file is one line, not a traceback (and Optuna never starts a blank study in its place).
    Stores elsewhere (a tracking server, a Postgres study) are not the folder's to check."""
    from scrutable.sweep.artifacts import PROXIED, local_path

    fix = "restore the file from a copy, or start a new sweep with --out NEW_FOLDER"
    store = folder / MLFLOW_DB
    if spec.tracking.uri in (None, mlflow_uri(folder)) and store.is_file():
        experiment = spec.tracking.experiment or spec.name
        rows = _query(
            store,
            "SELECT 'experiment ' || e.name, e.artifact_location FROM experiments e WHERE e.name = ? "
            "UNION ALL SELECT 'run ' || r.run_uuid, r.artifact_uri FROM runs r JOIN experiments e "
            "ON r.experiment_id = e.experiment_id WHERE e.name = ?",
            (experiment, experiment),
            fix,
        )
        root = (folder / ARTIFACTS_DIR).resolve()
        for what, location in rows:
            path = local_path(folder, str(location or ""))
            if path is None or not path.resolve().is_relative_to(root):
                raise UserError(
                    f"{store} sends the artifacts of {what} to {str(location)[:200]!r}, outside "
                    f"{root} (expected {PROXIED}:/...): refusing to resume a folder whose store was changed; {fix}"
                )
    optuna_db = folder / OPTUNA_DB
    if spec.optuna_storage is None and optuna_db.is_file():
        studies = _query(optuna_db, "SELECT study_name FROM studies", (), fix)
        if (spec.name,) not in [tuple(row) for row in studies]:
            raise UserError(f"{optuna_db} holds no study named '{spec.name}': {fix}")


def _query(path: Path, sql: str, parameters: tuple[str, ...], fix: str) -> list[Any]:
    """Rows from a SQLite file opened read-only; a corrupt or foreign file is one UserError."""
    import sqlite3

    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return connection.execute(sql, parameters).fetchall()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise UserError(f"{path} cannot be read as the sweep's database ({exc}): {fix}") from None
