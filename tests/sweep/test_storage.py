"""Where a sweep's files live: a storage URI stays a URI (never a local folder named `s3:`),
the driver's files go to `local_dir`, a bad bucket or a Ray Client sweep with local stores
is refused with one line, and a finished experiment in a bucket mirrors back for the export."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import s3_bucket
from scrutable.errors import UserError
from scrutable.sweep import storage
from scrutable.sweep.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("given", "uri"),
    [
        ("s3://bucket/x", True),
        ("gs://b/x/", True),
        ("abfs://c@a.dfs.core.windows.net/x", True),
        ("runs", False),
        ("/mnt/efs/runs", False),
        ("file:///tmp/x", False),
        ("C:/x", False),
    ],
)
def test_is_uri(given, uri):
    assert storage.is_uri(given) is uri


def test_spec_keeps_a_storage_uri_and_puts_driver_files_in_local_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = {"storage": "s3://bucket/sweeps/", "local_dir": "driver"}
    spec = load_spec(REPO / "sweeps" / "quickstart.yaml", overrides, smoke=True)
    assert spec.storage == "s3://bucket/sweeps"
    assert spec.tune_location() == "s3://bucket/sweeps/quickstart/tune"
    assert spec.folder() == tmp_path / "driver" / "quickstart"
    assert not any(tmp_path.iterdir())  # loading creates nothing, least of all a folder named s3:


def test_spec_with_a_path_keeps_one_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(REPO / "sweeps" / "quickstart.yaml", {"storage": "runs"}, smoke=True)
    assert spec.folder() == tmp_path / "runs" / "quickstart"
    assert spec.tune_location() == str(tmp_path / "runs" / "quickstart" / "tune")


@pytest.fixture
def s3(monkeypatch):
    with s3_bucket(monkeypatch) as client:
        yield client


def test_missing_bucket_is_one_line_before_ray(s3):
    storage.check_writable("s3://sweeps/team")  # exists: no error, and the probe is removed
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="sweeps").get("Contents", [])]
    assert not [k for k in keys if "scrutable-probe" in k]
    with pytest.raises(UserError, match=r"storage s3://no-such-bucket/x is not writable") as caught:
        storage.check_writable("s3://no-such-bucket/x")
    assert "\n" not in str(caught.value)


def test_mirror_copies_an_experiment_out_of_the_bucket(s3, tmp_path):
    s3.put_object(Bucket="sweeps", Key="team/q/tune/trial_1/result.json", Body=b'{"train/step": 1}\n')
    s3.put_object(Bucket="sweeps", Key="team/q/tune/experiment_state-1.json", Body=b"{}")
    storage.mirror("s3://sweeps/team/q/tune", tmp_path / "tune")
    assert (tmp_path / "tune" / "trial_1" / "result.json").read_text() == '{"train/step": 1}\n'
    assert (tmp_path / "tune" / "experiment_state-1.json").is_file()


def test_ray_client_needs_stores_the_head_can_reach():
    storage.check_ray_client(None, "/local/runs", None, None)  # a local or `auto` sweep: anything goes
    storage.check_ray_client("auto", "/local/runs", None, None)
    storage.check_ray_client("ray://head:10001", "s3://b/x", "http://mlflow:5000", "postgresql://db/optuna")
    with pytest.raises(UserError, match=r"storage .*tracking\.uri .*optuna_storage") as caught:
        storage.check_ray_client("ray://head:10001", "/local/runs", None, None)
    assert "\n" not in str(caught.value)


def test_sweep_refuses_ray_client_with_local_stores_before_starting_ray(tmp_path):
    from scrutable.cli import main

    env_before = os.environ.get("RAY_ADDRESS")
    spec = REPO / "sweeps" / "quickstart.yaml"
    code = main(["sweep", str(spec), "--smoke", "--set", f"storage={tmp_path}", "--address", "ray://127.0.0.1:1"])
    assert code == 2 and not any(tmp_path.iterdir())
    assert os.environ.get("RAY_ADDRESS") == env_before


def test_unreachable_address_is_one_line_before_ray(tmp_path, capsys, monkeypatch):
    """Answered by the reachability check, never by ray.init (which retries for minutes)."""
    import socket

    import ray

    from scrutable.cli import main

    def init(*_, **__):
        raise AssertionError("ray.init was reached: the address was not checked first")

    monkeypatch.setattr(ray, "init", init)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = REPO / "sweeps" / "quickstart.yaml"
    argv = ["sweep", str(spec), "--smoke", "--set", f"storage={tmp_path}", "--shared-storage"]
    code = main([*argv, "--address", f"127.0.0.1:{port}"])
    assert code == 2 and not any(tmp_path.iterdir())
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"cannot reach a Ray cluster at 127.0.0.1:{port}" in line
