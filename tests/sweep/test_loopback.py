"""A local sweep opens nothing to the network: while it runs, every listening socket of the
sweep's processes (the driver, Ray's GCS and raylet, the trial and scorer workers) is bound
to a loopback address. Ray's ports are unauthenticated, so `*:port` would let anyone on the
network run code in the sweep."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # a whole sweep


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1
    return address.is_loopback


def listening(root: psutil.Process) -> set[tuple[str, str, int]]:
    found = set()
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for process in processes:
        try:
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((process.name(), conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.2")


def test_local_sweep_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local sweep, not a cluster
    command = [sys.executable, "-m", "scrutable.cli", "sweep", str(REPO / "sweeps" / "quickstart.yaml"), "--smoke"]
    for setting in (f"storage={tmp_path}", "trials=2", "concurrency=2", "training.steps=2"):
        command += ["--set", setting]
    log = tmp_path / "sweep.log"  # a file, not a pipe: nobody reads a pipe while the sweep runs, so it could fill
    sweep = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(sweep.pid)
    sockets: set[tuple[str, str, int]] = set()
    names: set[str] = set()
    while sweep.poll() is None:  # sample the process tree until the sweep ends
        sockets |= listening(root)
        try:
            names |= {p.name() for p in root.children(recursive=True)}
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    sweep.wait()
    output = log.read_text()
    assert sweep.returncode == 0, output[-3000:]
    assert {"gcs_server", "raylet"} <= names  # the sweep's own Ray was sampled
    assert any(name == "gcs_server" for name, _, _ in sockets), sockets
    exposed = sorted(s for s in sockets if not is_loopback(s[1]))
    assert not exposed, f"listening beyond loopback: {exposed}"
