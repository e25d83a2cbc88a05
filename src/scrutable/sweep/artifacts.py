"""Where a sweep's MLflow artifacts live, so that a sweep folder can be copied or moved.

MLflow stores each run's artifact location as a URI in the tracking store. With a SQLite
store under the sweep folder, an absolute `file:///.../mlartifacts` URI would tie the
store to the folder's first path (a copied folder's UI shows no artifacts). So a sweep's
experiment is created with a *proxied* location, `mlflow-artifacts:/<experiment>`, which
names a path relative to an artifact root instead of a place on disk:

    <sweep folder>/mlflow.db                        runs with artifact_uri mlflow-artifacts:/<exp>/<run>/artifacts
    <sweep folder>/mlartifacts/<exp>/<run>/artifacts/card.json, card.txt, prompts/...

The driver writes those files itself (`ArtifactWriter`), and `scrutable ui FOLDER` starts
`mlflow server --serve-artifacts --artifacts-destination FOLDER/mlartifacts`, which
resolves the relative URIs against whichever folder it was given. With a tracking server
(`tracking.uri: http://...`) the server decides the location and the writer goes through
the MLflow client as usual.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

from scrutable.sweep.folder import ARTIFACTS_DIR

PROXIED = "mlflow-artifacts"


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:")


def experiment_location(uri: str, experiment: str) -> str | None:
    """The artifact location to create a sweep's experiment with (None: the server's default)."""
    if not is_local_store(uri):
        return None
    return f"{PROXIED}:/{re.sub(r'[^A-Za-z0-9_.-]', '_', experiment)}"


def local_path(folder: Path, artifact_uri: str) -> Path | None:
    """A proxied artifact URI as a path under `folder/mlartifacts`; None for any other URI."""
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme != PROXIED:
        return None
    return Path(folder) / ARTIFACTS_DIR / parsed.path.lstrip("/")


class ArtifactWriter:
    """Log artifacts of a run: into the sweep folder for a local store's proxied URIs, else
    through MLflow (a tracking server resolves its own `mlflow-artifacts:` URIs)."""

    def __init__(self, client: Any, uri: str, folder: Path) -> None:
        self.client = client
        self.local = is_local_store(uri)
        self.folder = Path(folder)
        self._roots: dict[str, Path | None] = {}

    def root(self, run_id: str) -> Path | None:
        if not self.local:
            return None
        if run_id not in self._roots:
            self._roots[run_id] = local_path(self.folder, self.client.get_run(run_id).info.artifact_uri)
        return self._roots[run_id]

    def text(self, run_id: str, text: str, artifact_file: str) -> None:
        root = self.root(run_id)
        if root is None:
            self.client.log_text(run_id, text, artifact_file)
            return
        path = root / artifact_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def json(self, run_id: str, value: Any, artifact_file: str) -> None:
        self.text(run_id, json.dumps(value, indent=2, default=str) + "\n", artifact_file)

    def file(self, run_id: str, local_file: Path, artifact_dir: str | None = None) -> None:
        root = self.root(run_id)
        if root is None:
            self.client.log_artifact(run_id, str(local_file), artifact_dir)
            return
        target = root / (artifact_dir or "") / Path(local_file).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_file, target)
