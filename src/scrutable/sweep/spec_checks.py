"""The checks a loaded sweep spec passes against the world outside its file, each one line.

`spec.py` validates what the file says (types, ranges, names of fields); these look further:
- `check_names`: the method, the task and every model name resolve (nothing is loaded);
- `check_search_ends`: a trial at either end of every searched range, or at every grid
  value, is a valid config whose prompt fits the model (`prompts.max_prompt_length`);
- `check_optuna_storage`: a database URL Optuna can open, a SQLite file this user can write.
`spec_from_mapping` runs those three on every load. The launcher's pre-flight (`scrutable
sweep`, before Ray starts) adds the two that cost more or depend on the machine:
- `check_data`: every split of a local data folder reads and validates;
- `check_resources_fit`: on a local Ray, no trial asks for more CPUs or GPUs than exist.

    spec = load_spec("sweeps/quickstart.yaml")  # names, search ends, Optuna storage checked
    check_resources_fit(spec, "sweeps/quickstart.yaml")
    check_data(spec)
"""

from __future__ import annotations

import os
from pathlib import Path

from scrutable.errors import UserError
from scrutable.prompts import max_prompt_length
from scrutable.sweep.spec import SEED_LIMIT, Sampler, SweepSpec

OPTUNA_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")  # SQLAlchemy dialects RDBStorage takes


def check_names(spec: SweepSpec, where: str) -> None:
    """Method, task and every model name resolvable, checked without loading anything."""
    from scrutable.model_names import check_model_name
    from scrutable.tasks import TASKS, closest
    from scrutable.trainables import get_method

    get_method(spec.method)
    if spec.task not in TASKS:
        raise UserError(f"unknown task '{spec.task}' in {where}: {closest(spec.task, TASKS)}")
    config = spec.trial_config(spec.space.example_point())
    for field_name in ("model", "scorer", "policy_model"):
        value = getattr(config, field_name, None)
        if isinstance(value, str):
            check_model_name(value, f"{field_name} in {where}")


def check_search_ends(spec: SweepSpec, where: str) -> None:
    """A trial at either end of every searched range (every listed value, every grid value)
    must be a valid config that fits the model: one line now, not a failure in every trial."""
    example = spec.space.example_point()
    limit = max_prompt_length(spec.model, spec.data_dir)
    for name, dim in spec.search.items():
        for value in spec.space.grid_values(name) if spec.sampler is Sampler.GRID else dim.ends():
            try:
                config = spec.trial_config({**example, name: value})
            except UserError as exc:
                raise UserError(
                    f"search.{name} in {where} reaches {value!r}, which is not a valid trial ({exc}): narrow the range"
                ) from None
            if not 0 <= config.seed < SEED_LIMIT:
                raise UserError(f"training seed {config.seed} in {where} is outside [0, 2**32): pick a smaller seed")
            if limit is not None and config.prompt_length > limit:
                raise UserError(
                    f"prompt_length {config.prompt_length} in {where} is too long for {spec.model}: its context "
                    f"leaves room for at most {limit} prompt tokens (the task input needs the rest)"
                )


def check_optuna_storage(uri: str, what: str) -> None:
    """A database Optuna's RDBStorage can open, and for SQLite a file this user can write."""
    from scrutable.paths import check_writable

    scheme = uri.partition("://")[0].partition("+")[0] if "://" in uri else ""
    if scheme not in OPTUNA_SCHEMES:
        raise UserError(
            f"{what} {uri!r} is not a database URL Optuna can use: write sqlite:///path/optuna.db, "
            "postgresql://..., or mysql://... (or remove it for SQLite in the sweep folder)"
        )
    if scheme == "sqlite":
        path = uri.partition("://")[2].removeprefix("/").partition("?")[0]
        if path in ("", ":memory:"):
            raise UserError(f"{what} {uri!r} is in memory, lost when the driver stops: name a file")
        check_writable(Path(path), what, folder=False)


def check_data(spec: SweepSpec) -> None:
    """Read and validate every split of a local data folder now (columns, labels, encoding):
    a broken row is one line before Ray starts, not a failure retried in every trial.
    Hub data (no data_dir) is left to the trials, which download it."""
    from scrutable.tasks import read_splits  # torch-free: the driver runs no model

    if spec.data_dir is None:
        return
    config = spec.trial_config(spec.space.example_point())
    read_splits(spec.task, spec.data_dir, seed=spec.data_seed, dev_pool=getattr(config, "dev_pool", "few_shot"))


def check_resources_fit(spec: SweepSpec, where: str) -> None:
    """On a local Ray (no --address), a trial asking for more CPUs or GPUs than this machine
    has would wait forever for a node that never comes: refuse it now. The counts are the
    ones a local Ray registers for this node (without importing torch, which the driver
    never needs)."""
    try:
        from ray._private.utils import get_num_cpus  # Ray's own count: affinity and cgroup quotas

        cpus = float(get_num_cpus())
    except Exception:  # a private helper: fall back to the plain count
        cpus = float(os.cpu_count() or 1)
    gpus = local_gpus()
    if spec.resources.cpu > cpus:
        raise UserError(
            f"resources.cpu {spec.resources.cpu:g} in {where} is more than this machine's {cpus:g} CPUs: a trial "
            f"would wait forever; use at most {cpus:g} (or --address a cluster with bigger nodes)"
        )
    asked = {"resources.gpu": spec.resources.gpu, "scorer_resources.gpu": spec.scorer_resources.gpu}
    if spec.resources.gpu and spec.scorer_resources.gpu:  # the scorer actor holds its share for the whole sweep
        asked["resources.gpu + scorer_resources.gpu"] = spec.resources.gpu + spec.scorer_resources.gpu
    for key, value in asked.items():
        if value > gpus:
            raise UserError(
                f"{key} {value:g} in {where} is more than this machine's {gpus} GPU(s): trials would wait "
                f"forever; use at most {gpus} (or --address a cluster with GPUs)"
            )


def local_gpus() -> int:
    """The NVIDIA GPUs a local Ray would give this node (CUDA_VISIBLE_DEVICES, else NVML), as
    Ray's own node start-up counts them; torch's count where that private helper moved."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        return int(manager.get_current_node_num_accelerators()) if manager is not None else 0
    except Exception:  # a private API: fall back to torch, which sees the same devices
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
