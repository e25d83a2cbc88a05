"""Where a Ray worker runs its models: the GPU Ray reserved for it, and as many torch threads
as the CPUs it reserved.

A Tune trial (`resources.gpu`, `resources.cpu`) and the scorer actor (`scorer_resources`)
call `place_worker` once, before loading a model, and pass the device down to code that
never imports Ray (`trainables/`, `metrics/`). `auto` cannot be left to
`torch.cuda.is_available()` here: a worker that reserved no GPU may still see the node's
GPUs and would take one that another trial reserved. Ray sets CUDA_VISIBLE_DEVICES to the
reserved GPUs, so `cuda` (device 0) in the worker is the GPU Ray assigned.

A GPU that Ray reserved but torch cannot use (a CPU build of torch on a GPU node, or a
logical `num_gpus` resource as in the 3-node test cluster) leaves `auto` on the CPU with a
warning in the worker's log; an explicit `cuda` is refused there by `models.resolve_device`.

Threads: Ray sets OMP_NUM_THREADS from the reserved CPUs only when the variable is unset,
and torch may have been imported (and sized its pool) before; `torch.set_num_threads`
makes the count exact. A worker that reserved no CPU (`num_cpus=0`) gets one thread.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from scrutable.errors import UserError


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" or "cuda"
    threads: int


def choose(
    requested: str, gpu_ids: Sequence[object], cpus: float | None, what: str, cuda_available: bool = True
) -> Placement:
    """The pure rule: `auto` is cuda exactly when Ray reserved a GPU (and torch can use it);
    `cuda` needs a reserved GPU."""
    if requested == "auto":
        device = "cuda" if gpu_ids and cuda_available else "cpu"
        if gpu_ids and not cuda_available:
            print(
                f"scrutable: warning: Ray reserved GPU {list(gpu_ids)} for {what} but torch sees no CUDA device: "
                "running on the CPU (install a CUDA build of torch on GPU nodes)",
                file=sys.stderr,
            )
    elif requested == "cuda" and not gpu_ids:
        raise UserError(
            f"{what} asks for device cuda but reserves no GPU: set its gpu resource above 0, or device auto"
        )
    else:
        device = requested
    return Placement(device=device, threads=max(1, math.floor(cpus or 0)))


def place_worker(requested: str, what: str) -> Placement:
    """Resolve `requested` (auto, cpu, cuda) in this Ray worker and size torch's thread pool."""
    import ray
    import torch

    assigned = ray.get_runtime_context().get_assigned_resources()
    placement = choose(requested, ray.get_gpu_ids(), assigned.get("CPU"), what, torch.cuda.is_available())
    torch.set_num_threads(placement.threads)
    return placement
