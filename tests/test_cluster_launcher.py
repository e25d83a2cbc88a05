"""Ray's real cluster launcher on `cluster-local.yaml`: `ray up`, a sweep through `ray exec`,
the frontier fetched with `ray rsync-down`, `ray down`, against an sshd on 127.0.0.1.

The "remote machine" is this one, reached over SSH as root, isolated so that the test can
neither disturb nor be disturbed by other Ray users here: sshd runs in its own PID, mount
and network namespaces (`unshare --pid --fork --mount-proc --net`), so the `ray stop` that
`ray up` and `ray down` run sees only the cluster's processes, killing that sshd ends every
process the cluster started, and its port 22 is its own (the `ray` commands join that
network namespace with `nsenter`; a real sshd on this machine's port 22 does not matter).
Inside the namespace a private `~/.bashrc` (a bind mount)
stands in for the node's setup: it puts this venv's `ray`/`scrutable` on PATH and the
rsynced checkout first on PYTHONPATH, where `cluster-local.yaml` would `pip install -e`
it (which needs the network and minutes). Machine-specific fields (IP, user, key, ports,
the rsync target) are replaced; the start commands are the shipped ones plus a port and
a temp dir, and Ray advertises 127.0.0.1 so nothing listens beyond loopback.

Needs root, unshare and nsenter (CI has them: there a missing one fails the test); installs
openssh-server and rsync with apt-get when missing. By hand:
`pytest -m slow tests/test_cluster_launcher.py -s`.
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

from helpers import needs, wait_for

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # this venv's python, ray and scrutable
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # apt-get, ray up, a sweep, ray down


def ensure_ssh_tools() -> None:
    if shutil.which("rsync") and Path("/usr/sbin/sshd").exists() and shutil.which("ssh"):
        return
    can_install = os.geteuid() == 0 and shutil.which("apt-get") is not None
    needs(can_install, "sshd and rsync, or apt-get as root to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "openssh-server", "openssh-client", "rsync"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(install, env=env, capture_output=True, check=True, timeout=600)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ray_cli(network: int, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`ray ARGS` inside the network namespace of process `network` (where sshd listens)."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    command = ["nsenter", f"--net=/proc/{network}/ns/net", str(BIN / "ray"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def cluster_processes(temp_dir: Path) -> list[int]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if str(temp_dir) in " ".join(process.info["cmdline"] or []):
            found.append(process.info["pid"])
    return found


@pytest.fixture
def sshd(tmp_path):
    """An sshd on 127.0.0.1:22 in private PID, mount and network namespaces; yields (key,
    tmp dir, the pid of a process in that network namespace)."""
    needs(
        os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("nsenter") is not None,
        "root, unshare and nsenter (an isolated sshd)",
    )
    ensure_ssh_tools()
    home = Path.home()
    made_bashrc = not (home / ".bashrc").exists()
    if made_bashrc:  # the namespace shadows it with a bind mount, which needs a file to cover
        (home / ".bashrc").touch()
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
        # `ray start` and the driver agree on the auth mode whatever ~/.ray holds: with a token
        # there and the mode unset, `ray start` requires it and a driver joining by address sends none.
        "export RAY_AUTH_MODE=disabled\n"
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
            "--net",
            "sh",
            "-c",
            f"ip link set lo up && mount --bind {tmp_path / 'bashrc'} {home / '.bashrc'} && "
            f"exec /usr/sbin/sshd -D -e -f {tmp_path / 'sshd_config'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "sshd.log", "w"),  # noqa: SIM115 (closed with the process)
    )
    log = tmp_path / "sshd.log"

    def listening() -> bool:
        assert daemon.poll() is None, log.read_text()
        return "Server listening on 127.0.0.1 port 22" in log.read_text()

    try:
        wait_for(listening, 120, "sshd to listen in its namespace", 0.2)
        # The namespace's processes: unshare forks sh (then sshd), PID 1 inside.
        (inside,) = wait_for(lambda: psutil.Process(daemon.pid).children(), 60, "sshd's process")
        yield tmp_path / "client_key", tmp_path, inside.pid
    finally:
        # sshd is PID 1 of the namespace: when it exits, the kernel kills whatever is left there.
        for child in psutil.Process(daemon.pid).children():
            child.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        for path in bootstrap:  # written into the real home by `ray up`
            if not existed[path]:
                path.unlink(missing_ok=True)
        if made_bashrc:
            (home / ".bashrc").unlink(missing_ok=True)


def test_ray_up_exec_rsync_down_and_down_on_cluster_local_yaml(sshd):
    key, tmp, network = sshd
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
        up = ray_cli(network, "up", "-y", "--no-config-cache", str(path), timeout=300)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        timings["ray up"] = time.monotonic() - started
        assert cluster_processes(ray_tmp), "ray up started no Ray processes"

        started = time.monotonic()
        sweep = (
            f"cd {checkout} && RAY_ADDRESS=127.0.0.1:{port} scrutable sweep sweeps/quickstart.yaml --smoke "
            "--set storage=runs --set trials=2 --set training.steps=2 "
            "--shared-storage"  # a cluster of one machine (worker_ips: []): its disk is every node's
        )
        ran = ray_cli(network, "exec", str(path), sweep, timeout=400)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        assert "2/2 trials done (0 failed)" in ran.stdout + ran.stderr
        timings["ray exec (sweep)"] = time.monotonic() - started

        fetched = tmp / "fetched"
        fetched.mkdir()
        pareto = f"{checkout}/runs/quickstart/pareto/"
        down_files = ray_cli(network, "rsync-down", str(path), pareto, f"{fetched}/", timeout=120)
        assert down_files.returncode == 0, down_files.stdout[-2000:] + down_files.stderr[-2000:]
        frontier = json.loads((fetched / "pareto.json").read_text())
        assert frontier["frontier"] and (fetched / "trials.csv").read_text().count("\n") == 3  # header + 2 trials
    finally:
        started = time.monotonic()
        down = ray_cli(network, "down", "-y", str(path), timeout=180)
        timings["ray down"] = time.monotonic() - started
        for lock in (f"/tmp/cluster-{name}.lock", f"/tmp/cluster-{name}.state"):
            Path(lock).unlink(missing_ok=True)
        print("launcher timings (s):", {k: round(v) for k, v in timings.items()})
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    # `ray down` really stopped Ray on the node.
    wait_for(lambda: not cluster_processes(ray_tmp), 300, "Ray to stop after ray down", 1.0)
    shutil.rmtree(ray_tmp, ignore_errors=True)
