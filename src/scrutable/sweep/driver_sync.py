"""The driver's folder, kept in the bucket too, so a sweep on a storage URI outlives its head.

With `storage: s3://bucket/sweeps`, Tune's trials and experiment state live in the bucket
(`<storage>/<name>/tune/`), but the driver's own files stay on the head in
`local_dir/<name>/`: `spec.yaml`, MLflow's `mlflow.db` and `mlartifacts/`, Optuna's
`optuna.db`, `pareto/`, `scorer_stats.json`, `sweep_summary.json`. `ray down`, or a lost
head, would take them along. So the driver copies its folder to `<storage>/<name>/driver/`
at each trial's end (`DriverSync`, a Tune callback) and at the sweep's end (`upload`), and

    scrutable sweep s3://bucket/sweeps/NAME --resume --set local_dir=~/runs

on a fresh head downloads it into `~/runs/NAME/` (`fetch`) and resumes from there.

SQLite files are copied with SQLite's online backup API, which gives a consistent snapshot
while MLflow and Optuna hold the database open (a plain file copy can catch a half-written
page); every other file is uploaded when its size or modification time changed. The local
mirror of the experiment (`tune/`) is never uploaded: the bucket holds the original.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

from scrutable.errors import UserError
from scrutable.sweep import storage
from scrutable.sweep.folder import DRIVER_DIR, SPEC_FILE, TUNE_DIR, is_sweep_folder

SQLITE_SUFFIX = ".db"
SKIPPED = (TUNE_DIR,)  # top-level entries not uploaded
TRANSIENT_SUFFIXES = (".db-journal", ".db-wal", ".db-shm", ".lock", ".tmp")


def driver_location(storage_uri: str, name: str) -> str:
    """`<storage>/<name>/driver`: where a sweep's driver folder is copied."""
    return f"{storage_uri.rstrip('/')}/{name}/{DRIVER_DIR}"


def _files(folder: Path) -> list[Path]:
    out = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if relative.parts[0] in SKIPPED or not path.is_file() or path.name.endswith(TRANSIENT_SUFFIXES):
            continue
        out.append(path)
    return out


def _sqlite_snapshot(path: Path, into: Path) -> None:
    """A consistent copy of a live SQLite database (the online backup API)."""
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    target = sqlite3.connect(into)
    try:
        with target:
            source.backup(target)
    finally:
        target.close()
        source.close()


class Uploader:
    """Copies a driver folder to its place under a storage URI, skipping unchanged files."""

    def __init__(self, folder: Path, storage_uri: str, name: str) -> None:
        self.folder = folder
        self.location = driver_location(storage_uri, name)
        self._sent: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) last uploaded

    def upload(self) -> int:
        """Upload what changed since the last call; returns the number of files sent."""
        fs, root = storage.filesystem(self.location)
        sent = 0
        with tempfile.TemporaryDirectory(prefix="scrutable-driver-") as scratch:
            for path in _files(self.folder):
                relative = path.relative_to(self.folder).as_posix()
                stat = path.stat()
                if path.suffix == SQLITE_SUFFIX:  # always: a live database changes under the same mtime
                    source = Path(scratch) / path.name
                    _sqlite_snapshot(path, source)
                elif self._sent.get(relative) == (stat.st_size, stat.st_mtime_ns):
                    continue
                else:
                    source = path
                with source.open("rb") as read, fs.open_output_stream(f"{root}/{relative}") as write:
                    shutil.copyfileobj(read, write, 1 << 20)
                self._sent[relative] = (stat.st_size, stat.st_mtime_ns)
                sent += 1
        return sent

    def try_upload(self) -> None:
        """`upload`, but a failure is a warning: the sweep goes on, the next call retries."""
        try:
            self.upload()
        except Exception as exc:  # a network error must not stop a running sweep
            print(
                f"warning: could not copy the driver's folder to {self.location} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})",
                file=sys.stderr,
                flush=True,
            )


def callback(uploader: Uploader) -> Any:
    """A Tune callback that uploads the driver's folder after each trial ends (done or failed).

    Placed after the MLflow callback in the list, so the trial's MLflow rows are in the copy."""
    from ray.tune import Callback

    class DriverSync(Callback):
        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            uploader.try_upload()

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            uploader.try_upload()

    return DriverSync()


def fetch(sweep_uri: str, local: Path) -> bool:
    """Download `<sweep_uri>/driver/` into `local` when `local` holds no sweep yet.

    Returns True when files were downloaded; False when `local` already holds a sweep
    folder (its files are the live ones: the bucket's copy is at most as new)."""
    import pyarrow.fs

    if is_sweep_folder(local):
        return False
    remote = f"{sweep_uri.rstrip('/')}/{DRIVER_DIR}"
    fs, root = storage.filesystem(remote)
    info = fs.get_file_info(f"{root}/{SPEC_FILE}")
    if info.type != pyarrow.fs.FileType.File:
        raise UserError(
            f"{sweep_uri} holds no driver folder ({remote}/{SPEC_FILE} is missing): pass the sweep's folder "
            "s3://BUCKET/PREFIX/NAME, or resume on the machine that ran it (`scrutable sweep LOCAL_DIR/NAME --resume`)"
        )
    local.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(root, str(local), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    return True


def resume_folder(sweep_uri: str, overrides: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """`scrutable sweep s3://bucket/prefix/NAME --resume`: the local driver folder to resume, and
    the overrides that re-root its spec (storage: the URI's parent, where Tune's state is).

    The folder is `<local_dir>/NAME`, `local_dir` from `--set local_dir=...` or the default."""
    import yaml

    from scrutable.sweep.spec import SweepSpec

    sweep_uri = sweep_uri.rstrip("/")
    parent, _, name = sweep_uri.rpartition("/")
    if not name or "://" not in parent:
        raise UserError(f"{sweep_uri} names no sweep: pass s3://BUCKET/PREFIX/NAME (the storage URI, then the name)")
    local_dir = overrides.get("local_dir")
    base = yaml.safe_load(local_dir) if local_dir is not None else SweepSpec.__dataclass_fields__["local_dir"].default
    folder = Path(str(base)).expanduser().resolve() / name
    if fetch(sweep_uri, folder):
        print(f"driver folder fetched from {sweep_uri}/{DRIVER_DIR} into {folder}", flush=True)
    else:
        print(f"resuming with the driver folder already at {folder}", flush=True)
    return folder, {**overrides, "storage": json.dumps(parent)}
