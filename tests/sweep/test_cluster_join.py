"""How a sweep joins a cluster, checked without one: the address it accepts, the variables it
forwards (against Ray's own runtime_env merge), and the storage kinds a cluster accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ray.runtime_env.runtime_env import _merge_runtime_env

from scrutable.errors import UserError
from scrutable.sweep import cluster, storage

REPO = Path(__file__).resolve().parents[2]


# --- the address ----------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "https://head.example:8265"])
def test_a_job_submission_address_is_refused_with_the_fix(address, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UserError, match=r"job-submission .*ray job submit .*--address auto"):
        cluster.resolve_address(address)
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(UserError, match=r"^RAY_ADDRESS=http"):
        cluster.resolve_address(None)


def test_cluster_addresses_pass_and_an_explicit_one_wins(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert cluster.resolve_address("10.0.0.5:6379") == "10.0.0.5:6379"  # --address over the variable
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert cluster.resolve_address(None) == "auto"
    monkeypatch.delenv("RAY_ADDRESS")
    assert cluster.resolve_address(None) is None
    assert cluster.resolve_address("ray://head:10001") == "ray://head:10001"


def test_the_cli_refuses_an_http_ray_address_in_one_line_before_ray_starts(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "http://127.0.0.1:8265"}
    done = subprocess.run(
        [sys.executable, "-m", "scrutable.cli", "sweep", str(REPO / "sweeps" / "quickstart.yaml"), "--smoke"]
        + ["--set", f"storage={tmp_path}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "RAY_ADDRESS=http://127.0.0.1:8265" in lines[0] and "--address auto" in lines[0]
    assert not list(tmp_path.iterdir())  # nothing written


# --- the forwarded variables ----------------------------------------------------------------


def job_config(env_vars: dict[str, str]) -> str:
    """What Ray's job supervisor puts in the entrypoint's environment (JobSupervisor)."""
    return json.dumps({"runtime_env": {"env_vars": env_vars, "working_dir": "gcs://_ray_pkg_x.zip"}, "metadata": {}})


def test_no_variable_a_job_already_sets_is_forwarded_again(monkeypatch):
    for key in [k for k in os.environ if k.startswith(cluster.FORWARDED_PREFIXES)]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HF_TOKEN", "from-the-job")
    monkeypatch.setenv("SCRUTABLE_DATA_DIR", "/home/ubuntu/scrutable-data")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PATH_UNRELATED", "x")
    job = {"HF_TOKEN": "from-the-job", "SCRUTABLE_DATA_DIR": "/home/ubuntu/scrutable-data", "RAY_AUTH_MODE": "x"}
    monkeypatch.setenv(cluster.JOB_CONFIG_ENV, job_config(job))
    quiet = {"RAY_AUTH_MODE": "disabled", "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}

    forwarded = cluster.forwarded_env_vars(quiet)
    assert forwarded == {"HF_HUB_OFFLINE": "1", "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}
    # Ray's own merge (ray.init inside a job) accepts it; forwarding everything would fail.
    job_env = json.loads(os.environ[cluster.JOB_CONFIG_ENV])["runtime_env"]
    assert _merge_runtime_env(job_env, {"env_vars": forwarded}) is not None
    naive = {k: v for k, v in os.environ.items() if k.startswith(cluster.FORWARDED_PREFIXES)} | quiet
    assert _merge_runtime_env(job_env, {"env_vars": naive}) is None


def test_outside_a_job_everything_is_forwarded(monkeypatch):
    monkeypatch.delenv(cluster.JOB_CONFIG_ENV, raising=False)
    monkeypatch.setenv("HF_TOKEN", "t")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    forwarded = cluster.forwarded_env_vars({"RAY_USAGE_STATS_ENABLED": "0"})
    assert forwarded["HF_TOKEN"] == "t" and forwarded["TRANSFORMERS_OFFLINE"] == "1"
    assert forwarded["RAY_USAGE_STATS_ENABLED"] == "0"
    monkeypatch.setenv(cluster.JOB_CONFIG_ENV, "not json")  # unreadable: treated as no job env
    assert cluster.forwarded_env_vars({})["HF_TOKEN"] == "t"


# --- the storage kind -----------------------------------------------------------------------


def test_a_cluster_needs_a_uri_or_a_declared_shared_path(tmp_path):
    storage.check_kind(str(tmp_path), None)  # this machine's own Ray: any path
    storage.check_kind("s3://bucket/sweeps", "auto")  # a URI is shared by construction
    storage.check_kind(str(tmp_path), "auto", shared=True)  # declared: checked on the live nodes later
    with pytest.raises(UserError, match=rf"storage {tmp_path} is a path on this machine.*--shared-storage"):
        storage.check_kind(str(tmp_path), "10.0.0.10:6379")
