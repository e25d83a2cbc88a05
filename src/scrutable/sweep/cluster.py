"""How a sweep's driver joins a Ray cluster: which address it means, which variables it forwards.

`--address` (else `$RAY_ADDRESS`) is `auto`, a GCS address `HOST:6379` or a Ray Client
URI `ray://HOST:10001`. An `http://HOST:8265` address is the dashboard's job-submission
endpoint, which the `ray job` CLI reads from the same variable: a driver cannot join a
cluster there, and inside `ray job submit` Ray replaces it with the GCS address anyway
(`JobSupervisor._get_driver_env_vars`), so such an address is refused with that fix.

The driver forwards its `SCRUTABLE_*`, `HF_*` and `TRANSFORMERS_*` variables (data
folder, hub tokens, offline switches) to every worker through `ray.init`'s runtime_env.
Inside `ray job submit --runtime-env-json '{"env_vars": {...}}'`, Ray merges the job's
runtime_env with the driver's and refuses the same key in both (`_merge_runtime_env`);
a key the job already sets reaches every worker through the job, so it is not forwarded
again.
"""

from __future__ import annotations

import json
import os

from scrutable.errors import UserError

FORWARDED_PREFIXES = ("SCRUTABLE_", "HF_", "TRANSFORMERS_")
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the entrypoint
HTTP_SCHEMES = ("http://", "https://")


def resolve_address(address: str | None) -> str | None:
    """The cluster to join: `address`, else $RAY_ADDRESS, else None (a local Ray).

    An http(s):// address (the job-submission endpoint) is refused with the fix."""
    given = address or None
    chosen = given or os.environ.get("RAY_ADDRESS") or None
    if chosen is not None and chosen.lower().startswith(HTTP_SCHEMES):
        where = "--address" if given else "RAY_ADDRESS"
        raise UserError(
            f"{where}={chosen} is Ray's job-submission (dashboard) address, where no driver can connect: "
            f"submit the sweep with `ray job submit --address {chosen} -- scrutable sweep ... --address auto` "
            "(inside a job Ray sets the cluster's address), or on the head run it with --address auto"
        )
    return chosen


def job_env_vars() -> dict[str, str]:
    """The env_vars of the Ray job this process is the entrypoint of ({} outside a job)."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    if not raw:
        return {}
    try:
        env = ((json.loads(raw) or {}).get("runtime_env") or {}).get("env_vars") or {}
    except (ValueError, AttributeError):
        return {}
    return dict(env) if isinstance(env, dict) else {}


def forwarded_env_vars(extra: dict[str, str]) -> dict[str, str]:
    """The variables to put in `ray.init(runtime_env={"env_vars": ...})`: this process's
    SCRUTABLE_/HF_/TRANSFORMERS_ variables plus `extra`, minus those the job already sets."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)}
    env.update(extra)
    already = job_env_vars()
    return {k: v for k, v in env.items() if k not in already}
