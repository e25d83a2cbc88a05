"""`scrutable ui FOLDER`: MLflow's tracking server on a sweep folder, bound to 127.0.0.1.

    scrutable ui runs/quickstart --port 5000
    # MLflow runs of sweep 'quickstart': http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning

Prints the link to the sweep experiment's runs table in MLflow 3's "Model training" view
(`#/experiments/<id>/runs?workflowType=machine_learning`; a bare experiment link opens on
the GenAI overview of traces, and without `workflowType` the sidebar stays on GenAI), opens
it in a browser when this machine has a display, then replaces itself with
`mlflow server --serve-artifacts --artifacts-destination FOLDER/mlartifacts`: the
artifacts are served from the folder given, whose store names them by folder-relative
`mlflow-artifacts:/` URIs (`sweep/artifacts.py`), so a copied or moved folder shows them.

Exec, not a child process: Ctrl-C or `kill` reach the server itself, which stops its
uvicorn worker, so nothing is left listening. Every check comes first and fails with one
line, exit 2, nothing created: a missing folder or store (no empty `mlflow.db` is made),
a port outside 1-65535 or already in use.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, NoReturn

import yaml

from scrutable.errors import UserError
from scrutable.sweep.artifacts import ARTIFACTS_DIR

HOST = "127.0.0.1"  # never another interface: the MLflow server has no authentication
STORE_FILE = "mlflow.db"


def runs_url(port: int, experiment_id: str, host: str = HOST) -> str:
    """The experiment's runs table in MLflow 3's model-training view (checked in headless Chromium
    against MLflow 3.17: the page titled "Runs" with the "Model training" sidebar)."""
    return f"http://{host}:{port}{runs_path(experiment_id)}"


def runs_path(experiment_id: str) -> str:
    return f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def read_folder(folder: Path) -> tuple[str, str]:
    """(experiment name, tracking URI) of a sweep folder, from its spec.yaml alone.

    Not `load_spec`: a folder copied from another machine names data folders that need not
    exist here, and viewing its runs needs none of them."""
    spec_file = folder / "spec.yaml"
    if not folder.is_dir():
        raise UserError(f"sweep folder {folder} does not exist: pass runs/<sweep name>")
    if not spec_file.is_file():
        raise UserError(f"{folder} is not a sweep folder (no spec.yaml): pass runs/<sweep name>")
    try:
        raw = yaml.safe_load(spec_file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        raise UserError(f"{spec_file} is not valid YAML: restore it from the sweep file") from None
    if not isinstance(raw, dict) or not raw.get("name"):
        raise UserError(f"{spec_file} names no sweep: restore it from the sweep file")
    tracking: dict[str, Any] = raw["tracking"] if isinstance(raw.get("tracking"), dict) else {}
    experiment = str(tracking.get("experiment") or raw["name"])
    uri = tracking.get("uri") or f"sqlite:///{(folder / STORE_FILE).resolve()}"
    return experiment, str(uri)


def sqlite_experiment_id(db: Path, experiment: str) -> str:
    """The experiment's id, read without writing (MLflow's client would migrate the file)."""
    if not db.is_file():
        raise UserError(f"{db} does not exist: this sweep has no MLflow store yet (run the sweep first)")
    try:
        with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as connection:
            row = connection.execute(
                "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'", (experiment,)
            ).fetchone()
    except sqlite3.Error as exc:
        raise UserError(f"{db} is not a readable MLflow store ({exc}): pass the sweep's own folder") from None
    if row is None:
        raise UserError(f"{db} holds no experiment '{experiment}': pass the folder of that sweep")
    return str(row[0])


def check_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server binds (uvicorn sets SO_REUSEADDR): a port held only by the last run's
        # closed connections (TIME_WAIT, about a minute) is free for it; a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            raise UserError(
                f"cannot listen on {HOST}:{port} ({exc.strerror or exc}): pass --port with a free port"
            ) from None


def server_command(uri: str, folder: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str((folder / ARTIFACTS_DIR).resolve()),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def has_display() -> bool:
    """A graphical browser can open: macOS, Windows, or an X11/Wayland display."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_when_up(url: str, port: int, timeout_s: float = 120.0) -> None:
    """Open `url` in the default browser once the server answers, from a detached process
    (this one is about to become the server)."""
    script = textwrap.dedent(
        f"""
        import socket, time, webbrowser
        deadline = time.monotonic() + {timeout_s}
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("{HOST}", {port}), timeout=1).close()
            except OSError:
                time.sleep(0.5)
                continue
            webbrowser.open({url!r})
            break
        """
    )
    subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def serve(folder: Path, port: int, *, open_browser: bool = True) -> int:
    experiment, uri = read_folder(Path(folder))
    if uri.startswith(("http://", "https://")):
        return _remote(uri, experiment)
    if uri.startswith("sqlite:///"):
        experiment_id = sqlite_experiment_id(Path(uri.removeprefix("sqlite:///")), experiment)
    else:
        raise UserError(f"tracking store {uri} is neither SQLite nor a server: open it with `mlflow server` yourself")
    check_port(port)
    url = runs_url(port, experiment_id)
    print(f"MLflow runs of sweep '{experiment}': {url}", flush=True)
    print(f"  (store {uri}, artifacts from {Path(folder) / ARTIFACTS_DIR}; Ctrl-C to stop)", flush=True)
    if open_browser and has_display():
        open_when_up(url, port)
    _exec(server_command(uri, Path(folder), port))


def _remote(uri: str, experiment: str) -> int:
    """A sweep tracked on a server: its own UI already shows the runs; print where."""
    import mlflow

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        found: Any = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception as exc:  # MLflow raises many types for "cannot reach the server"
        raise UserError(f"tracking server {uri} is unreachable ({type(exc).__name__}): start it first") from None
    if found is None:
        raise UserError(f"tracking server {uri} holds no experiment '{experiment}'")
    print(f"MLflow runs of sweep '{experiment}': {uri.rstrip('/')}{runs_path(found.experiment_id)}")
    return 0


def _exec(command: list[str]) -> NoReturn:
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job-runner processes
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)
