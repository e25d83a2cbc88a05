"""Ray's real cluster launcher on `cluster-local.yaml`: `ray up`, a sweep through `ray exec`,
the frontier fetched with `ray rsync-down`, `ray down`, against an sshd on 127.0.0.1.

The "remote machine" is this one, reached over SSH as root, isolated so that the test can
neither disturb nor be disturbed by other Ray users here: sshd runs in its own PID and
mount namespaces (`unshare --pid --fork --mount-proc`), so the `ray stop` that `ray up`
and `ray down` run sees only the cluster's processes, and killing that sshd ends every
process the cluster started. Inside the namespace a private `~/.bashrc` (a bind mount)
stands in for the node's setup: it puts this venv's `ray`/`scrutable` on PATH and the
rsynced checkout first on PYTHONPATH, where `cluster-local.yaml` would `pip install -e`
it (which needs the network and minutes). Machine-specific fields (IP, user, key, ports,
the rsync target) are replaced; the start commands are the shipped ones plus a port and
a temp dir, and Ray advertises 127.0.0.1 so nothing listens beyond loopback.

Needs root, unshare, and port 22 free on 127.0.0.1; installs openssh-server and rsync
with apt-get when missing. By hand: `pytest -m slow tests/test_cluster_launcher.py -s`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # this venv's python, ray and scrutable
pytestmark = pytest.mark.slow


def ensure_ssh_tools() -> None:
    if shutil.which("rsync") and Path("/usr/sbin/sshd").exists() and shutil.which("ssh"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("sshd/rsync missing and cannot apt-get install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "openssh-server", "openssh-client", "rsync"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(install, env=env, capture_output=True, check=True, timeout=600)


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ray_cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def cluster_processes(temp_dir: Path) -> list[int]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if str(temp_dir) in " ".join(process.info["cmdline"] or []):
            found.append(process.info["pid"])
    return found


@pytest.fixture
def sshd(tmp_path):
    """An sshd on 127.0.0.1:22 in private PID and mount namespaces; yields (key, tmp dir)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for an isolated sshd")
    ensure_ssh_tools()
    if not port_free(22):
        pytest.skip("port 22 on 127.0.0.1 is taken (Ray's launcher always connects to port 22)")
    home = Path.home()
    if not (home / ".bashrc").is_file():
        pytest.skip(f"{home}/.bashrc is missing (the test shadows it inside the namespace)")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    shutil.copy(tmp_path / "client_key.pub", tmp_path / "authorized_keys")
    (tmp_path / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort 22\nHostKey {tmp_path / 'host_key'}\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nStrictModes no\nUsePAM no\n"
    )
    (tmp_path / "bashrc").write_text(
        f"export PATH={BIN}:$PATH PYTHONPATH={tmp_path / 'scrutable' / 'src'}\n"
        f"export SCRUTABLE_DATA_DIR={os.environ['SCRUTABLE_DATA_DIR']} HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0\n"
        "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # Ray keeps 127.0.0.1 instead of the routable address\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    bootstrap = [home / "ray_bootstrap_config.yaml", home / "ray_bootstrap_key.pem"]
    existed = {path: path.exists() for path in bootstrap}
    daemon = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            f"mount --bind {tmp_path / 'bashrc'} {home / '.bashrc'} && "
            f"exec /usr/sbin/sshd -D -e -f {tmp_path / 'sshd_config'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "sshd.log", "w"),  # noqa: SIM115 (closed with the process)
    )
    deadline = time.monotonic() + 30
    while port_free(22):
        assert daemon.poll() is None and time.monotonic() < deadline, (tmp_path / "sshd.log").read_text()
        time.sleep(0.2)
    try:
        yield tmp_path / "client_key", tmp_path
    finally:
        # sshd is PID 1 of the namespace: when it exits, the kernel kills whatever is left there.
        for child in psutil.Process(daemon.pid).children():
            child.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        for path in bootstrap:  # written into the real home by `ray up`
            if not existed[path]:
                path.unlink(missing_ok=True)


def test_ray_up_exec_rsync_down_and_down_on_cluster_local_yaml(sshd):
    key, tmp = sshd
    port = free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="scr-", dir="/tmp"))  # Ray's socket paths must stay under 107 bytes
    name = f"scrutable-launcher-test-{uuid.uuid4().hex[:8]}"
    checkout = tmp / "scrutable"
    config = yaml.safe_load((REPO / "cluster-local.yaml").read_text())
    config.update(
        cluster_name=name,
        provider={"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
        auth={"ssh_user": "root", "ssh_private_key": str(key)},
        max_workers=0,
        file_mounts={str(checkout): str(REPO)},
        # Stands in for the shipped `pip install -e ~/scrutable`: the node must import the synced copy.
        setup_commands=[f"python -c \"import ray, scrutable; assert scrutable.__file__.startswith('{checkout}')\""],
    )
    shipped = config["head_start_ray_commands"]
    config["head_start_ray_commands"] = [
        c.replace("--port=6379", f"--port={port} --temp-dir={ray_tmp}") for c in shipped
    ]
    assert config["head_start_ray_commands"] != shipped
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    timings = {}
    try:
        started = time.monotonic()
        up = ray_cli("up", "-y", "--no-config-cache", str(path), timeout=300)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        timings["ray up"] = time.monotonic() - started
        assert cluster_processes(ray_tmp), "ray up started no Ray processes"

        started = time.monotonic()
        sweep = (
            f"cd {checkout} && RAY_ADDRESS=127.0.0.1:{port} scrutable sweep sweeps/quickstart.yaml --smoke "
            "--set storage=runs --set trials=2 --set training.steps=2 "
            "--shared-storage"  # a cluster of one machine (worker_ips: []): its disk is every node's
        )
        ran = ray_cli("exec", str(path), sweep, timeout=400)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        assert "2/2 trials done (0 failed)" in ran.stdout + ran.stderr
        timings["ray exec (sweep)"] = time.monotonic() - started

        fetched = tmp / "fetched"
        fetched.mkdir()
        down_files = ray_cli("rsync-down", str(path), f"{checkout}/runs/quickstart/pareto/", f"{fetched}/", timeout=120)
        assert down_files.returncode == 0, down_files.stdout[-2000:] + down_files.stderr[-2000:]
        frontier = json.loads((fetched / "pareto.json").read_text())
        assert frontier["frontier"] and (fetched / "trials.csv").read_text().count("\n") == 3  # header + 2 trials
    finally:
        started = time.monotonic()
        down = ray_cli("down", "-y", str(path), timeout=180)
        timings["ray down"] = time.monotonic() - started
        for lock in (f"/tmp/cluster-{name}.lock", f"/tmp/cluster-{name}.state"):
            Path(lock).unlink(missing_ok=True)
        print("launcher timings (s):", {k: round(v) for k, v in timings.items()})
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    deadline = time.monotonic() + 60
    while cluster_processes(ray_tmp):  # `ray down` really stopped Ray on the node
        assert time.monotonic() < deadline, f"still running after ray down: {cluster_processes(ray_tmp)}"
        time.sleep(1)
    shutil.rmtree(ray_tmp, ignore_errors=True)
