"""Where a sweep's files live: trial checkpoints (shared) versus the driver's files (local).

On one machine everything sits in one sweep folder, `<storage>/<name>/`. On a cluster two
kinds of writer exist: Ray Tune's workers on every node write trial checkpoints and
results, so Tune's storage must be reachable from all nodes; the driver alone writes
MLflow (SQLite by default), the Optuna study and the Pareto export, which stay on the
driver's disk (SQLite on a network mount is asking for lock trouble). So:

    storage: runs                 # a path: one folder for everything (single machine,
                                  #   or a shared mount such as /mnt/efs/runs on a cluster)
    storage: s3://bucket/sweeps   # a URI (s3://, gs://, abfs://, ...): Tune writes
                                  #   <uri>/<name>/tune through a pyarrow filesystem;
    local_dir: runs               #   the driver's files go to <local_dir>/<name>/

Credentials and endpoints come from the usual environment of each node (an instance
role, `AWS_*` variables; `AWS_ENDPOINT_URL_S3` for an S3-compatible server), never from
the sweep file. After a sweep on a URI, `mirror` copies the experiment's files into the
local sweep folder's `tune/`, so `scrutable pareto` reads it like any other folder.

A sweep on a cluster (`--address`) with a plain path is refused unless the path is declared
a shared mount (`--shared-storage`; `check_kind`): whether it is shared is a property of the
storage, and the nodes alive at the start (only the head, when workers scale from zero)
cannot tell. A declared mount is then checked on the nodes alive: every node must see a
marker file the driver writes there (`check_shared`); otherwise one error names a node
that cannot and the fix.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

from scrutable.errors import UserError
from scrutable.sweep.folder import TUNE_DIR

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
LOCAL_SCHEMES = ("file",)


def is_uri(storage: str) -> bool:
    """`s3://...`, `gs://...` (anything with a scheme except file://): not a local path."""
    match = _SCHEME.match(storage)
    return match is not None and match.group(1).lower() not in LOCAL_SCHEMES


def normalise(storage: str) -> str:
    """A URI as given (trailing slash dropped); a path (or file:// URI) made absolute."""
    if is_uri(storage):
        return storage.rstrip("/")
    path = storage.removeprefix("file://") if storage.startswith("file://") else storage
    return str(Path(path).expanduser().resolve())


def experiment_location(storage: str, name: str) -> str:
    """Tune's experiment folder of sweep `name`: `<storage>/<name>/tune` (URI or path)."""
    if is_uri(storage):
        return f"{storage.rstrip('/')}/{name}/{TUNE_DIR}"
    return str(Path(storage) / name / TUNE_DIR)


def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a URI; a clear error for an unusable one."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for unknown schemes, no credentials
        raise UserError(
            f"storage {uri} cannot be opened ({type(exc).__name__}: {str(exc).splitlines()[0]}): use s3://, gs:// "
            "or a shared path, with the cloud's credentials in the environment"
        ) from None


def check_writable(storage: str) -> None:
    """Fail before Ray starts when the storage URI cannot be written (bucket missing, no rights)."""
    if not is_uri(storage):
        return
    import pyarrow.fs

    fs, root = filesystem(storage)
    probe = f"{root}/.scrutable-probe-{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(probe) as out:
            out.write(b"ok")
        fs.delete_file(probe)
    except (OSError, pyarrow.ArrowException) as exc:
        raise UserError(
            f"storage {storage} is not writable ({str(exc).splitlines()[0]}): create the bucket or fix the "
            "credentials / AWS_ENDPOINT_URL_S3"
        ) from None


def check_kind(storage: str, address: str | None, *, shared: bool = False) -> None:
    """On a cluster, a plain storage path must be declared shared (`--shared-storage`).

    Judged by the kind of storage, not by the nodes alive now: a cluster that scales from
    zero (`min_workers: 0`) has only its head at the start, and its workers, booted later,
    would write checkpoints where the driver never looks. A URI is shared by construction;
    a sweep with no address runs on this machine's own Ray."""
    if address is None or is_uri(storage) or shared:
        return
    raise UserError(
        f"storage {storage} is a path on this machine, but --address {address} is a cluster whose other "
        "nodes (now or once they start) cannot write there: set storage to s3://... or gs://..., or pass "
        "--shared-storage if every node mounts that path (NFS, EFS)"
    )


def check_shared(storage: str) -> None:
    """On a multi-node cluster, refuse a storage path that some node cannot see.

    Writes a marker under the path and asks one task per alive node to read it. A URI is
    shared by construction; one node needs no check."""
    if is_uri(storage):
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    marker = Path(storage) / f".scrutable-shared-{uuid.uuid4().hex}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("shared")
    try:

        def sees(path: str) -> bool:
            return Path(path).is_file()

        remote: Any = ray.remote(num_cpus=0)(sees)
        pending = {
            n["NodeID"]: remote.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(marker))
            for n in nodes
        }
        for node_id, ref in pending.items():
            if not ray.get(ref, timeout=120):
                ip = next(n.get("NodeManagerAddress") for n in nodes if n["NodeID"] == node_id)
                raise UserError(
                    f"storage {storage} is node-local: node {node_id[:12]} ({ip}) cannot see it, so its trials' "
                    "checkpoints would be lost; set storage to s3://..., gs://... or a path on a shared mount"
                )
    finally:
        marker.unlink(missing_ok=True)


def check_ray_client(address: str | None, storage: str, tracking_uri: str | None, optuna_storage: str | None) -> None:
    """Refuse a Ray Client sweep (`ray://`) whose files would be written on the wrong machine.

    Through Ray Client, Tune's driver (the Optuna searcher, the MLflow callback, the
    experiment state) runs on the head node, not here: every store it writes must be a
    URI both machines reach."""
    if not (address or "").startswith("ray://"):
        return
    local = []
    if not is_uri(storage):
        local.append("storage (s3://, gs://)")
    if not (tracking_uri or "").startswith(("http://", "https://")):
        local.append("tracking.uri (an MLflow server)")
    if not optuna_storage or optuna_storage.startswith("sqlite"):
        local.append("optuna_storage (e.g. postgresql://...)")
    if local:
        raise UserError(
            f"--address {address} (Ray Client) runs the sweep's driver on the head, which cannot reach this "
            f"machine's files: set {', '.join(local)}, or launch on the head with `ray job submit` / `ray exec` "
            "and --address auto"
        )


def mirror(location: str, local: Path) -> None:
    """Copy Tune's experiment folder from a storage URI into `local` (the sweep folder's tune/)."""
    import pyarrow.fs

    fs, path = filesystem(location)
    local.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
