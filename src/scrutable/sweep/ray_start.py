"""Ray for a sweep: join a cluster, or start a local Ray that listens on 127.0.0.1 only.

    start_ray(spec)                  # local: this sweep's own Ray, loopback only
    start_ray(spec, "auto")          # the cluster this machine belongs to (head node, a job)
    start_ray(spec, "10.0.0.5:6379") # a GCS address; "ray://HOST:10001" for Ray Client
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from scrutable.errors import UserError
from scrutable.sweep.spec import SweepSpec

QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # the new output engine ignores our reporter and prints tracebacks
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Step reports (`progress/*`, between evaluations) carry no objectives; Tune's strict check
    # would fail them. The objectives' names are checked when the spec loads instead.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Tune's automatic loggers: the launcher names the CSV and JSON ones itself
    # (`launcher.make_callbacks`) and leaves out TensorBoard's, which imports torch.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}
LOOPBACK = "127.0.0.1"  # a local sweep's Ray listens here only


def start_ray(spec: SweepSpec, address: str | None = None) -> None:
    """Connect to a cluster (`address`, else $RAY_ADDRESS) or start a local Ray bound to 127.0.0.1.

    `address` is `auto` (the cluster this machine belongs to, e.g. on the head node or in a
    `ray job submit` job), a GCS address `HOST:6379`, or a Ray Client URI `ray://HOST:10001`.
    With neither, Ray starts on this machine with every port bound to the loopback
    interface: a local sweep opens nothing to the network (Ray's ports run unauthenticated).
    """
    import ray

    from scrutable.sweep import cluster
    from scrutable.sweep.scorer_actor import NAMESPACE

    if ray.is_initialized():
        return
    address = cluster.resolve_address(address)  # an http:// job-submission address: refused with the fix
    # An existing cluster keeps its own auth mode: forcing ours would break a token-auth cluster.
    quiet = {k: v for k, v in QUIET_ENV.items() if address is None or k != "RAY_AUTH_MODE"}
    # Before ray.init: the cluster and its workers must agree (e.g. on RAY_AUTH_MODE), or
    # worker start-up fails.
    os.environ.update(quiet)
    options: dict[str, Any] = {
        "namespace": NAMESPACE,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": cluster.forwarded_env_vars(quiet)},  # none a job's runtime_env sets
    }
    if address is None:
        with _loopback_only():
            # "local": always this sweep's own Ray; without an address, ray.init joins the
            # newest cluster recorded in /tmp/ray (another user's sweep on this machine).
            ray.init(address="local", include_dashboard=False, _node_ip_address=LOOPBACK, **options)
        return
    _check_reachable(address)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"cannot connect to the Ray cluster at {address} ({str(exc).splitlines()[0][:200]}): start it with "
            "`ray up cluster.yaml` (or `ray start --head`), or drop --address / RAY_ADDRESS for a local sweep"
        ) from None


def _check_reachable(address: str) -> None:
    """A wrong HOST:PORT is one line in seconds (ray.init would retry it for minutes)."""
    if address == "auto":
        return  # ray.init reads this machine's cluster address file and fails fast without one
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot reach a Ray cluster at {address} ({exc}): check HOST:PORT (GCS port 6379, or ray://HOST:10001), "
            "start it with `ray up cluster.yaml`, or drop --address / RAY_ADDRESS for a local sweep"
        ) from None


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Make a local Ray advertise, and so bind, 127.0.0.1 only.

    On Linux, Ray rewrites a node IP of 127.0.0.1 to the machine's routable address and its
    servers then listen on every interface; it keeps loopback where clusters are switched off
    (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, the macOS/Windows default). Set for the processes
    ray.init spawns (inherited environment) and for this one (read at import), then restored.
    """
    from ray._private import ray_constants

    previous_env = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    previous = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous
        if previous_env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = previous_env
