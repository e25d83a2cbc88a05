"""A resume that cannot lose finished trials or write outside its folder, checked without Ray:
Tune's failed-restore log record becomes a refusal (`sweep/tune_log.py`), and the folder's
databases are read, read-only, before anything is written (`resume.check_stores`).
The whole path, with Ray and every state file corrupted in turn, is in
test_resume_corruption.py."""

from __future__ import annotations

import logging
import os
import sqlite3

import optuna
import pytest
import yaml

from helpers import tiny_spec
from scrutable.errors import UserError
from scrutable.sweep import tracking
from scrutable.sweep.resume import check_stores
from scrutable.sweep.spec import spec_from_mapping
from scrutable.sweep.tune_log import CONTROLLER_LOGGER, LOG_FILE, RESTORE_FAILED, RestoreFailed, tune_log

SPEC = tiny_spec()


def failed_restore() -> None:
    """What TuneController.__init__ does when resume() raises (ray/tune/execution/tune_controller.py)."""
    try:
        raise EOFError("Ran out of input")  # a truncated searcher-state pickle
    except Exception:
        logging.getLogger(CONTROLLER_LOGGER).exception(RESTORE_FAILED)
        logging.getLogger(CONTROLLER_LOGGER).info("Restarting experiment.")


def test_a_failed_restore_is_refused_and_its_traceback_kept_in_tune_log(tmp_path):
    tune_logger = logging.getLogger("ray.tune")
    before = tune_logger.level, tune_logger.propagate, list(tune_logger.handlers)
    refused = pytest.raises(RestoreFailed, match=r"could not restore .*EOFError: Ran out of input.*before anything")
    with refused, tune_log(tmp_path, resume=True):
        failed_restore()
    log = (tmp_path / LOG_FILE).read_text()
    assert RESTORE_FAILED in log and "EOFError: Ran out of input" in log and "Traceback" in log
    assert (tune_logger.level, tune_logger.propagate, list(tune_logger.handlers)) == before


def test_a_new_sweep_logs_tune_errors_without_refusing_and_shows_whole_sweep_warnings(tmp_path, capsys):
    with tune_log(tmp_path, resume=False):
        failed_restore()  # not a resume: nothing to protect, Tune carries on
        logging.getLogger("ray.tune.execution.insufficient_resources_manager").warning(
            "No trial is running and no new trial has been started within the last 60 seconds.\nThe cluster..."
        )
        logging.getLogger("ray.tune.some.module").info("chatter below WARNING is not kept")
    log = (tmp_path / LOG_FILE).read_text()
    assert RESTORE_FAILED in log and "No trial is running" in log and "chatter" not in log
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ray tune: No trial is running") and "The cluster" in err


@pytest.fixture
def folder(tmp_path):
    """A sweep folder as a sweep leaves it: spec.yaml, mlflow.db with the experiment and a
    parent run, optuna.db with the study."""
    spec = spec_from_mapping({**SPEC, "storage": str(tmp_path)}, "spec")
    path = spec.folder()
    path.mkdir(parents=True)
    (path / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    tracking.connect(tracking.default_uri(path), spec.name, path)
    optuna.create_study(study_name=spec.name, storage=f"sqlite:///{path / 'optuna.db'}")
    return spec, path


def test_an_untouched_folder_passes(folder):
    check_stores(folder[1], folder[0])


@pytest.mark.parametrize(
    "location",
    [
        "file:///tmp/elsewhere",  # another place on disk
        "mlflow-artifacts:/../../outside",  # a proxied URI that climbs out of mlartifacts/
        "/tmp/plain-path",
        "",
    ],
)
@pytest.mark.parametrize("table, column", [("experiments", "artifact_location"), ("runs", "artifact_uri")])
def test_a_store_sending_artifacts_outside_the_folder_is_refused(folder, location, table, column):
    spec, path = folder
    with sqlite3.connect(path / "mlflow.db") as db:
        db.execute(f"UPDATE {table} SET {column} = ?", (location,))  # noqa: S608 - names from the parameters above
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    with pytest.raises(UserError, match="outside"):
        check_stores(path, spec)
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == before  # read-only: nothing touched


@pytest.mark.parametrize("name", ["mlflow.db", "optuna.db"])
def test_a_corrupt_database_is_one_line(folder, name):
    spec, path = folder
    size = (path / name).stat().st_size
    (path / name).write_bytes(os.urandom(size))
    with pytest.raises(UserError, match=f"{name} cannot be read"):
        check_stores(path, spec)


def test_an_optuna_db_without_the_study_is_refused(folder):
    spec, path = folder
    optuna.delete_study(study_name=spec.name, storage=f"sqlite:///{path / 'optuna.db'}")
    with pytest.raises(UserError, match="holds no study named 't'"):
        check_stores(path, spec)
