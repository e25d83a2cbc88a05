"""The driver's folder copied to a bucket and fetched back (an S3 server on 127.0.0.1, moto),
without Ray: what is uploaded, what is skipped, a live SQLite database copied consistently,
and the folder a `scrutable sweep s3://.../NAME --resume` resumes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import s3_bucket
from scrutable.errors import UserError
from scrutable.sweep import driver_sync

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bucket(monkeypatch):
    with s3_bucket(monkeypatch) as s3:
        yield s3


def keys(s3, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket="sweeps", Prefix=prefix).get("Contents", []))


def driver_folder(root: Path) -> Path:
    folder = root / "quickstart"
    (folder / "pareto").mkdir(parents=True)
    (folder / "tune" / "trial_1").mkdir(parents=True)
    (folder / "spec.yaml").write_text("name: quickstart\n")
    (folder / "pareto" / "pareto.json").write_text('{"frontier": []}')
    (folder / "tune" / "trial_1" / "result.json").write_text("{}")  # the experiment's local mirror
    (folder / "optuna.db-journal").write_text("")  # transient
    return folder


def test_upload_copies_the_driver_folder_and_skips_the_mirror_and_unchanged_files(bucket, tmp_path):
    folder = driver_folder(tmp_path)
    writer = sqlite3.connect(folder / "mlflow.db")
    writer.execute("create table runs (id text)")
    writer.execute("insert into runs values ('first')")
    writer.commit()
    writer.execute("insert into runs values ('uncommitted')")  # a write in flight, as in a live sweep

    uploader = driver_sync.Uploader(folder, "s3://sweeps/team", "quickstart")
    assert uploader.upload() == 3
    assert keys(bucket, "team/quickstart/") == [
        "team/quickstart/driver/mlflow.db",
        "team/quickstart/driver/pareto/pareto.json",
        "team/quickstart/driver/spec.yaml",
    ]
    assert uploader.upload() == 1  # unchanged files are not sent again; a database always is
    (folder / "pareto" / "pareto.json").write_text('{"frontier": [1]}')
    assert uploader.upload() == 2
    writer.rollback()
    writer.close()

    fetched = tmp_path / "fresh" / "quickstart"
    assert driver_sync.fetch("s3://sweeps/team/quickstart", fetched)
    rows = sqlite3.connect(fetched / "mlflow.db").execute("select id from runs").fetchall()
    assert rows == [("first",)]  # the committed state, a valid database
    assert json.loads((fetched / "pareto" / "pareto.json").read_text()) == {"frontier": [1]}
    assert not (fetched / "tune").exists()


def test_fetch_keeps_a_local_sweep_and_names_a_missing_driver_folder(bucket, tmp_path):
    folder = driver_folder(tmp_path)
    assert not driver_sync.fetch("s3://sweeps/team/quickstart", folder)  # the local folder is the live one
    with pytest.raises(UserError, match=r"s3://sweeps/team/other holds no driver folder"):
        driver_sync.fetch("s3://sweeps/team/other", tmp_path / "other")


def test_resume_folder_is_local_dir_slash_name_with_the_uris_storage(bucket, tmp_path):
    driver_sync.Uploader(driver_folder(tmp_path / "old-head"), "s3://sweeps/team", "quickstart").upload()
    folder, overrides = driver_sync.resume_folder(
        "s3://sweeps/team/quickstart/", {"local_dir": json.dumps(str(tmp_path / "new-head")), "concurrency": "2"}
    )
    assert folder == (tmp_path / "new-head" / "quickstart").resolve()
    assert (folder / "spec.yaml").read_text() == "name: quickstart\n"
    assert overrides == {
        "local_dir": json.dumps(str(tmp_path / "new-head")),
        "concurrency": "2",
        "storage": '"s3://sweeps/team"',
    }
    with pytest.raises(UserError, match="names no sweep"):
        driver_sync.resume_folder("s3://sweeps", {})


def test_a_bucket_sweep_without_resume_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "scrutable.cli", "sweep", "s3://sweeps/team/quickstart"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "scrutable: error: s3://sweeps/team/quickstart is a sweep in a bucket: pass --resume to finish it"
    ]
