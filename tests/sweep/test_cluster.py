"""Sweeps on a multi-node Ray cluster, all on this machine: a head (no CPU for trials) and
two worker nodes of one CPU each, one of them with a logical GPU, bound to 127.0.0.1.

- `scrutable sweep --address` runs its trials on both workers (the node id each trial
  reports) while exactly one scorer actor, placed on the GPU node, serves them all;
- `storage: s3://...` against an S3 server on 127.0.0.1 (moto) puts every checkpoint in the
  bucket, keeps the driver's files in `local_dir`, and `--resume` after a killed driver
  continues from the bucket's checkpoints without re-running anything;
- a storage path that one node cannot see (a worker in its own mount namespace) is refused
  with one line before any trial starts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import ray
from ray.cluster_utils import Cluster

from scrutable.sweep.artifacts import local_path
from scrutable.sweep.launcher import _loopback_only

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """Head + CPU worker + GPU worker, every node advertising (and binding) 127.0.0.1."""
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    ray.shutdown()
    with _loopback_only():
        built = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        cpu_node = built.add_node(num_cpus=1, resources={"cpu_node": 1})
        gpu_node = built.add_node(num_cpus=1, num_gpus=1, resources={"gpu_node": 1})
        built.wait_for_nodes()
        ray.init(address=built.address, namespace="scrutable", log_to_driver=False)
    yield built, cpu_node.node_id, gpu_node.node_id
    ray.shutdown()
    built.shutdown()


def sweep_command(address: str, *settings: str) -> list[str]:
    args = [sys.executable, "-m", "scrutable.cli", "sweep", str(REPO / "sweeps" / "quickstart.yaml"), "--smoke"]
    args += ["--address", address]
    for setting in ("scorer_resources.gpu=0.5", "training.steps=4", *settings):
        args += ["--set", setting]
    return args


def driver_env() -> dict[str, str]:
    # The driver joins a loopback cluster from this machine: it must resolve its own IP the same way.
    # (Ray would otherwise rewrite 127.0.0.1 to this machine's routable address, where the
    # loopback-only GCS does not answer.) A real cluster's nodes use their real addresses.
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


def trial_reports(tune_dir: Path) -> dict[str, list[dict]]:
    return {
        path.parent.name: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for path in tune_dir.glob("*/result.json")
    }


def scorer_actors(sweep: str) -> list[dict]:
    from ray._private.state import actors  # the GCS actor table: dead actors stay listed

    return [a for a in actors().values() if a.get("Name") == f"scorer-{sweep}"]


def test_trials_spread_over_nodes_and_one_scorer_on_the_gpu_node(cluster, tmp_path):
    built, cpu_node, gpu_node = cluster
    started = time.monotonic()
    done = subprocess.run(
        sweep_command(built.address, f"storage={tmp_path}", "name=spread", "trials=2", "concurrency=2"),
        env=driver_env(),
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    reports = trial_reports(tmp_path / "spread" / "tune")
    assert len(reports) == 2
    nodes = {report[-1]["ray/node_id"] for report in reports.values()}
    assert nodes == {cpu_node, gpu_node}, nodes  # both workers ran trials, the CPU-less head none

    (scorer,) = scorer_actors("spread")  # exactly one actor served the sweep...
    assert scorer["Address"]["NodeID"] == gpu_node  # ...on the node with the GPU
    assert scorer["NumRestarts"] == 0
    print(f"multi-node sweep: {time.monotonic() - started:.0f} s")


def test_s3_storage_holds_checkpoints_and_resume_reads_them(cluster, tmp_path, monkeypatch):
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    built, _, _ = cluster
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3_env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
        }
        for key, value in s3_env.items():
            monkeypatch.setenv(key, value)  # workers run in this machine's environment, as on EC2 with a role
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="sweeps")
        local = tmp_path / "local"
        command = sweep_command(
            built.address, "storage=s3://sweeps/team", f"local_dir={local}", "trials=2", "concurrency=1"
        )
        started = time.monotonic()
        first = subprocess.Popen(command, env=driver_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in first.stdout:  # stop the driver once a trial has finished
            seen.append(line)
            if "1/2 trials done" in line:
                break
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
        assert first.returncode == 130, "".join(seen[-30:])

        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="sweeps", Prefix="team/quickstart/tune/")["Contents"]]
        assert any("/checkpoint_" in k and k.endswith("state.pt") for k in keys)  # checkpoints in the bucket
        assert any(Path(k).name.startswith("experiment_state-") for k in keys)
        assert (local / "quickstart" / "mlflow.db").is_file() and (local / "quickstart" / "optuna.db").is_file()
        assert not (Path.cwd() / "s3:").exists() and not (REPO / "s3:").exists()  # never a folder named s3:

        # Resume from the bucket: the driver's local mirror of the experiment goes away first,
        # so only the bucket can supply the trials' state.
        shutil.rmtree(local / "quickstart" / "tune", ignore_errors=True)
        second = subprocess.run([*command, "--resume"], env=driver_env(), capture_output=True, text=True, timeout=420)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        print(f"S3 sweep with kill and resume: {time.monotonic() - started:.0f} s")

        reports = trial_reports(local / "quickstart" / "tune")  # mirrored back from the bucket for the export
        assert len(reports) == 2
        for name, rows in reports.items():
            steps = [row["train/step"] for row in rows if "train/step" in row]  # evaluations, not step reports
            assert steps == sorted(set(steps)), (name, steps)  # nothing re-ran after the resume
            assert max(steps) == 4
        assert (local / "quickstart" / "pareto" / "pareto.json").is_file()
        client = mlflow.MlflowClient(f"sqlite:///{local / 'quickstart' / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
        kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(kids) == 2 and all(r.info.status == "FINISHED" for r in kids)
        for kid in kids:  # the final card, read from the bucket's checkpoint by the driver
            assert (local_path(local / "quickstart", kid.info.artifact_uri) / "card.json").is_file()
        after = [o["Key"] for o in s3.list_objects_v2(Bucket="sweeps", Prefix="team/quickstart/tune/")["Contents"]]
        assert len([k for k in after if Path(k).name.startswith("experiment_state-")]) >= 2  # two sessions
    finally:
        server.stop()


def test_node_local_storage_on_a_multi_node_cluster_is_refused(cluster, tmp_path):
    """A worker whose view of the storage path is its own (a private tmpfs over it) must
    make the sweep fail before any trial, with one line naming the path."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to give one node a private mount")
    built, _, _ = cluster
    storage = tmp_path / "node-local"
    storage.mkdir()
    # A worker node (raylet and its workers) in its own mount namespace, with an empty
    # tmpfs over the storage path: that node cannot see what the driver writes there.
    node_script = (
        "import signal, sys; from ray._private.node import Node; from ray._private.parameter import RayParams;"
        "p = RayParams(gcs_address=sys.argv[1], node_ip_address='127.0.0.1', num_cpus=1, resources={'private': 1},"
        " include_log_monitor=False, node_manager_port=0, min_worker_port=0, max_worker_port=0,"
        " object_store_memory=150 * 1024 * 1024);"
        "node = Node(p, head=False, shutdown_at_exit=True, spawn_reaper=True);"
        "signal.sigwait({signal.SIGTERM}); node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)"
    )
    private = subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount -t tmpfs tmpfs {storage} && exec "$0" -c "$1" "$2"',
            sys.executable,
            node_script,
            built.address,
        ],
        env=driver_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len([n for n in ray.nodes() if n["Alive"]]) < 4:
            assert time.monotonic() < deadline and private.poll() is None, "the private-mount node did not join"
            time.sleep(1)
        done = subprocess.run(
            sweep_command(built.address, f"storage={storage}", "name=refused"),
            env=driver_env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "is node-local" in lines[0] and str(storage) in lines[0], done.stderr
        assert "Traceback" not in done.stderr + done.stdout
        assert not list(storage.glob("refused/tune/*/result.json"))  # no trial ran
    finally:
        private.send_signal(signal.SIGTERM)
        private.wait(timeout=60)
