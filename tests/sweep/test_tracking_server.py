"""A sweep tracked by an MLflow tracking server over HTTP, as on a cluster: the server (on
127.0.0.1, `--serve-artifacts`) receives one parent run and one child per trial, with the
params, step metrics, prompts and final card the SQLite default gets (test_sweep_e2e.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # a whole sweep


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server(tmp_path):
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--serve-artifacts"]
    command += ["--artifacts-destination", str(store / "artifacts"), "--workers", "1"]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, "the MLflow server exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    wait_for(healthy, 300, "the MLflow server", 0.5)
    yield url, store
    process.terminate()
    process.wait(timeout=30)


def test_sweep_writes_parent_and_children_to_a_tracking_server(server, tmp_path):
    url, store = server
    command = [sys.executable, "-m", "scrutable.cli", "sweep", str(REPO / "sweeps" / "quickstart.yaml"), "--smoke"]
    for setting in (f"storage={tmp_path / 'runs'}", f"tracking.uri={url}", "trials=2", "training.steps=2"):
        command += ["--set", setting]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"sweep against the tracking server: {time.monotonic() - started:.0f} s")

    assert not (tmp_path / "runs" / "quickstart" / "mlflow.db").exists()  # nothing went to the SQLite default
    client = mlflow.MlflowClient(url)
    runs = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    parents = [r for r in runs if r.data.tags.get("scrutable.role") == "parent"]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(kids) == 2 and {k.data.tags["mlflow.parentRunId"] for k in kids} == {parents[0].info.run_id}
    assert "sweep_summary.json" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    for kid in kids:
        assert kid.info.status == "FINISHED"
        assert {"alpha", "prompt_length", "method", "model", "scorer", "seed"} <= set(kid.data.params)
        assert {"task/dev_metric", "interp/perplexity"} <= set(kid.data.metrics)
        assert kid.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server, not a local path
        assert {"card.json", "prompts"} <= {a.path for a in client.list_artifacts(kid.info.run_id)}
        local = client.download_artifacts(kid.info.run_id, "card.json", str(tmp_path))  # over HTTP
        assert json.loads(Path(local).read_text())["final"] is True
    assert any((store / "artifacts").rglob("card.json"))  # stored by the server, where it was told
