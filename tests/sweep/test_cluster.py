"""Sweeps on a multi-node Ray cluster, all on this machine: a head (no CPU for trials) and
two worker nodes of one CPU each, one of them with a logical GPU, bound to 127.0.0.1.

- `scrutable sweep --address` runs its trials on both workers (the node id each trial
  reports) while exactly one scorer actor, placed on the GPU node, serves them all;
- `storage: s3://...` against an S3 server on 127.0.0.1 (moto) puts every checkpoint in the
  bucket, keeps the driver's files in `local_dir` and copies them to the bucket after each
  trial (the driver started as the entrypoint of a job whose runtime_env already sets
  HF_TOKEN and SCRUTABLE_DATA_DIR); after a killed driver, `scrutable sweep s3://.../NAME --resume` on a "fresh head"
  (the local folder deleted, another local_dir) fetches them and finishes the sweep from the
  bucket's checkpoints without re-running anything, MLflow history included;
- a storage path declared shared (`--shared-storage`) that one node cannot see (a worker in
  its own mount namespace) is refused with one line before any trial starts, and a plain
  path on a cluster with no worker alive (a head that scales from zero) without the
  declaration.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import ray
from ray.cluster_utils import Cluster

from helpers import evaluation_steps, needs, wait_for
from scrutable.sweep.artifacts import local_path
from scrutable.sweep.launcher import _loopback_only

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # whole sweeps on a 3-node cluster
# The bound on each child sweep: under the test's own timeout, and generous, because a loaded
# machine slows Ray's many processes far more than one (the S3 resume alone took over 420 s
# beside two busy loops on this 2-core machine; 60 s when it is quiet).
CHILD_TIMEOUT = 1500


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


def sweep_command(address: str, *settings: str, target: str | None = None, shared: bool = False) -> list[str]:
    target = target or str(REPO / "sweeps" / "quickstart.yaml")
    smoke = [] if target.startswith("s3://") else ["--smoke"]  # a resumed sweep keeps its stored spec
    args = [sys.executable, "-m", "scrutable.cli", "sweep", target, *smoke]
    args += ["--address", address, *(["--shared-storage"] if shared else [])]
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


def test_a_path_on_a_cluster_with_no_worker_alive_is_refused_by_its_kind(tmp_path):
    """cluster.yaml's shape at the start of a sweep: a head with no CPU for trials and no
    worker yet (min_workers: 0). Counting the nodes alive would pass a node-local path (one
    node); the workers booted later would then lose their checkpoints. Runs before the
    module's three-node cluster starts."""
    with _loopback_only():
        head_only = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        storage = tmp_path / "head-disk"
        done = subprocess.run(
            sweep_command(head_only.address, f"storage={storage}", "name=zero"),
            env=driver_env(),
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,  # the code before this check hung here: no CPU for the first trial, ever
        )
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"storage {storage} is a path on this machine" in lines[0], done.stderr
        assert "--shared-storage" in lines[0] and "s3://" in lines[0]
        assert not storage.exists()  # nothing written
    finally:
        head_only.shutdown()


def test_trials_spread_over_nodes_and_one_scorer_on_the_gpu_node(cluster, tmp_path):
    built, cpu_node, gpu_node = cluster
    started = time.monotonic()
    done = subprocess.run(
        sweep_command(built.address, f"storage={tmp_path}", "name=spread", "trials=2", "concurrency=2", shared=True),
        env=driver_env(),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
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
    needs(importlib.util.find_spec("moto") is not None, "moto (pip install -e '.[dev]')")
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
        # The scorer on a CPU here (the spread test covers its GPU placement): this test is about storage.
        s3_settings = ("storage=s3://sweeps/team", "scorer_resources.gpu=0")
        command = sweep_command(built.address, *s3_settings, f"local_dir={local}", "trials=3", "concurrency=1")
        started = time.monotonic()
        # As the entrypoint of `ray job submit --runtime-env-json '{"env_vars": {...}}'`: the job already
        # sets these; forwarding them again would make ray.init fail ("Failed to merge the Job's runtime env").
        job_vars = {"HF_TOKEN": "hf_test", "SCRUTABLE_DATA_DIR": os.environ["SCRUTABLE_DATA_DIR"]}
        job = json.dumps({"runtime_env": {"env_vars": job_vars}, "metadata": {}})
        job_env = {**driver_env(), **job_vars, "RAY_JOB_CONFIG_JSON_ENV_VAR": job}
        first = subprocess.Popen(command, env=job_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen: list[str] = []
        one_done = threading.Event()

        def read_output() -> None:  # drained all along: a driver blocked on a full pipe would stall
            for line in first.stdout:
                seen.append(line)
                if "1/3 trials done" in line:
                    one_done.set()

        reader = threading.Thread(target=read_output, daemon=True)
        reader.start()
        wait_for(lambda: one_done.is_set() or first.poll() is not None, CHILD_TIMEOUT, "the first trial to finish", 1.0)
        reader.join(timeout=0 if one_done.is_set() else 30)
        assert one_done.is_set(), "the driver ended before a trial finished:\n" + "".join(seen[-60:])
        # The driver's folder follows the finished trial into the bucket (DriverSync, at the trial's end).
        driver_db = tmp_path / "driver-mlflow.db"

        def finished_in_bucket():
            try:
                s3.download_file("sweeps", "team/quickstart/driver/mlflow.db", str(driver_db))
                snapshot = mlflow.MlflowClient(f"sqlite:///{driver_db}")
                return [
                    r
                    for r in snapshot.search_runs([snapshot.get_experiment_by_name("quickstart").experiment_id])
                    if "mlflow.parentRunId" in r.data.tags and r.info.status == "FINISHED"
                ]
            except Exception:  # not uploaded yet, or uploaded before the trial's row
                return []

        try:
            finished = wait_for(finished_in_bucket, 600, "the driver's folder to reach the bucket after a trial", 1.0)
        except BaseException:  # pytest's failure is a BaseException: show what the driver said
            print("".join(seen[-60:]))
            raise
        # Two trials still to go: the SIGTERM lands mid-sweep, where it is handled like Ctrl-C.
        assert first.poll() is None, "the sweep ended before it could be interrupted: " + "".join(seen[-30:])
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=CHILD_TIMEOUT)
        reader.join(timeout=60)
        assert first.returncode == 130, "".join(seen[-60:])

        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="sweeps", Prefix="team/quickstart/")["Contents"]]
        assert any("/tune/" in k and "/checkpoint_" in k and k.endswith("state.pt") for k in keys)  # checkpoints
        assert any(Path(k).name.startswith("experiment_state-") for k in keys)
        assert (local / "quickstart" / "mlflow.db").is_file() and (local / "quickstart" / "optuna.db").is_file()
        for name in ("spec.yaml", "mlflow.db", "optuna.db"):  # the driver's folder, copied
            assert f"team/quickstart/driver/{name}" in keys, name
        assert not any("/driver/tune/" in k for k in keys)  # the experiment's local mirror stays local
        assert not (Path.cwd() / "s3:").exists() and not (REPO / "s3:").exists()  # never a folder named s3:

        # A fresh head: the driver's folder is gone, local_dir is elsewhere and empty; the sweep is
        # resumed from its place in the bucket alone.
        shutil.rmtree(local)
        fresh = tmp_path / "fresh-head"
        resume = sweep_command(built.address, *s3_settings, f"local_dir={fresh}", target="s3://sweeps/team/quickstart")
        second = subprocess.run(
            [*resume, "--resume"], env=driver_env(), capture_output=True, text=True, timeout=CHILD_TIMEOUT
        )
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "driver folder fetched from s3://sweeps/team/quickstart/driver" in second.stdout
        print(f"S3 sweep with kill and resume on a fresh head: {time.monotonic() - started:.0f} s")

        folder = fresh / "quickstart"
        reports = trial_reports(folder / "tune")  # mirrored back from the bucket for the export
        assert len(reports) == 3
        for name, rows in reports.items():
            assert evaluation_steps(rows, name) == [1, 2, 3, 4]  # at most the unregistered report replayed
        frontier = json.loads((folder / "pareto" / "pareto.json").read_text())
        assert frontier["frontier"]
        assert (folder / "pareto" / "trials.csv").read_text().count("\n") == 4  # header + the three trials
        client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
        kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(kids) == 3 and all(r.info.status == "FINISHED" for r in kids)
        for kid in kids:  # one point per evaluation in each run's history, replays included
            history = client.get_metric_history(kid.info.run_id, "task/dev_objective")
            assert sorted(m.step for m in history) == [1, 2, 3, 4], kid.info.run_name
        assert finished[0].info.run_id in {r.info.run_id for r in kids}  # the first head's run, kept
        for kid in kids:  # the final card, read from the bucket's checkpoint by the driver
            assert (local_path(folder, kid.info.artifact_uri) / "card.json").is_file()
        import optuna

        study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{folder / 'optuna.db'}")
        baselines = [key for key in study.user_attrs if key.startswith("baseline ")]  # alpha = 0, outside the study
        assert len([t for t in study.trials if t.state.is_finished()]) + len(baselines) == 3
        after = [o["Key"] for o in s3.list_objects_v2(Bucket="sweeps", Prefix="team/quickstart/")["Contents"]]
        assert len([k for k in after if Path(k).name.startswith("experiment_state-")]) >= 2  # two sessions
        assert "team/quickstart/driver/pareto/pareto.json" in after  # the sweep's end, copied too
    finally:
        server.stop()


def test_node_local_storage_on_a_multi_node_cluster_is_refused(cluster, tmp_path):
    """A path declared shared, but which a worker sees as its own (a private tmpfs over it),
    must make the sweep fail before any trial, with one line naming the path."""
    # CI runs as root with util-linux: there this must run, not skip.
    needs(shutil.which("unshare") is not None and os.geteuid() == 0, "root and unshare (a node with a private mount)")
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

        def joined():
            assert private.poll() is None, "the private-mount node exited before joining"
            return len([n for n in ray.nodes() if n["Alive"]]) >= 4

        wait_for(joined, 300, "the private-mount node to join", 1.0)
        done = subprocess.run(
            sweep_command(built.address, f"storage={storage}", "name=refused", shared=True),
            env=driver_env(),
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
        )
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "is node-local" in lines[0] and str(storage) in lines[0], done.stderr
        assert "Traceback" not in done.stderr + done.stdout
        assert not list(storage.glob("refused/tune/*/result.json"))  # no trial ran
    finally:
        private.send_signal(signal.SIGTERM)
        private.wait(timeout=60)
