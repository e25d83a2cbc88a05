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

Views without clicks. MLflow 3.17 keeps the runs table's columns in the browser's local
storage, so a fresh browser shows Created/Dataset/Duration/Source and none of the 94
params and metrics a sweep logs. It also offers saved views: an experiment tag
`mlflow.sharedViewState.<key>` holding `{name, createdAt, updatedAt, state}`, where
`state` is the runs page's search facets and UI state (selected columns, their order and
widths, sort, filter, chart cards) as JSON; `?viewStateShareKey=<key>` in the runs URL
opens it, and the page's "Views" menu lists it (checked in MLflow 3.17's UI bundle and in
headless Chromium). A URL alone cannot choose columns (only the search facets travel in
the URL, and any facet in it disables the saved view), and the legacy compare-runs page
picks its parallel-coordinates axes itself (the first three differing params and the
first logged metric, `step/loss`). So the sweep writes two views when it connects
(`view_tags`), and `scrutable ui` links to them:

    scrutable          the trials (child runs): objectives, alpha, L and the prompt,
                       best first by the first objective
    scrutable-frontier the frontier's runs (tag `pareto_frontier` = yes, set at the
                       sweep's end) in the chart view: parallel coordinates of the searched
                       values and objectives, and the objectives' scatter
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from scrutable.errors import UserError
from scrutable.sweep.folder import ARTIFACTS_DIR, MLFLOW_DB, SweepFolder

HOST = "127.0.0.1"  # never another interface: the MLflow server has no authentication
DEFAULT_PORT = 5000  # `scrutable ui --port`'s default

# --- saved views (see the module docstring) ------------------------------------------------
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow 3.17's saved views are experiment tags
RUNS_VIEW = "scrutable"
FRONTIER_VIEW = "scrutable-frontier"
PROMPT_TAG = "prompt"  # a trial run's prompt, set at every evaluation (`tracking.py`)
FRONTIER_TAG = "pareto_frontier"  # "yes"/"no" on every trial run, set when the frontier is exported
RUN_NAME_COLUMN = "attributes.`Run Name`"
_SECTION = "scrutable-frontier-charts"  # the chart section's id inside the frontier view
# Widths in pixels: at 1600 px with MLflow's assistant panel open (it opens on a browser's
# first visit) the searched values and objectives stay visible; the prompt takes the rest.
_WIDTHS = {"run": 115, "param": 80, "metric": 115, "prompt": 260, "frontier": 110}


def runs_url(port: int, experiment_id: str, host: str = HOST, *, view: str | None = None) -> str:
    """The experiment's runs table in MLflow 3's model-training view (checked in headless Chromium
    against MLflow 3.17: the page titled "Runs" with the "Model training" sidebar), opened on
    the saved `view` when given."""
    return f"http://{host}:{port}{runs_path(experiment_id, view)}"


def runs_path(experiment_id: str, view: str | None = None) -> str:
    path = f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if view is None:
        return path
    # The frontier view opens on the chart view (compareRunsMode is not a search facet, so
    # the saved view still applies).
    return path + f"&viewStateShareKey={view}" + ("&compareRunsMode=CHART" if view == FRONTIER_VIEW else "")


def _column(kind: str, key: str) -> str:
    """MLflow's canonical column key: `metrics.`task/dev_objective``."""
    return f"{kind}.`{key}`"


def _table_state(metrics: Sequence[str], directions: Sequence[str], searched: Sequence[str]) -> dict[str, Any]:
    """Columns, order, widths and sort shared by both views: searched values, objectives, prompt."""
    params = [_column("params", name) for name in searched]
    objectives = [_column("metrics", metric) for metric in metrics]
    prompt, frontier = _column("tags", PROMPT_TAG), _column("tags", FRONTIER_TAG)
    widths = {RUN_NAME_COLUMN: _WIDTHS["run"], prompt: _WIDTHS["prompt"], frontier: _WIDTHS["frontier"]}
    widths |= {c: _WIDTHS["param"] for c in params} | {c: _WIDTHS["metric"] for c in objectives}
    return {
        "orderByKey": objectives[0],
        "orderByAsc": directions[0] == "min",  # best first by the first objective
        "selectedColumns": [*params, *objectives, prompt, frontier],
        "columnOrder": [RUN_NAME_COLUMN, *params, *objectives, prompt, frontier],
        "columnWidths": widths,
        "runsHiddenMode": "SHOW_ALL",  # charts show every run, not MLflow's default first 10
    }


def runs_view_state(
    metrics: Sequence[str], directions: Sequence[str], searched: Sequence[str], trial_tag: str
) -> dict[str, Any]:
    """The trials view: child runs only (the parent run would fold them under one row)."""
    return {"searchFilter": f"tags.`{trial_tag}` LIKE '%'", **_table_state(metrics, directions, searched)}


def frontier_view_state(metrics: Sequence[str], directions: Sequence[str], searched: Sequence[str]) -> dict[str, Any]:
    """The frontier's runs in the chart view: parallel coordinates from the searched values to
    the objectives, and (two or more objectives) the first two objectives' scatter."""
    card = {"runsCountToCompare": 100, "metricSectionId": _SECTION, "deleted": False, "isGenerated": False}
    charts: list[dict[str, Any]] = [
        {
            **card,
            "uuid": f"{_SECTION}-parallel",
            "type": "PARALLEL",
            "selectedParams": list(searched),
            "selectedMetrics": list(metrics),
            "showAllRuns": True,
        }
    ]
    if len(metrics) >= 2:  # the trade-off as in pareto.png: the second objective across
        charts.append(
            {
                **card,
                "uuid": f"{_SECTION}-scatter",
                "type": "SCATTER",
                "xaxis": {"key": metrics[1], "type": "METRIC"},
                "yaxis": {"key": metrics[0], "type": "METRIC"},
            }
        )
    section = {"uuid": _SECTION, "name": "Pareto frontier", "display": True, "isReordered": False}
    section |= {"columns": 2, "cardHeight": 420}  # two wide cards (MLflow's default: three of 360 px)
    return {
        "searchFilter": f"tags.`{FRONTIER_TAG}` = 'yes'",
        **_table_state(metrics, directions, searched),
        "compareRunSections": [{**section, "deleted": False, "isGenerated": False}],
        "compareRunCharts": charts,
        "isAccordionReordered": True,  # keeps this section above MLflow's generated ones
    }


def view_tags(
    metrics: Sequence[str], directions: Sequence[str], searched: Sequence[str], trial_tag: str
) -> dict[str, str]:
    """The experiment tags holding both saved views, in MLflow 3.17's envelope."""
    now = int(time.time() * 1000)

    def envelope(name: str, state: dict[str, Any]) -> str:
        return json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})

    return {
        VIEW_TAG_PREFIX + RUNS_VIEW: envelope(
            "scrutable: trials (objectives, searched values, prompt)",
            runs_view_state(metrics, directions, searched, trial_tag),
        ),
        VIEW_TAG_PREFIX + FRONTIER_VIEW: envelope(
            "scrutable: Pareto frontier (charts)", frontier_view_state(metrics, directions, searched)
        ),
    }


def stored_views(db: Path, experiment_id: str) -> set[str]:
    """The saved views' keys in a SQLite store, read without writing (empty for an older sweep)."""
    try:
        with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as connection:
            rows = connection.execute(
                "SELECT key FROM experiment_tags WHERE experiment_id = ? AND key LIKE ?",
                (experiment_id, VIEW_TAG_PREFIX + "%"),
            ).fetchall()
    except sqlite3.Error:
        return set()
    return {str(key).removeprefix(VIEW_TAG_PREFIX) for (key,) in rows}


def frontier_url(folder: Path, port: int = DEFAULT_PORT) -> str | None:
    """The link to the frontier's chart view that `scrutable ui FOLDER --port PORT` serves, or
    None when the folder's store holds no frontier view (an older sweep, or no store yet).

    With a tracking server, the link is on the server and `port` is not used."""
    experiment, uri = read_folder(Path(folder))
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        try:
            experiment_id = sqlite_experiment_id(db, experiment)
        except UserError:
            return None
        if FRONTIER_VIEW not in stored_views(db, experiment_id):
            return None
        return runs_url(port, experiment_id, view=FRONTIER_VIEW)
    if uri.startswith(("http://", "https://")):
        found = _server_experiment(uri, experiment)
        if found is None or VIEW_TAG_PREFIX + FRONTIER_VIEW not in found.tags:
            return None
        return uri.rstrip("/") + runs_path(found.experiment_id, FRONTIER_VIEW)
    return None


def _server_experiment(uri: str, experiment: str) -> Any:
    import mlflow

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        return mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception:  # MLflow raises many types for "cannot reach the server"
        return None


def read_folder(folder: Path) -> tuple[str, str]:
    """(experiment name, tracking URI) of a sweep folder, from its spec.yaml alone.

    Not `load_spec`: a folder copied from another machine names data folders that need not
    exist here, and viewing its runs needs none of them."""
    if not folder.is_dir():
        raise UserError(f"sweep folder {folder} does not exist: pass runs/<sweep name>")
    opened = SweepFolder.open(folder)
    return opened.experiment, opened.mlflow_uri


MLFLOW_TABLES = frozenset({"alembic_version", "experiments", "runs", "metrics", "params", "tags"})


def sqlite_experiment_id(db: Path, experiment: str) -> str:
    """The experiment's id, read without writing (MLflow's client would migrate the file)."""
    if not db.is_file():
        raise UserError(f"{db} does not exist: this sweep has no MLflow store yet (run the sweep first)")
    try:
        with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as connection:
            tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = sorted(MLFLOW_TABLES - tables)
            if missing:  # the server would create its schema in it (modify a foreign file), then fail
                raise UserError(
                    f"{db} is not an MLflow store (no {', '.join(missing)} table): pass the folder of a sweep "
                    f"(storage/name), which holds MLflow's {MLFLOW_DB}"
                )
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
    views = stored_views(Path(uri.removeprefix("sqlite:///")), experiment_id)
    url = runs_url(port, experiment_id, view=RUNS_VIEW if RUNS_VIEW in views else None)
    print(f"MLflow runs of sweep '{experiment}': {url}", flush=True)
    if FRONTIER_VIEW in views:
        print(f"  its Pareto frontier, charted: {runs_url(port, experiment_id, view=FRONTIER_VIEW)}", flush=True)
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
    view = RUNS_VIEW if VIEW_TAG_PREFIX + RUNS_VIEW in found.tags else None
    print(f"MLflow runs of sweep '{experiment}': {uri.rstrip('/')}{runs_path(found.experiment_id, view)}")
    if VIEW_TAG_PREFIX + FRONTIER_VIEW in found.tags:
        print(f"  its Pareto frontier, charted: {uri.rstrip('/')}{runs_path(found.experiment_id, FRONTIER_VIEW)}")
    return 0


def _exec(command: list[str]) -> NoReturn:
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job-runner processes
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)
